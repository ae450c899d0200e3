"""Retrieval runs for evaluation: dense (exact cosine), BM25, and chunk → document aggregation."""

from __future__ import annotations

import numpy as np

from customir.evaluate.metrics import Run
from customir.negatives.bm25 import BM25Index


def top_k_run(query_ids: list[str], scores: np.ndarray, doc_ids: list[str], k: int) -> Run:
    """The ``k`` best documents per query from a (queries × documents) score matrix."""
    k = min(k, scores.shape[1])
    run: Run = {}
    for qi, qid in enumerate(query_ids):
        row = scores[qi]
        top = np.argpartition(-row, k - 1)[:k] if k < row.size else np.arange(row.size)
        run[qid] = {doc_ids[i]: float(row[i]) for i in top}
    return run


def dense_run(model, queries: dict[str, str], passages: dict[str, str], k: int,
              batch_size: int = 64, passage_embeddings: np.ndarray | None = None) -> Run:
    """Exact cosine search of every query over every passage with a SentenceTransformer."""
    qids, pids = list(queries), list(passages)
    q = model.encode([queries[i] for i in qids], batch_size=batch_size,
                     normalize_embeddings=True, convert_to_numpy=True)
    p = passage_embeddings if passage_embeddings is not None else model.encode(
        [passages[i] for i in pids], batch_size=batch_size, normalize_embeddings=True,
        convert_to_numpy=True)
    return top_k_run(qids, q @ p.T, pids, k)


def bm25_run(index: BM25Index, queries: dict[str, str], passage_ids: list[str], k: int) -> Run:
    run: Run = {}
    for qid, text in queries.items():
        order, scores = index.top_k(text, k)
        run[qid] = {passage_ids[i]: float(s) for i, s in zip(order, scores) if s > 0}
    return run


def chunks_to_documents(run: Run, chunk_doc: dict[str, str]) -> Run:
    """A document scores as its best chunk (MaxP; Dai & Callan 2019).

    >>> chunks_to_documents({"q": {"a#0": 0.2, "a#1": 0.9, "b#0": 0.5}}, {"a#0": "a", "a#1": "a",
    ...                      "b#0": "b"})
    {'q': {'a': 0.9, 'b': 0.5}}
    """
    out: Run = {}
    for qid, scores in run.items():
        docs: dict[str, float] = {}
        for chunk_id, score in scores.items():
            doc = chunk_doc[chunk_id]
            docs[doc] = max(score, docs.get(doc, float("-inf")))
        out[qid] = docs
    return out


def fuse_runs(runs: list[Run], k: int, rrf_k: int = 60) -> Run:
    """Reciprocal-rank fusion of several runs (each ranked by its own scores) into the top k.

    >>> fuse_runs([{"q": {"a": 9.0, "b": 1.0}}, {"q": {"b": 0.9, "c": 0.8}}], k=2, rrf_k=0)
    {'q': {'b': 1.5, 'a': 1.0}}
    """
    out: Run = {}
    for qid in set().union(*runs):
        fused: dict[str, float] = {}
        for run in runs:
            ranked = sorted(run.get(qid, {}).items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (doc, _) in enumerate(ranked, start=1):
                fused[doc] = fused.get(doc, 0.0) + 1.0 / (rrf_k + rank)
        out[qid] = dict(sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k])
    return out
