"""BM25 over chunks with bm25s (Lucene's scoring variant, English stopwords, Snowball stemming).

Shared by hard-negative mining and by the BM25 baseline in evaluation, so both rank the same way.
Chunks are addressed by row number (their order in ``chunks/``). The index can be saved once and
memory-mapped by every mining worker (:meth:`BM25Index.load`). bm25s keeps precomputed scores
only, so the index also saves its average chunk length (``customir.json``): with it a text that
is not indexed (an inverse-cloze positive) is scored as if it were (:meth:`BM25Index.score_texts`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np


class BM25Index:
    """A bm25s index over ``texts``; ranks and scores chunks for queries.

    >>> index = BM25Index(["aspirin thins blood", "statins lower cholesterol"])
    >>> [round(float(s), 3) > 0 for s in index.scores("aspirin")]
    [True, False]
    """

    name = "bm25s"

    def __init__(self, texts: list[str] | None, stemmer_language: str | None = "english",
                 k1: float = 1.5, b: float = 0.75, *, _retriever=None,
                 _average_length: float | None = None):
        import bm25s

        self._bm25s = bm25s
        self._stemmer = None
        self.stemmer_language = stemmer_language
        if stemmer_language:
            import Stemmer

            self._stemmer = Stemmer.Stemmer(stemmer_language)
        if _retriever is None:
            _retriever = bm25s.BM25(method="lucene", k1=k1, b=b)
            tokens = bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer,
                                    show_progress=False)
            _retriever.index(tokens, show_progress=False)
            _average_length = float(np.mean([len(ids) for ids in tokens.ids])) if texts else None
        self._retriever = _retriever
        self._searched: dict[str, list[int]] = {}  # token ids of the last searched batch
        self._vocab = _retriever.vocab_dict
        self.size = int(_retriever.scores["num_docs"])
        self.average_length = _average_length
        # an index saved without its average length (before customir.json) scores chunks only
        self.score_texts = self._score_texts if _average_length else None

    # -- persistence: build once, memory-map in every worker --------------------------------
    def save(self, directory: str | Path) -> None:
        self._retriever.save(str(directory), show_progress=False)
        (Path(directory) / "stemmer.txt").write_text(self.stemmer_language or "")
        (Path(directory) / "customir.json").write_text(
            json.dumps({"average_length": self.average_length}))

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> "BM25Index":
        import bm25s

        retriever = bm25s.BM25.load(str(directory), mmap=mmap, show_progress=False)
        stemmer = (Path(directory) / "stemmer.txt").read_text() or None
        extra = Path(directory) / "customir.json"
        average = json.loads(extra.read_text())["average_length"] if extra.exists() else None
        return cls(None, stemmer, _retriever=retriever, _average_length=average)

    # -- one query ---------------------------------------------------------------------------
    def _token_ids(self, query: str) -> list[int]:
        return self._batch_token_ids([query])[0]

    def _batch_token_ids(self, queries: list[str]) -> list[list[int]]:
        """Vocabulary ids of each query's known tokens (one tokenizer call for the batch)."""
        tokens = self._bm25s.tokenize(queries, stopwords="en", stemmer=self._stemmer,
                                      return_ids=False, show_progress=False)
        vocab = self._vocab
        return [[vocab[t] for t in words if t in vocab] for words in tokens]

    def scores(self, query: str) -> np.ndarray:
        """One score per chunk (a query of only stopwords / unseen words scores 0 everywhere)."""
        ids = self._token_ids(query)
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._retriever.get_scores(ids), dtype=np.float32)

    def top_k(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers and scores of the ``k`` best chunks, best first (ties broken by row)."""
        scores = self.scores(query)
        k = min(k, self.size)
        order = np.lexsort((np.arange(self.size), -scores))[:k]
        return order, scores[order]

    # -- the ChunkIndex interface (batches) --------------------------------------------------
    def search(self, queries: list[str], k: int, threads: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
        """(len(queries), k) row numbers and scores, best first; rows past a query's matches
        are -1 with score 0 (only chunks sharing a term with the query are returned)."""
        k = min(k, self.size)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.zeros((len(queries), k), dtype=np.float32)
        if not queries or k == 0:
            return rows, scores
        token_ids = self._batch_token_ids(queries)
        self._searched = dict(zip(queries, token_ids))  # score() of the same batch reuses them
        found, found_scores = self._retriever.retrieve(
            [ids or [0] for ids in token_ids], k=k, show_progress=False, n_threads=threads)
        found = np.asarray(found, dtype=np.int64)
        found_scores = np.asarray(found_scores, dtype=np.float32)
        # bm25s sorts by score only; order equal scores by row, like top_k does
        order = np.lexsort((found, -found_scores), axis=-1)
        found = np.take_along_axis(found, order, axis=1)
        found_scores = np.take_along_axis(found_scores, order, axis=1)
        hit = (found_scores > 0) & np.asarray([bool(ids) for ids in token_ids])[:, None]
        rows[:, :found.shape[1]] = np.where(hit, found, -1)
        scores[:, :found.shape[1]] = np.where(hit, found_scores, 0.0)
        return rows, scores

    def score(self, queries: list[str], rows: list[int]) -> np.ndarray:
        """BM25 score of chunk ``rows[i]`` for ``queries[i]``, read from the sparse index
        without scoring the whole corpus (a positive's score, for the margin)."""
        matrix = self._retriever.scores
        # plain ndarray views of the (possibly memory-mapped) arrays: slicing a np.memmap
        # builds a new memmap object each time, ~10x slower in this loop
        data, indices, indptr = (np.asarray(matrix[key]) for key in ("data", "indices",
                                                                       "indptr"))
        out = np.zeros(len(queries), dtype=np.float32)
        known = self._searched
        missing = [q for q in dict.fromkeys(queries) if q not in known]
        known = {**known, **dict(zip(missing, self._batch_token_ids(missing)))}
        for i, (query, row) in enumerate(zip(queries, rows)):
            ids = known[query]
            total = 0.0
            for token in ids:
                start, end = int(indptr[token]), int(indptr[token + 1])
                at = start + int(np.searchsorted(indices[start:end], row))
                if at < end and indices[at] == row:
                    total += float(data[at])
            out[i] = total
        return out

    def _score_texts(self, queries: list[str], texts: list[str]) -> np.ndarray:
        """BM25 score of ``texts[i]`` for ``queries[i]`` as if the text were one more chunk of
        the index (its own length; the corpus's document frequencies and average length):
        Lucene's ``idf · tf / (tf + k1 · (1 − b + b · len / avg))``, as bm25s computes it.
        An indexed chunk's text scores what :meth:`score` reads for it."""
        retriever = self._retriever
        indptr = np.asarray(retriever.scores["indptr"])
        k1, b, n = retriever.k1, retriever.b, self.size
        words = self._bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer,
                                     return_ids=False, show_progress=False)
        vocab = self._vocab
        out = np.zeros(len(queries), dtype=np.float32)
        for i, (ids, text_words) in enumerate(zip(self._batch_token_ids(queries), words)):
            counts = Counter(vocab[w] for w in text_words if w in vocab)
            norm = k1 * (1 - b + b * len(text_words) / self.average_length)
            total = 0.0
            for token in ids:  # a repeated query word counts again, as in bm25s
                tf = counts.get(token, 0)
                if tf:
                    df = int(indptr[token + 1] - indptr[token])
                    total += math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + norm)
            out[i] = total
        return out
