"""From verified triples to training rows (pure functions).

The split is by *document*: every chunk of a document falls in the same split, so no passage of
a held-out document is ever seen in training — not as a positive and not as a negative.
"""

from __future__ import annotations

import hashlib
import random

SPLITS = ("train", "validation", "test")


def assign_split(doc_id: str, fractions: tuple[float, float, float], seed: int) -> str:
    """Deterministic split of a document by a salted hash of its id.

    >>> assign_split("doc-1", (1.0, 0.0, 0.0), 0)
    'train'
    >>> assign_split("doc-1", (0.0, 0.0, 1.0), 0)
    'test'
    """
    total = sum(fractions)
    if total <= 0 or any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must be >= 0 and sum > 0, got {fractions}")
    h = int(hashlib.sha1(f"{seed}:{doc_id}".encode()).hexdigest()[:12], 16) / 16 ** 12
    bound = 0.0
    for name, fraction in zip(SPLITS, fractions):
        bound += fraction / total
        if h < bound:
            return name
    return SPLITS[-1]


class TooFewNegatives(ValueError):
    """A split's documents cannot give a query the negatives it needs."""


def build_training_rows(triples: list[dict], chunk_text: dict[str, str],
                        chunk_doc: dict[str, str], allowed_docs: set[str],
                        hard_negatives: int, seed: int) -> tuple[list[dict], int]:
    """Rows {anchor, positive, negative_1..n} for the queries whose positive is in allowed_docs.

    Negatives from other splits are never used. A query with fewer than ``hard_negatives``
    verified negatives is filled with random chunks of other allowed documents (the usual
    fallback), never from the document of any of its positives (a multi-hop question's other
    chunks) and never a candidate the earlier stages dropped (a verified false negative); the
    number of such fills is returned so the manifest can report it.

    >>> rows, fills = build_training_rows(
    ...     [{"query": "q", "chunk_id": "a#0", "negative_chunk_ids": ["b#0", "c#0"]}],
    ...     {"a#0": "A", "b#0": "B", "c#0": "C"}, {"a#0": "a", "b#0": "b", "c#0": "c"},
    ...     {"a", "b"}, hard_negatives=1, seed=0)
    >>> rows, fills
    ([{'anchor': 'q', 'positive': 'A', 'negative_1': 'B'}], 0)
    """
    rng = random.Random(seed)
    pool = sorted(cid for cid, doc in chunk_doc.items() if doc in allowed_docs)
    rows, fills = [], 0
    for triple in triples:
        positive = triple["chunk_id"]
        doc = chunk_doc.get(positive)
        if doc not in allowed_docs:
            continue
        # inverse-cloze pairs bring their own positive: the chunk without the query sentence
        row = {"anchor": triple["query"],
               "positive": triple.get("positive_text") or chunk_text[positive]}
        negatives = [n for n in triple["negative_chunk_ids"]
                     if chunk_doc.get(n) in allowed_docs][:hard_negatives]
        own_docs, dropped = fill_exclusions(triple, chunk_doc)
        for _ in range(20 * hard_negatives):  # bounded: a tiny pool may have no other document
            if len(negatives) >= hard_negatives or not pool:
                break
            pick = rng.choice(pool)
            if chunk_doc[pick] not in own_docs and pick not in dropped and pick not in negatives:
                negatives.append(pick)
                fills += 1
        if len(negatives) < hard_negatives:
            raise TooFewNegatives(f"cannot find {hard_negatives} negatives from other "
                                  f"documents among its {len(allowed_docs)} documents "
                                  f"({len(pool)} chunks)")
        for i, negative in enumerate(negatives, start=1):
            row[f"negative_{i}"] = chunk_text[negative]
        rows.append(row)
    return rows, fills


def fill_exclusions(triple: dict, chunk_doc: dict[str, str]) -> tuple[set, set[str]]:
    """What a random negative of ``triple`` must not be: a chunk of the document of any of the
    query's positives, or a mined candidate that did not become a negative (the LLM judged it
    a false negative, or it went unverified).

    >>> docs, dropped = fill_exclusions(
    ...     {"chunk_id": "a#0", "supporting_chunk_ids": ["a#0", "b#0"],
    ...      "candidate_chunk_ids": ["c#0", "d#0"], "negative_chunk_ids": ["d#0"]},
    ...     {"a#0": "a", "b#0": "b"})
    >>> sorted(docs), dropped
    (['a', 'b'], {'c#0'})
    """
    positives = {triple["chunk_id"], *(triple.get("supporting_chunk_ids") or ())}
    dropped = set(triple.get("candidate_chunk_ids") or ()) - set(triple["negative_chunk_ids"])
    return {chunk_doc.get(c) for c in positives}, dropped


