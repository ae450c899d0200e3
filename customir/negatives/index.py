"""The candidate index: one interface over bm25s, pyserini (Lucene), dense and hybrid rankers.

The index is built once per chunks/ folder and index settings, saved under
``<run>/indexes/<backend>-<hash>/`` (:func:`index_dir`) with a manifest (so a rerun reuses it),
and opened by every mining worker instead of being rebuilt: on the driver's machine from that
folder, on other nodes from a copy that :mod:`customir.node_files` ships (bm25s and dense
memory-map their files).

Every backend addresses chunks by row number in ``chunks/`` and offers:

- ``search(queries, k) -> (rows, scores)``: (n, k) arrays, best first; -1 rows mark a short list.
- ``score(queries, rows) -> scores``: the score of chunk ``rows[i]`` for ``queries[i]`` (the
  positives' scores that the safety margin compares against).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol

import numpy as np

from customir.config import DenseSearch, MineConfig, MiningBackend
from customir.manifest import Balance, find_complete, fingerprint, log, stage_output
from customir.schemas import CHUNKS, read_table

# Part of the index hash: bump it when the same settings write other index files (2: bm25s
# indexes save customir.json, without which text positives cannot be scored), so an index of
# the old format is rebuilt rather than reused.
INDEX_FORMAT = "2"
INDEX_FIELDS = ("backend", "stemmer", "k1", "b", "dense_model", "dense_search",
                "faiss_min_chunks")


class ChunkIndex(Protocol):
    name: str
    size: int

    def search(self, queries: list[str], k: int, threads: int = 0
               ) -> tuple[np.ndarray, np.ndarray]: ...

    def score(self, queries: list[str], rows: list[int]) -> np.ndarray: ...


def index_hash(config: MineConfig) -> str:
    """Hash of the settings that change the index (not the selection rules)."""
    fields = config.model_dump(mode="json", include=set(INDEX_FIELDS))
    fields["format"] = INDEX_FORMAT
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _use_faiss(config: MineConfig, n_chunks: int) -> bool:
    if config.dense_search == DenseSearch.auto:
        return n_chunks >= config.faiss_min_chunks
    return config.dense_search == DenseSearch.faiss


def build_index(texts: list[str], directory: Path, config: MineConfig) -> None:
    """Write the configured backend's index files for ``texts`` into ``directory``."""
    from customir.negatives.bm25 import BM25Index

    backend = config.backend
    if backend in (MiningBackend.bm25s, MiningBackend.hybrid):
        BM25Index(texts, config.stemmer, config.k1, config.b).save(directory / "bm25s")
    if backend == MiningBackend.pyserini:
        from customir.negatives.lucene import LuceneIndex

        LuceneIndex.build(texts, directory / "lucene", config.threads, config.java_heap)
    if backend in (MiningBackend.dense, MiningBackend.hybrid):
        from customir.negatives.dense import DenseIndex

        (directory / "dense").mkdir()
        DenseIndex.build(texts, directory / "dense", config.dense_model,
                         _use_faiss(config, len(texts)))


def open_index(directory: str | Path, config: MineConfig) -> ChunkIndex:
    """Open a built index (memory-mapped where the backend allows)."""
    directory = Path(directory)
    backend = config.backend
    if backend == MiningBackend.bm25s:
        from customir.negatives.bm25 import BM25Index

        return BM25Index.load(directory / "bm25s")
    if backend == MiningBackend.pyserini:
        from customir.negatives.lucene import LuceneIndex

        return LuceneIndex(directory / "lucene", config.k1, config.b, config.threads,
                           config.java_heap)
    from customir.negatives.dense import DenseIndex

    dense = DenseIndex(directory / "dense")
    if backend == MiningBackend.dense:
        return dense
    from customir.negatives.bm25 import BM25Index
    from customir.negatives.hybrid import HybridIndex

    return HybridIndex(BM25Index.load(directory / "bm25s"), dense, config.rrf_k)


def index_dir(run_dir: str | Path, config: MineConfig) -> Path:
    """``<run>/indexes/<backend>-<hash>``: one folder per backend and index settings, so
    generate's default index (multi-hop neighbours, round-trip checks) and a mine stage with
    other settings each keep their own instead of rebuilding over each other on every rerun.

    >>> index_dir("/run", MineConfig()).name == "bm25s-" + index_hash(MineConfig())[:8]
    True
    """
    return Path(run_dir) / "indexes" / f"{config.backend.value}-{index_hash(config)[:8]}"


def ensure_index(chunks_dir: str | Path, run_dir: str | Path, config: MineConfig) -> Path:
    """The index folder for these chunks and settings, built now unless already there."""
    chunks_dir = Path(chunks_dir).resolve()
    out = index_dir(Path(run_dir).resolve(), config)
    inputs = {"chunks": fingerprint(chunks_dir)}
    if find_complete(out, index_hash(config), inputs):
        log(f"index: reusing the {config.backend.value} index in {out}")
        return out
    texts = read_table(chunks_dir, CHUNKS).column("text").to_pylist()
    log(f"index: building the {config.backend.value} index over {len(texts)} chunks")
    with stage_output(out, "index", index_hash(config), inputs) as (tmp, manifest):
        build_index(texts, tmp, config)
        manifest.balances["chunks"] = Balance(len(texts), len(texts), {})
        manifest.extra["backend"] = config.backend.value
    return out
