"""Hybrid candidates: reciprocal-rank fusion (RRF) of a BM25 and a dense ranking.

RRF (Cormack, Clarke & Büttcher, 2009) adds 1 / (k + rank) over the rankings a chunk appears in;
it needs no score calibration between BM25 and cosine. The fused order decides which candidates
come first; the *scores* returned are the dense cosines, because the safety margin compares a
candidate with the positive on one calibrated scale (NV-Retriever's 0.95 × positive is defined on
the embedding model's similarity), and RRF values are not comparable across queries.
"""

from __future__ import annotations

import numpy as np

from customir.negatives.bm25 import BM25Index
from customir.negatives.dense import DenseIndex


def reciprocal_rank_fusion(rankings: list[np.ndarray], k: int, rrf_k: int = 60
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Fuse rankings of row numbers (best first, -1 = empty) into the top ``k`` rows.

    >>> rows, fused = reciprocal_rank_fusion([np.array([3, 1, 2]), np.array([1, 4, -1])], k=3,
    ...                                      rrf_k=60)
    >>> rows.tolist(), [round(x * 61 * 62, 2) for x in fused.tolist()]
    ([1, 3, 4], [123.0, 62.0, 61.0])
    """
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking.tolist(), start=1):
            if row >= 0:
                fused[row] = fused.get(row, 0.0) + 1.0 / (rrf_k + rank)
    best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
    return (np.asarray([r for r, _ in best], dtype=np.int64),
            np.asarray([s for _, s in best], dtype=np.float64))


class HybridIndex:
    """bm25s + dense, fused by RRF; scores are the dense cosines (see the module docstring)."""

    name = "hybrid"

    def __init__(self, bm25: BM25Index, dense: DenseIndex, rrf_k: int = 60):
        self.bm25, self.dense, self.rrf_k = bm25, dense, rrf_k
        self.size = dense.size

    def search(self, queries: list[str], k: int, threads: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.size)
        vectors = self.dense.encode_queries(queries)
        lexical, _ = self.bm25.search(queries, k, threads)
        semantic, _ = self.dense.search(queries, k, vectors=vectors)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for i in range(len(queries)):
            fused, _ = reciprocal_rank_fusion([lexical[i], semantic[i]], k, self.rrf_k)
            rows[i, :len(fused)] = fused
        scores = self.dense.score_rows(vectors, rows)
        return rows, np.where(rows < 0, 0.0, scores).astype(np.float32)

    def score(self, queries: list[str], rows: list[int]) -> np.ndarray:
        return self.dense.score(queries, rows)

    def score_texts(self, queries: list[str], texts: list[str]) -> np.ndarray:
        return self.dense.score_texts(queries, texts)
