"""Evaluation runs: a document scores as its best chunk (MaxP), and a cut-off of k means k
documents, however many chunks each has."""

import numpy as np

from customir.evaluate.retrieval import Documents, best_chunk_per_document, bm25_run, dense_run
from customir.negatives.bm25 import BM25Index


def test_a_document_scores_as_its_best_chunk():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 9)).astype(np.float32)
    chunk_doc = np.array([0, 0, 1, 3, 3, 3, 0, 1, 4])  # document 2 has no chunk
    got = best_chunk_per_document(scores, chunk_doc, 5)
    for doc in range(5):
        mine = scores[:, chunk_doc == doc]
        want = mine.max(axis=1) if mine.size else np.full(4, -np.inf)
        assert np.array_equal(got[:, doc], want)


class _Vectors:
    """Stands in for a SentenceTransformer: each text's vector is looked up."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors

    def encode(self, texts, **_):
        return np.stack([self.vectors[t] for t in texts])


def _corpus(n_docs=30, per_doc=10):
    ids = [f"d{d:02d}#{c}" for d in range(n_docs) for c in range(per_doc)]
    return ids, {i: i.split("#")[0] for i in ids}


def test_dense_document_runs_hold_k_documents_ranked_by_their_best_chunk():
    ids, chunk_doc = _corpus()
    # a document's chunks score next to each other, so the 3k best chunks hold only 6 documents
    angle = {i: 0.001 * (int(i[1:3]) * 10 + int(i[4:])) for i in ids}
    vectors = {i: np.array([np.cos(a), np.sin(a)], dtype=np.float32) for i, a in angle.items()}
    vectors["query"] = np.array([1.0, 0.0], dtype=np.float32)
    model, passages = _Vectors(vectors), {i: i for i in ids}
    run = dense_run(model, {"q": "query"}, passages, 20, documents=Documents(ids, chunk_doc),
                    block=1)
    assert sorted(run["q"]) == [f"d{d:02d}" for d in range(20)]
    for doc, score in run["q"].items():  # each at its best chunk's cosine
        assert np.isclose(score, np.cos(angle[f"{doc}#0"]))
    chunks = dense_run(model, {"q": "query"}, passages, 20)
    assert sorted(chunks["q"]) == ids[:20]  # without documents: the 20 best chunks


def test_bm25_document_runs_hold_k_documents_and_only_matching_ones():
    ids, chunk_doc = _corpus(n_docs=30, per_doc=5)
    texts = [f"aspirin {' '.join(['filler'] * (int(i[1:3]) + int(i[4:])))}" for i in ids]
    texts[-5:] = ["kidney stones"] * 5  # the last document never mentions aspirin
    index = BM25Index(texts, "english")
    run = bm25_run(index, {"q": "aspirin"}, ids, 40, Documents(ids, chunk_doc))["q"]
    scores = index.scores("aspirin")
    best = {}
    for i, s in zip(ids, scores):
        best[chunk_doc[i]] = max(best.get(chunk_doc[i], 0.0), float(s))
    assert len(run) == 29 and "d29" not in run  # 30 documents, one without the word
    assert all(np.isclose(run[d], best[d]) for d in run)
    top = sorted(run, key=run.get, reverse=True)[:10]
    assert top == sorted(best, key=lambda d: (-best[d], d))[:10]
