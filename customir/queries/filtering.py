"""Query quality filters and the deterministic choices of the generate stage — pure functions.

Each filter returns a reason string when the query must go, else None; the stage counts every
reason in its manifest. Corpus-level filters (near-duplicates by embedding, round-trip
consistency, LLM judge) are in :mod:`customir.queries.candidate_filters`; their decision
rules are here.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

_WORD = re.compile(r"\w+")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana, CJK ideographs
_COUNTED_WORD = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def query_id(kind: str, query: str, chunk_id: str) -> str:
    return hashlib.sha1(f"{kind}\x1f{query}\x1f{chunk_id}".encode()).hexdigest()[:16]


def word_ngrams(text: str, n: int = 3) -> set[tuple[str, ...]]:
    """The lower-cased word n-grams of ``text``.

    >>> sorted(word_ngrams("Aspirin thins the blood", 3))
    [('aspirin', 'thins', 'the'), ('thins', 'the', 'blood')]
    """
    words = [w.lower() for w in _WORD.findall(text)]
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def copy_share(query: str, passage: str, n: int = 3) -> float:
    """Share of the query's word n-grams that occur in the passage (case-insensitive).

    >>> copy_share("aspirin thins the blood", "Aspirin thins the blood of adults.")
    1.0
    >>> copy_share("does aspirin thin blood", "Aspirin thins the blood.")
    0.0
    """
    grams = word_ngrams(query, n)
    if not grams:
        return 0.0
    return len(grams & word_ngrams(passage, n)) / len(grams)


def word_count(text: str) -> int:
    """Words of ``text`` for the query length limits: whitespace-separated words, except that
    each CJK ideograph or kana counts as one (Chinese and Japanese put no spaces between words,
    so ``str.split`` would count a whole question as one word).

    >>> word_count("does aspirin thin blood"), word_count("阿司匹林降低血压吗")
    (4, 9)
    >>> word_count("低剂量 aspirin")
    4
    """
    return len(_COUNTED_WORD.findall(text))


def reject_reason(query: str, passage: str, min_words: int, max_words: int,
                  max_copy_overlap: float = 0.8) -> str | None:
    """Why ``query`` is not a usable training query for ``passage`` (None when it is).

    >>> reject_reason("aspirin", "Aspirin thins blood.", 2, 40)
    'too_short'
    >>> reject_reason("Aspirin thins blood and more", "Aspirin thins blood and more.", 2, 40)
    'copied_from_passage'
    >>> reject_reason("does aspirin thin blood", "Aspirin thins blood.", 2, 40) is None
    True
    """
    if not query.strip():  # whatever the word minimum (an e-mail subject that was only "Re:")
        return "empty"
    words = word_count(query)
    if words < min_words:
        return "too_short"
    if words > max_words:
        return "too_long"
    # A query that is (nearly) a verbatim span of the passage teaches string matching, not
    # meaning: most of its word trigrams are in the passage.
    if words >= 5 and copy_share(query, passage) >= max_copy_overlap:
        return "copied_from_passage"
    if "passage" in query.lower() and "passage" not in passage.lower():
        return "mentions_the_passage"
    return None


def near_duplicates(embeddings: np.ndarray, threshold: float, block: int = 1024) -> np.ndarray:
    """Greedy dedup in row order: row i is a duplicate when its cosine to an earlier row that
    was kept is >= ``threshold`` (rows are L2-normalised). Exact, in blocks of ``block`` rows.

    >>> e = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0]])
    >>> near_duplicates(e / np.linalg.norm(e, axis=1, keepdims=True), 0.9).tolist()
    [False, True, False]
    """
    n = len(embeddings)
    duplicate = np.zeros(n, dtype=bool)
    kept: list[np.ndarray] = []
    for start in range(0, n, block):
        rows = embeddings[start:start + block]
        if kept:
            earlier = np.concatenate(kept)
            duplicate[start:start + len(rows)] = (rows @ earlier.T).max(axis=1) >= threshold
        inner = rows @ rows.T
        for i in range(len(rows)):
            if duplicate[start + i]:
                continue
            # a later row in this block that this kept row covers is a duplicate
            later = np.nonzero(inner[i, i + 1:] >= threshold)[0] + start + i + 1
            duplicate[later] = True
        kept.append(rows[~duplicate[start:start + len(rows)]])
    return duplicate


def chosen(key: str, share: float, seed: int, salt: str) -> bool:
    """Deterministic, seed-dependent coin with P(True) = ``share`` for ``key``.

    >>> chosen("c#0", 1.0, 0, "kind"), chosen("c#0", 0.0, 0, "kind")
    (True, False)
    """
    h = int(hashlib.sha1(f"{seed}:{salt}:{key}".encode()).hexdigest()[:12], 16) / 16 ** 12
    return h < share


def choose_llm_chunks(chunk_ids: list[str], limit: int | None, seed: int) -> set[str]:
    """A deterministic, seed-dependent sample of ``limit`` chunks (all when limit is None).

    Ranking by a salted hash spreads the sample over the corpus and keeps it stable when the
    corpus grows (a chunk picked before stays picked when ``limit`` grows).
    """
    if limit is None or limit >= len(chunk_ids):
        return set(chunk_ids)

    def rank(cid: str) -> str:
        return hashlib.sha1(f"{seed}:{cid}".encode()).hexdigest()

    return set(sorted(chunk_ids, key=rank)[:limit])