def queries_within(triples: list[dict], chunk_doc: dict[str, str],
                   allowed_docs: set[str]) -> list[dict]:
    """The rows of queries whose positives all lie in ``allowed_docs``: a multi-hop question
    with a chunk in a training document was seen in training, so it cannot validate.

    >>> rows = [{"query": "q", "chunk_id": "a#0"}, {"query": "q", "chunk_id": "b#0"},
    ...         {"query": "r", "chunk_id": "b#1"}]
    >>> queries_within(rows, {"a#0": "a", "b#0": "b", "b#1": "b"}, {"b"})
    [{'query': 'r', 'chunk_id': 'b#1'}]
    """
    outside = {t["query"] for t in triples if chunk_doc.get(t["chunk_id"]) not in allowed_docs}
    return [t for t in triples if t["query"] not in outside]


def rows_per_split(triples: list[dict], chunk_text: dict[str, str], chunk_doc: dict[str, str],
                   split_of: dict[str, str], hard_negatives: int, seed: int
                   ) -> tuple[dict[str, list[dict]], int, dict[str, int]]:
    """Training and validation rows, the random-negative fills of the training rows, and the
    validation queries left out, by reason: ``validation_query_trained_on`` (a multi-hop
    question with a chunk in a training document), ``validation_query_spans_test`` (one with a
    chunk in a test document and none in training) and ``validation_too_few_negatives`` (every
    validation query, when the validation documents cannot give one its negatives: a small
    corpus then trains without validation rather than failing)."""
    allowed = {split: {d for d, s in split_of.items() if s == split}
               for split in ("train", "validation")}
    try:
        train, fills = build_training_rows(triples, chunk_text, chunk_doc, allowed["train"],
                                           hard_negatives, seed)
    except TooFewNegatives as exc:
        raise ValueError(f"train split: {exc}; lower train.hard_negatives or add "
                         "documents") from None
    chosen = queries_within(triples, chunk_doc, allowed["validation"])
    try:
        validation, _ = build_training_rows(chosen, chunk_text, chunk_doc,
                                            allowed["validation"], hard_negatives, seed)
    except TooFewNegatives:
        validation = []
    kept = {t["query"] for t in chosen}
    trained = {t["query"] for t in triples if chunk_doc[t["chunk_id"]] in allowed["train"]}
    left_out = [t["query"] in trained for t in triples
                if chunk_doc[t["chunk_id"]] in allowed["validation"] and t["query"] not in kept]
    unused = {"validation_query_trained_on": sum(left_out),
              "validation_query_spans_test": len(left_out) - sum(left_out),
              "validation_too_few_negatives": len(chosen) - len(validation)}
    return {"train": train, "validation": validation}, fills, unused


def largest_fillable_batch(rows: list[dict], batch_size: int, trials: int = 5,
                           seed: int = 0) -> int:
    """The largest batch size <= ``batch_size`` that sentence-transformers' no-duplicates sampler
    can fill from ``rows``.

    That sampler puts a row in a batch only if none of its texts is already there, and under DDP
    (Ray Train) it drops incomplete batches — so a small or repetitive training set can yield no
    batch at all and train zero steps. This mirrors its greedy fill on a few shuffles and keeps
    the largest size that fills a first batch in every one.

    >>> rows = [{"anchor": f"q{i}", "positive": f"p{i % 2}"} for i in range(6)]
    >>> largest_fillable_batch(rows, 4)
    2
    """
    rng = random.Random(seed)
    orders = [list(range(len(rows)))]
    for _ in range(trials - 1):
        orders.append(rng.sample(orders[0], len(rows)))
    values = [set(row.values()) for row in rows]

    def fills(size: int, order: list[int]) -> bool:
        seen: set[str] = set()
        taken = 0
        for i in order:
            if values[i] & seen:
                continue
            seen |= values[i]
            taken += 1
            if taken == size:
                return True
        return False

    size = min(batch_size, len(rows))
    while size > 1 and not all(fills(size, order) for order in orders):
        size -= 1
    return max(size, 1)
