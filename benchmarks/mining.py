"""Hard-negative mining throughput: customir's mine stage vs raw bm25s and raw pyserini.

    python benchmarks/mining.py [--queries 100000] [--backends bm25s,pyserini] [--top-k 30]
    python benchmarks/mining.py --scale [--scale-chunks 1000000] [--scale-queries 100000]

Default run (a few minutes): the SciFact corpus is ingested into chunks, one pseudo-query per
sentence is written as the queries stage would (positive = its chunk), each backend's index is
built once, and then on the same queries in the same run:

- stage: ``customir.negatives.mine.run`` on a running local Ray cluster (Ray Data actors that
  open the shared index, batched search + positive scoring + margin selection + typed Parquet
  and manifest), timed from call to return;
- raw bm25s: ``bm25s.tokenize`` + ``BM25.retrieve`` on the same saved index, all cores;
- raw pyserini: ``LuceneSearcher.batch_search`` on the same Lucene index, all cores.

Both sides retrieve top_k + 1 (the stage also scores every positive and selects negatives).

``--scale``: a synthetic corpus of 1,000,000 documents (Zipf-distributed words, generated
here) is ingested, indexed with bm25s and mined for 100,000 queries; wall time per phase and the
peak resident memory of this process plus its children (Ray workers), sampled every 0.5 s. With
``--scale-dir`` a rerun reuses the corpus, the chunks and the index made there: each phase is
reported as ``ran`` or ``reused`` (``phases_reused`` in the JSON), and a reused phase's seconds
are only its check. The scale run has no ``ratio_vs_*``: it measures whether the stage holds at
1M chunks (wall time per phase, peak memory), and no raw baseline runs there, since raw bm25s
would load a second copy of the index into this process and its memory would mix into the peak
figure. The stage-vs-raw ratio is the default run's.

The last line is one JSON object (``ratio_vs_raw_bm25s``, ``ratio_vs_raw_pyserini``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import threading
import time
from pathlib import Path

# common sets up sys.path and the environment first
from common import SCIFACT, finished_at, logger, scratch_dir  # noqa: E402

say = logger("mining-bench")


class PeakMemory:
    """Peak RSS of this process and all its descendants (Ray workers included)."""

    def __init__(self, every_s: float = 0.5):
        import psutil

        self._psutil, self.every_s, self.peak, self._stop = psutil, every_s, 0, False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = self._psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self._sample())
            time.sleep(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()


def write_queries(run_dir: Path, rows: list[dict]) -> Path:
    """A queries/ stage folder (typed Parquet + manifest), as the generate stage writes it."""
    import pyarrow as pa

    from customir.manifest import Balance, stage_output
    from customir.schemas import QUERIES, write_rows

    out = run_dir / "queries"
    with stage_output(out, "generate", "benchmark", {}) as (tmp, manifest):
        write_rows(tmp, pa.Table.from_pylist(rows, schema=QUERIES), [])
        manifest.balances["queries"] = Balance(len(rows), len(rows), {})
    return out


def sentence_queries(chunks, limit: int, seed: int = 13) -> list[dict]:
    """Pseudo-queries from the chunks' sentences (6-30 words): each whole sentence and its two
    halves, positive = the chunk; a seeded shuffle, then the first ``limit``."""
    rows = []
    for chunk_id, doc_id, text in zip(chunks["chunk_id"], chunks["doc_id"], chunks["text"]):
        for i, sentence in enumerate(text.split(". ")):
            words = sentence.split()
            if not 6 <= len(words) <= 30:
                continue
            half = len(words) // 2
            for part, query in (("s", words), ("a", words[:half]), ("b", words[half:])):
                rows.append({"query_id": f"{chunk_id}:{i}{part}", "query": " ".join(query),
                             "kind": "sentence", "origin": "benchmark", "chunk_id": chunk_id,
                             "doc_id": doc_id})
    random.Random(seed).shuffle(rows)
    return rows[:limit]


def raw_bm25s(index_dir: Path, queries: list[str], k: int) -> float:
    """Seconds for plain bm25s on the saved index: tokenize + retrieve, all cores."""
    import bm25s
    import Stemmer

    retriever = bm25s.BM25.load(str(index_dir), mmap=True)
    stemmer = Stemmer.Stemmer("english")
    started = time.perf_counter()
    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False)
    retriever.retrieve(tokens, k=k, show_progress=False, n_threads=os.cpu_count() or 1)
    return time.perf_counter() - started


def raw_pyserini(index_dir: Path, queries: list[str], k: int, k1: float, b: float) -> float:
    """Seconds for plain pyserini batch_search on the same Lucene index, all cores."""
    from customir.negatives.lucene import lucene_searcher

    searcher = lucene_searcher(index_dir)
    searcher.set_bm25(k1, b)
    started = time.perf_counter()
    searcher.batch_search(queries, [str(i) for i in range(len(queries))], k=k,
                          threads=os.cpu_count() or 1)
    return time.perf_counter() - started


def mine_with(run_dir: Path, config) -> tuple[float, dict]:
    from customir.negatives import mine

    started = time.perf_counter()
    manifest = mine.run(run_dir / "queries", run_dir / "chunks", run_dir, config)
    return time.perf_counter() - started, manifest.extra


def default_run(args) -> dict:
    import ray

    from customir.config import IngestConfig, MineConfig
    from customir.corpus import ingest
    from customir.negatives.index import ensure_index
    from customir.schemas import CHUNKS, read_table

    if not (args.data / "corpus.jsonl").is_file():
        sys.exit(f"mining benchmark: no corpus.jsonl in {args.data} (pass --data)")
    work = scratch_dir("customir-mining-")
    (work / "corpus").mkdir()
    shutil.copy(args.data / "corpus.jsonl", work / "corpus" / "corpus.jsonl")
    run_dir = work / "run"
    say(f"ingesting {args.data / 'corpus.jsonl'}")
    ingest.run(work / "corpus", run_dir, IngestConfig())
    chunks = read_table(run_dir / "chunks", CHUNKS).to_pydict()
    rows = sentence_queries(chunks, args.queries)
    write_queries(run_dir, rows)
    texts = [r["query"] for r in rows]
    say(f"{len(chunks['chunk_id'])} chunks, {len(rows)} queries")
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    figures: dict = {"benchmark": "mining", "chunks": len(chunks["chunk_id"]),
                     "queries": len(rows), "top_k": args.top_k, "cpus": os.cpu_count()}
    table = []
    for backend in args.backends:
        # one single-threaded actor per core (each pyserini actor runs its own JVM)
        workers = os.cpu_count() or 1
        config = MineConfig(backend=backend, top_k=args.top_k, num_workers=workers, threads=1)
        started = time.perf_counter()
        index_dir = ensure_index(run_dir / "chunks", run_dir, config)
        build_s = time.perf_counter() - started
        stage_s, extra = mine_with(run_dir, config)
        if backend == "bm25s":
            raw_s = raw_bm25s(index_dir / "bm25s", texts, args.top_k + 1)
        else:
            raw_s = raw_pyserini(index_dir / "lucene", texts, args.top_k + 1, config.k1,
                                 config.b)
        stage_qps, raw_qps = len(rows) / stage_s, len(rows) / raw_s
        table.append((backend, build_s, stage_qps, raw_qps, stage_qps / raw_qps))
        figures[backend] = {"index_build_s": round(build_s, 2), "stage_s": round(stage_s, 2),
                            "stage_qps": round(stage_qps, 1), "raw_s": round(raw_s, 2),
                            "raw_qps": round(raw_qps, 1), "workers": workers,
                            "candidates": extra["candidates"],
                            "dropped_over_margin": extra["dropped_over_margin"]}
        figures[f"ratio_vs_raw_{backend}"] = round(stage_qps / raw_qps, 3)
    ray.shutdown()
    print(f"\n{'backend':10} {'index s':>8} {'stage q/s':>10} {'raw q/s':>9} {'ratio':>6}")
    for backend, build_s, stage_qps, raw_qps, ratio in table:
        print(f"{backend:10} {build_s:8.1f} {stage_qps:10.1f} {raw_qps:9.1f} {ratio:6.2f}")
    return figures


def synthetic_corpus(folder: Path, n_docs: int, seed: int = 7) -> None:
    """``n_docs`` jsonl documents of 40-90 Zipf-distributed words, 100k per file. The words are
    the base model's whole-word vocabulary entries, so one document is one chunk."""
    import numpy as np

    from customir.models import load_tokenizer, resolve_base_model

    vocab = load_tokenizer(str(resolve_base_model("all-MiniLM-L6-v2"))).get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and w.isascii() and len(w) > 2)
    rng = np.random.default_rng(seed)
    rng.shuffle(words)
    weights = 1.0 / np.arange(1, len(words) + 1) ** 1.05
    weights /= weights.sum()
    per_file = 100_000
    for start in range(0, n_docs, per_file):
        n = min(per_file, n_docs - start)
        lengths = rng.integers(40, 91, size=n)
        ids = rng.choice(len(words), size=int(lengths.sum()), p=weights)
        with open(folder / f"part-{start // per_file:03d}.jsonl", "w") as fh:
            at = 0
            for i, length in enumerate(lengths):
                text = " ".join(words[j] for j in ids[at:at + length])
                at += length
                fh.write(json.dumps({"_id": f"s{start + i}", "text": text}) + "\n")


