"""Free training signals and the related chunks of multi-hop questions — pure functions.

- Structural pseudo-queries: a document's title (an e-mail's subject line) for its first chunk,
  a markdown/HTML heading for the first chunk under it.
- Inverse cloze (Lee et al. 2019, ORQA): one sentence of a chunk as the query, the rest of the
  chunk as the positive — the sentence is removed so the pair is not solved by string matching.
- Related chunks: a multi-hop question's other passages are the anchor's nearest neighbours
  (BM25 or the base model) from other documents.
"""

from __future__ import annotations

import hashlib
import re

_REPLY_PREFIX = re.compile(r"^((re|fwd?|aw|wg)\s*:\s*)+", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")


def structural_queries(chunk: dict, first_under_heading: bool) -> list[tuple[str, str]]:
    """(kind, query) pairs the document's own structure gives for free.

    A title describes its document, so it is paired with the document's first chunk (an
    e-mail's subject line is its title, kind ``subject``); a heading with the first chunk under
    it.

    >>> structural_queries({"title": "Aspirin", "chunk_index": 0, "heading": "Dose"}, True)
    [('title', 'Aspirin'), ('heading', 'Dose')]
    >>> structural_queries({"title": "Re: dosing", "chunk_index": 0, "source": "m/1.eml"}, False)
    [('subject', 'dosing')]
    """
    pairs = []
    if chunk.get("title") and chunk.get("chunk_index") == 0:
        if (chunk.get("source") or "").lower().endswith(".eml"):
            pairs.append(("subject", _REPLY_PREFIX.sub("", " ".join(chunk["title"].split()))))
        else:
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


def inverse_cloze_pair(text: str, key: str, seed: int, min_query_words: int = 4,
                       min_rest_words: int = 8) -> tuple[str, str] | None:
    """(sentence, rest of the chunk) with a seeded choice of sentence, or None when the chunk
    has no sentence long enough with enough text left around it.

    >>> inverse_cloze_pair("Insulin is a hormone made in the pancreas. It lowers blood glucose "
    ...                    "after meals in healthy adults. Its lack causes diabetes in children.",
    ...                    "c#0", seed=1)[0]
    'It lowers blood glucose after meals in healthy adults.'
    """
    sentences = [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]
    usable = [i for i, s in enumerate(sentences) if len(s.split()) >= min_query_words]
    if len(sentences) < 2 or not usable:
        return None
    h = int(hashlib.sha1(f"{seed}:ict:{key}".encode()).hexdigest()[:12], 16)
    pick = usable[h % len(usable)]
    rest = " ".join(s for i, s in enumerate(sentences) if i != pick)
    if len(rest.split()) < min_rest_words:
        return None
    return sentences[pick], rest


def related_chunks(anchor_row: int, ranked_rows: list[int], doc_of_row: list[str],
                   extra: int) -> list[int]:
    """Up to ``extra`` rows to pair with ``anchor_row`` in a multi-hop question: the best-ranked
    neighbours from documents other than the anchor's and each other's (a question over two
    chunks of one document is not multi-hop).

    >>> related_chunks(0, [0, 1, 2, 3], ["a", "a", "b", "b"], 2)
    [2]
    """
    docs = {doc_of_row[anchor_row]}
    picked = []
    for row in ranked_rows:
        if row < 0 or row == anchor_row or doc_of_row[row] in docs:
            continue
        picked.append(row)
        docs.add(doc_of_row[row])
        if len(picked) == extra:
            break
    return picked
