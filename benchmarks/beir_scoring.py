"""How benchmarks/beir.py scores systems on a BEIR dataset's human test queries.

Standard BEIR protocol, independent of the pipeline's chunking: every document is ``title + " "
+ text``, encoded whole (max_seq_length 256) and ranked by cosine, or by BM25 (bm25s). The same
dense models are also scored on the run's own chunks (a document scoring as its best chunk,
MaxP), and each dense system is fused with BM25 (reciprocal rank). nDCG, Recall, P, MAP and MRR
at 1/5/10/100 (pytrec_eval); each pair in COMPARISONS gets a paired randomization test on
per-query nDCG@10. Embeddings are cached under names that say what was encoded, and with which
model (``texts_key``, ``model_key``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from common import logger  # sets up sys.path and env

say = logger("beir-bench")

SYSTEMS = ("bm25", "base", "tuned", "hybrid-base", "hybrid",
           "base-chunks", "tuned-chunks", "hybrid-base-chunks", "hybrid-chunks")
# each fusion (reciprocal rank) of a dense system with BM25
HYBRIDS = {"hybrid-base": "base", "hybrid": "tuned", "hybrid-base-chunks": "base-chunks",
           "hybrid-chunks": "tuned-chunks"}
# each pair is tested (paired randomization on per-query nDCG@10); "main": the main run's model
COMPARISONS = (("tuned", "base"), ("tuned", "bm25"), ("hybrid", "hybrid-base"), ("hybrid", "bm25"),
               ("tuned-chunks", "base-chunks"), ("tuned-chunks", "bm25"),
               ("hybrid-chunks", "hybrid-base-chunks"))
MAIN_COMPARISONS = (("tuned", "main"), ("tuned-chunks", "main-chunks"))
K_VALUES = [1, 5, 10, 100]
MAX_SEQ_LENGTH = 256  # whole documents are truncated here (the BEIR protocol)


def texts_key(texts: list[str]) -> str:
    """Names a cached embedding file after what was encoded: re-chunking with the same number of
    chunks (another chunker, another ``chunk_tokens``) must not reuse stale vectors.

    >>> texts_key(["a", "b"]) != texts_key(["a", "c"]), texts_key(["a", "b"]).startswith("2-")
    (True, True)
    """
    digest = hashlib.sha1()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return f"{len(texts)}-{digest.hexdigest()[:12]}"


def model_key(name_or_path: str | Path, max_seq_length: int = MAX_SEQ_LENGTH) -> str:
    """Names a model's cached embeddings after the model: the content of every file of its
    resolved sentence-transformers folder (weights, configs, tokenizer) and the truncation, so
    another ``train.base_model`` (or a model retrained in place) is encoded again; a copy of
    the same folder elsewhere shares the cache. Reading the weights costs about a second per
    GB, little beside encoding a corpus.

    >>> model_key("all-MiniLM-L6-v2") == model_key("all-MiniLM-L6-v2") != model_key(
    ...     "all-MiniLM-L6-v2", 512)
    True
    """
    from customir.models import resolve_base_model

    folder = resolve_base_model(str(name_or_path))
    digest = hashlib.sha1(f"max_seq_length={max_seq_length}".encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"\0{path.relative_to(folder).as_posix()}\0".encode())
        with open(path, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha1").digest())
    return digest.hexdigest()[:12]



def chunk_positions(doc_ids: list[str], chunk_docs: list[str]):
    """Each chunk's document as its position in ``doc_ids`` (for MaxP); a chunk of a document
    the dataset lacks stops with one line."""
    import numpy as np

    position = {doc: i for i, doc in enumerate(doc_ids)}
    unknown = sorted(set(chunk_docs) - set(position))
    if unknown:
        raise SystemExit(f"{len(unknown)} chunked documents are not in corpus.jsonl "
                         f"(e.g. {unknown[0]!r}): the run was made from another corpus")
    return np.array([position[d] for d in chunk_docs], dtype=np.int64)


class Evaluator:
    """Scores systems on the dataset's test queries; the BM25 run and the base model's document
    and chunk embeddings are computed once and reused by every variant."""

    def __init__(self, documents: dict[str, str], chunks: tuple[list[str], list[str]],
                 queries: dict[str, str], qrels: dict, base_model: str, cache_dir: Path,
                 batch_size: int = 64):

        from customir.evaluate.retrieval import bm25_run
        from customir.negatives.bm25 import BM25Index

        self.documents, self.queries, self.qrels = documents, queries, qrels
        self.doc_ids = list(documents)
        chunk_docs, self.chunk_texts = chunks
        self.chunk_doc = chunk_positions(self.doc_ids, chunk_docs)
        self.batch_size, self.cache_dir = batch_size, cache_dir
        self.named_runs: dict[str, tuple[dict, dict]] = {}  # by cache name: a model runs once
        index = BM25Index(list(documents.values()))
        self.runs = {"bm25": bm25_run(index, queries, self.doc_ids, max(K_VALUES))}
        # cached under the model's identity: a rerun with another train.base_model must not
        # score its queries against the previous model's vectors
        self.runs["base"], self.runs["base-chunks"] = self.dense(
            base_model, f"base-{model_key(base_model)}")

    def dense(self, model_path: str | Path, cache_name: str | None = None) -> tuple[dict, dict]:
        """The model's runs on whole documents and on chunks (MaxP)."""
        from customir.evaluate.retrieval import best_chunk_per_document, top_k_run
        from customir.models import load_sentence_transformer

        if cache_name in self.named_runs:
            return self.named_runs[cache_name]
        model = load_sentence_transformer(model_path)
        model.max_seq_length = MAX_SEQ_LENGTH
        documents = [self.documents[d] for d in self.doc_ids]
        passages = self._encode(model, model_path, "documents", documents,
                                cache_name and f"{cache_name}-{texts_key(documents)}")
        chunks = self._encode(model, model_path, "chunks", self.chunk_texts,
                              cache_name and f"{cache_name}-chunks-{texts_key(self.chunk_texts)}")
        qids = list(self.queries)
        q = model.encode([self.queries[i] for i in qids], batch_size=self.batch_size,
                         normalize_embeddings=True, convert_to_numpy=True)
        k = max(K_VALUES)
        runs = (top_k_run(qids, q @ passages.T, self.doc_ids, k),
                top_k_run(qids, best_chunk_per_document(q @ chunks.T, self.chunk_doc,
                                                        len(self.doc_ids)), self.doc_ids, k))
        if cache_name:
            self.named_runs[cache_name] = runs
        return runs

    def _encode(self, model, model_path, what: str, texts: list[str], cache_stem: str | None):
        """Normalized embeddings of ``texts``, kept as ``CACHE_DIR/<cache_stem>.npy`` if named."""
        import numpy as np

        cached = self.cache_dir / f"{cache_stem}.npy" if cache_stem else None
        if cached and cached.is_file():
            return np.load(cached)
        say(f"encoding {len(texts)} {what} with {model_path}")
        vectors = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                               convert_to_numpy=True)
        if cached:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            np.save(cached, vectors)
        return vectors

    def score(self, tuned_model: str | Path, cache_name: str | None = None,
              main: tuple[dict, dict] | None = None, permutations: int = 10000) -> dict:
        """Every system with ``tuned_model`` as the tuned one. ``main``: the main run's tuned
        runs (an ablation variant is then also compared with them, as ``tuned`` vs ``main``)."""
        from customir.evaluate.metrics import mean_metrics, paired_randomization_test, \
            per_query_metrics
        from customir.evaluate.retrieval import fuse_runs

        runs = dict(self.runs)
        runs["tuned"], runs["tuned-chunks"] = self.dense(tuned_model, cache_name)
        k = max(K_VALUES)
        for hybrid, dense in HYBRIDS.items():
            runs[hybrid] = fuse_runs([runs[dense], runs["bm25"]], k)
        pairs = list(COMPARISONS)
        if main is not None:
            runs["main"], runs["main-chunks"] = main
            pairs += MAIN_COMPARISONS
        per_query = {s: per_query_metrics(self.qrels, runs[s], K_VALUES) for s in runs}
        means = {s: {m: round(v, 4) for m, v in mean_metrics(per_query[s]).items()}
                 for s in runs}
        results = {s: means[s] for s in SYSTEMS}
        qids = sorted(self.qrels)
        comparisons = []
        for a, b in pairs:
            va = [per_query[a]["nDCG@10"][q] for q in qids]
            vb = [per_query[b]["nDCG@10"][q] for q in qids]
            comparisons.append({
                "a": a, "b": b, "metric": "nDCG@10", "n_queries": len(qids),
                "delta": round(means[a]["nDCG@10"] - means[b]["nDCG@10"], 4),
                "p_value": paired_randomization_test(va, vb, permutations)})
        return {"n_queries": len(qids), "results": results, "comparisons": comparisons}