class Phases:
    """Wall time per phase, and which phases reused an earlier run's finished output (its
    manifest unchanged by the phase) instead of running: their seconds are only the check."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.reused: list[str] = []

    @contextlib.contextmanager
    def phase(self, name: str, output: Path | None = None):
        before = finished_at(output) if output else None
        started = time.perf_counter()
        yield
        self.seconds[f"{name}_s"] = time.perf_counter() - started
        if before is not None and finished_at(output) == before:
            self.reused.append(name)

    def table(self) -> str:
        rows = [f"{'phase':20} {'seconds':>9}  this invocation"]
        rows += [f"{key:20} {s:9.1f}  {'reused' if key[:-2] in self.reused else 'ran'}"
                 for key, s in self.seconds.items()]
        return "\n".join(rows)


def scale_corpus(work: Path, n_docs: int, phases: Phases) -> Path:
    """The synthetic corpus in ``work/corpus``, generated unless a run made it there before
    (then it must be of the same size: its documents are not counted again)."""
    corpus, size = work / "corpus", work / "corpus_documents.txt"
    corpus.mkdir(parents=True, exist_ok=True)
    with phases.phase("generate_corpus"):
        if any(corpus.iterdir()):
            made = size.read_text().strip() if size.is_file() else "an unknown number of"
            if made != str(n_docs):
                sys.exit(f"mining benchmark: {corpus} holds {made} documents, not "
                         f"--scale-chunks {n_docs}; give another --scale-dir")
            phases.reused.append("generate_corpus")
        else:
            say(f"generating {n_docs} synthetic documents in {corpus}")
            synthetic_corpus(corpus, n_docs)
            size.write_text(f"{n_docs}\n")
    return corpus


def scale_queries(run_dir: Path, n_queries: int) -> list[dict]:
    """Six-word spans of ``n_queries`` chunks drawn without replacement (seeded), positive =
    the chunk, written as a queries/ stage folder."""
    import numpy as np

    from customir.schemas import CHUNKS, read_table

    chunks = read_table(run_dir / "chunks", CHUNKS).select(["chunk_id", "doc_id", "text"])
    rng = np.random.default_rng(11)
    picked = rng.choice(chunks.num_rows, size=min(n_queries, chunks.num_rows), replace=False)
    ids, docs, texts = (chunks.column(c).take(picked).to_pylist()
                        for c in ("chunk_id", "doc_id", "text"))
    rows = []
    for i, (chunk_id, doc_id, text) in enumerate(zip(ids, docs, texts)):
        words = text.split()
        at = int(rng.integers(0, max(1, len(words) - 6)))
        rows.append({"query_id": f"q{i}", "query": " ".join(words[at:at + 6]),
                     "kind": "span", "origin": "benchmark", "chunk_id": chunk_id,
                     "doc_id": doc_id})
    write_queries(run_dir, rows)
    return rows


def scale_run(args) -> dict:
    import ray

    from customir.config import IngestConfig, MineConfig
    from customir.corpus import ingest
    from customir.negatives.index import ensure_index, index_dir
    from customir.schemas import CHUNKS, read_table

    work = Path(args.scale_dir) if args.scale_dir else scratch_dir("customir-mining-scale-")
    run_dir = work / "run"
    phases = Phases()
    config = MineConfig(backend="bm25s", top_k=args.top_k, num_workers=os.cpu_count() or 1,
                        batch_size=2048)
    with PeakMemory() as memory:
        corpus = scale_corpus(work, args.scale_chunks, phases)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
        say("ingesting")
        with phases.phase("ingest", run_dir / "chunks"):
            ingest.run(corpus, run_dir, IngestConfig(min_chunk_tokens=8))
        n_chunks = read_table(run_dir / "chunks", CHUNKS).num_rows
        rows = scale_queries(run_dir, args.scale_queries)
        say("indexing")
        with phases.phase("index", index_dir(run_dir, config)):
            ensure_index(run_dir / "chunks", run_dir, config)
        say(f"mining {len(rows)} queries")
        with phases.phase("mine", run_dir / "candidates"):
            _, extra = mine_with(run_dir, config)
        ray.shutdown()
    figures = {"benchmark": "mining-scale", "backend": "bm25s", "documents": args.scale_chunks,
               "chunks": n_chunks, "queries": len(rows),
               "mine_qps": round(len(rows) / phases.seconds["mine_s"], 1),
               "peak_rss_gib": round(memory.peak / 2**30, 2),
               "candidates": extra["candidates"], "phases_reused": phases.reused,
               **{k: round(v, 1) for k, v in phases.seconds.items()}}
    print("\n" + phases.table())
    print(f"peak RSS (process + Ray workers): {figures['peak_rss_gib']} GiB")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SCIFACT, help="BEIR folder (corpus.jsonl)")
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--backends", default="bm25s,pyserini",
                        type=lambda s: [b for b in s.split(",") if b])
    parser.add_argument("--scale", action="store_true", help="the 1M-chunk run instead")
    parser.add_argument("--scale-chunks", type=int, default=1_000_000)
    parser.add_argument("--scale-queries", type=int, default=100_000)
    parser.add_argument("--scale-dir", type=Path, default=None,
                        help="keep (and reuse) the synthetic corpus and run here")
    args = parser.parse_args()
    figures = scale_run(args) if args.scale else default_run(args)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
