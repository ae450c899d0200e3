"""Query quality filters and the structural (free) pseudo-queries — pure functions.

Each filter returns a reason string when the query must go, else None; the stage counts every
reason in its manifest.
"""

from __future__ import annotations

import hashlib

from customir.corpus.chunking import normalized_key


def query_id(kind: str, query: str, chunk_id: str) -> str:
    return hashlib.sha1(f"{kind}\x1f{query}\x1f{chunk_id}".encode()).hexdigest()[:16]


def reject_reason(query: str, passage: str, min_words: int, max_words: int) -> str | None:
    """Why ``query`` is not a usable training query for ``passage`` (None when it is).

    >>> reject_reason("aspirin", "Aspirin thins blood.", 2, 40)
    'too_short'
    >>> reject_reason("Aspirin thins blood and more", "Aspirin thins blood and more.", 2, 40)
    'copied_from_passage'
    >>> reject_reason("does aspirin thin blood", "Aspirin thins blood.", 2, 40) is None
    True
    """
    words = query.split()
    if len(words) < min_words:
        return "too_short"
    if len(words) > max_words:
        return "too_long"
    # A query that is a long verbatim span of the passage teaches string matching, not meaning.
    if len(words) >= 5 and normalized_key(query).rstrip(".?!") in normalized_key(passage):
        return "copied_from_passage"
    if "passage" in query.lower() and "passage" not in passage.lower():
        return "mentions_the_passage"
    return None


def structural_queries(chunk: dict, first_under_heading: bool) -> list[tuple[str, str]]:
    """(kind, query) pairs the document's own structure gives for free.

    A title describes its document, so it is paired with the document's first chunk; a heading
    with the first chunk under it.

    >>> structural_queries({"title": "Aspirin", "chunk_index": 0, "heading": "Dose"}, True)
    [('title', 'Aspirin'), ('heading', 'Dose')]
    """
    pairs = []
    if chunk.get("title") and chunk.get("chunk_index") == 0:
        pairs.append(("title", " ".join(chunk["title"].split())))
    if chunk.get("heading") and first_under_heading:
        pairs.append(("heading", " ".join(chunk["heading"].split())))
    return pairs


def first_chunks_under_headings(doc_ids: list[str], chunk_indexes: list[int],
                                headings: list[str | None], chunk_ids: list[str]) -> set[str]:
    """Ids of the chunks that open a (document, heading) run.

    >>> sorted(first_chunks_under_headings(["d", "d", "d"], [0, 1, 2], ["A", "A", "B"],
    ...                                    ["d#0", "d#1", "d#2"]))
    ['d#0', 'd#2']
    """
    order = sorted(range(len(chunk_ids)), key=lambda i: (doc_ids[i], chunk_indexes[i]))
    firsts, previous = set(), None
    for i in order:
        key = (doc_ids[i], headings[i])
        if headings[i] and key != previous:
            firsts.add(chunk_ids[i])
        previous = key
    return firsts


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
