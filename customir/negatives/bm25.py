"""BM25 over chunks with bm25s (Lucene's scoring variant, English stopwords, Snowball stemming).

Shared by hard-negative mining and by the BM25 baseline in evaluation, so both rank the same way.
"""

from __future__ import annotations

import numpy as np


class BM25Index:
    """An in-memory bm25s index over ``texts``; ``scores(query)`` returns one score per text.

    >>> index = BM25Index(["aspirin thins blood", "statins lower cholesterol"])
    >>> [round(float(s), 3) > 0 for s in index.scores("aspirin")]
    [True, False]
    """

    def __init__(self, texts: list[str], stemmer_language: str | None = "english"):
        import bm25s

        self._bm25s = bm25s
        self._stemmer = None
        if stemmer_language:
            import Stemmer

            self._stemmer = Stemmer.Stemmer(stemmer_language)
        self.size = len(texts)
        self._retriever = bm25s.BM25(method="lucene")
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer, show_progress=False)
        self._retriever.index(tokens, show_progress=False)
        self._vocab = self._retriever.vocab_dict

    def scores(self, query: str) -> np.ndarray:
        tokens = self._bm25s.tokenize([query], stopwords="en", stemmer=self._stemmer,
                                      return_ids=False, show_progress=False)[0]
        known = [t for t in tokens if t in self._vocab]
        if not known:  # a query of only stopwords / unseen words matches nothing
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._retriever.get_scores(known), dtype=np.float32)

    def top_k(self, query: str, k: int,
              scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Indexes and scores of the ``k`` best texts, best first (ties broken by index).
        Pass ``scores`` when the query was already scored."""
        scores = self.scores(query) if scores is None else scores
        k = min(k, self.size)
        order = np.lexsort((np.arange(self.size), -scores))[:k]
        return order, scores[order]
