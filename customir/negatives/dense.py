"""Dense candidates: the base embedding model's cosine between queries and chunks.

NV-Retriever (Moreira et al., 2024) mines with the model being trained: its hardest negatives are
the passages it already confuses with the positive. Chunks are embedded once (normalised float32,
``embeddings.npy``, memory-mapped by every worker); search is exact (one matrix product per batch
of queries) for small corpora and faiss HNSW (approximate, sub-linear) for large ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from customir.models import load_sentence_transformer

_FAISS_INSTALL = "pip install faiss-cpu==1.15.1   (or: pip install 'customir[faiss]')"
EMBEDDINGS, FAISS_INDEX, META = "embeddings.npy", "faiss.index", "dense.json"


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError(f"dense_search=faiss needs faiss-cpu: {_FAISS_INSTALL}") from None
    return faiss


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` columns per row of a score matrix, best first, ties broken by column.

    >>> top_k_rows(np.array([[0.1, 0.9, 0.9, 0.3]]), 3)
    (array([[1, 2, 3]]), array([[0.9, 0.9, 0.3]]))
    """
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    picked = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -picked), axis=1)
    rows = np.take_along_axis(part, order, axis=1)
    return rows, np.take_along_axis(scores, rows, axis=1)


class DenseIndex:
    """Chunk embeddings plus (optionally) a faiss HNSW graph over them."""

    name = "dense"

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        meta = json.loads((directory / META).read_text())
        self.model_name = meta["model"]
        self.embeddings = np.load(directory / EMBEDDINGS, mmap_mode="r")
        self.size = self.embeddings.shape[0]
        self._faiss_index = None
        if meta["search"] == "faiss":
            self._faiss_index = _faiss().read_index(str(directory / FAISS_INDEX))
        self.model = load_sentence_transformer(self.model_name)

    @staticmethod
    def build(texts: list[str], directory: str | Path, model_name: str, use_faiss: bool,
              batch_size: int = 64) -> None:
        directory = Path(directory)
        faiss = _faiss() if use_faiss else None  # fail before the (long) encoding, not after
        model = load_sentence_transformer(model_name)
        embeddings = model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True).astype(np.float32)
        np.save(directory / EMBEDDINGS, embeddings)
        if faiss is not None:
            graph = faiss.IndexHNSWFlat(embeddings.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = 80
            graph.add(embeddings)
            faiss.write_index(graph, str(directory / FAISS_INDEX))
        (directory / META).write_text(json.dumps(
            {"model": model_name, "search": "faiss" if use_faiss else "exact",
             "chunks": len(texts)}))

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self.model.encode(queries, batch_size=64, normalize_embeddings=True,
                                 convert_to_numpy=True).astype(np.float32)

    def search(self, queries: list[str], k: int, threads: int = 0,
               vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.size)
        vectors = self.encode_queries(queries) if vectors is None else vectors
        if self._faiss_index is not None:
            self._faiss_index.hnsw.efSearch = max(64, 2 * k)
            scores, rows = self._faiss_index.search(vectors, k)
            return rows.astype(np.int64), scores.astype(np.float32)
        return top_k_rows(vectors @ np.asarray(self.embeddings).T, k)

    def score(self, queries: list[str], rows: list[int],
              vectors: np.ndarray | None = None) -> np.ndarray:
        vectors = self.encode_queries(queries) if vectors is None else vectors
        chunks = np.asarray(self.embeddings[np.asarray(rows, dtype=np.int64)])
        return np.einsum("ij,ij->i", vectors, chunks).astype(np.float32)

    def score_texts(self, queries: list[str], texts: list[str]) -> np.ndarray:
        """Cosine of ``queries[i]`` with ``texts[i]``, a text that is not in the index (an
        inverse-cloze positive: its chunk without the query sentence). Queries and chunks are
        encoded alike (no prompt), so the text is encoded as a chunk would be."""
        vectors, passages = self.encode_queries(queries), self.encode_queries(texts)
        return np.einsum("ij,ij->i", vectors, passages).astype(np.float32)

    def score_rows(self, vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Cosine of each query vector with each of its rows (n × m; -1 rows score -inf)."""
        safe = np.where(rows < 0, 0, rows)
        scores = np.einsum("id,imd->im", vectors, np.asarray(self.embeddings[safe]))
        return np.where(rows < 0, -np.inf, scores).astype(np.float32)
