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


def best_chunk_per_document(scores: np.ndarray, chunk_doc: np.ndarray,
                            n_documents: int) -> np.ndarray:
    """A (queries × documents) matrix from a (queries × chunks) one: each document scores as its
    best chunk (MaxP; Dai & Callan 2019); a document without chunks scores -inf.

    >>> best_chunk_per_document(np.array([[0.2, 0.9, 0.5]]), np.array([0, 0, 2]), 3).tolist()
    [[0.9, -inf, 0.5]]
    """
    out = np.full((scores.shape[0], n_documents), -np.inf, dtype=scores.dtype)
    np.maximum.at(out.T, chunk_doc, scores.T)
    return out


class Documents:
    """Passages grouped into documents: rank documents, each scoring as its best passage, so a
    cut-off k means k documents however many passages each has."""

    def __init__(self, passage_ids: list[str], passage_doc: dict[str, str]):
        self.ids = sorted({passage_doc[p] for p in passage_ids})
        number = {d: i for i, d in enumerate(self.ids)}
        self.of_passage = np.array([number[passage_doc[p]] for p in passage_ids], dtype=np.int64)

    def scores(self, passage_scores: np.ndarray) -> np.ndarray:
        return best_chunk_per_document(passage_scores, self.of_passage, len(self.ids))


def dense_run(model, queries: dict[str, str], passages: dict[str, str], k: int,
              batch_size: int = 64, passage_embeddings: np.ndarray | None = None,
              documents: Documents | None = None, block: int = 256) -> Run:
    """Exact cosine search of every query over every passage with a SentenceTransformer; with
    ``documents``, the k best documents (MaxP). Queries are scored ``block`` at a time, so the
    score matrix stays small on a large corpus."""
    qids, pids = list(queries), list(passages)
    q = model.encode([queries[i] for i in qids], batch_size=batch_size,
                     normalize_embeddings=True, convert_to_numpy=True)
    p = passage_embeddings if passage_embeddings is not None else model.encode(
        [passages[i] for i in pids], batch_size=batch_size, normalize_embeddings=True,
        convert_to_numpy=True)
    run: Run = {}
    for at in range(0, len(qids), block):
        scores = q[at:at + block] @ p.T
        if documents is None:
            run.update(top_k_run(qids[at:at + block], scores, pids, k))
        else:
            run.update(top_k_run(qids[at:at + block], documents.scores(scores), documents.ids, k))
    return run


def bm25_run(index: BM25Index, queries: dict[str, str], passage_ids: list[str], k: int,
             documents: Documents | None = None) -> Run:
    """BM25's k best passages per query (those sharing a term with it); with ``documents``, the
    k best documents (MaxP).

    >>> index = BM25Index(["aspirin thins blood", "aspirin dose", "kidney stones"], None)
    >>> docs = Documents(["a#0", "a#1", "b#0"], {"a#0": "a", "a#1": "a", "b#0": "b"})
    >>> list(bm25_run(index, {"q": "aspirin dose"}, ["a#0", "a#1", "b#0"], 2, docs)["q"])
    ['a']
    """
    run: Run = {}
    for qid, text in queries.items():
        if documents is None:
            order, scores = index.top_k(text, k)
            run[qid] = {passage_ids[i]: float(s) for i, s in zip(order, scores) if s > 0}
            continue
        scores = documents.scores(index.scores(text)[None, :])[0]
        top = np.lexsort((np.arange(scores.size), -scores))[:k]
        run[qid] = {documents.ids[i]: float(scores[i]) for i in top if scores[i] > 0}
    return run


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
