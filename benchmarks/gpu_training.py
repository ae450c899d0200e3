"""The train stage on one CUDA GPU: the Hugging Face trainer alone (bf16) against DeepSpeed ZeRO-2
and ZeRO-3, side by side on the same rows, and what each trained model retrieves.

    python benchmarks/gpu_training.py RUN_DIR --out OUT [--variants plain zero2 zero3]
        [--base-model PATH] [--config benchmarks/configs/beir.yaml] [--set train.key=value ...]
        [--rank BEIR_DIR]
    python benchmarks/gpu_training.py RUN_DIR --score OUT/rankings.json --rank BEIR_DIR

RUN_DIR is a finished run's folder: each variant runs customir's train stage
(``customir.train.trainer.run``: Ray Train, one GPU worker, NCCL) on its ``triples/`` and
``chunks/`` with ``train.use_gpu=true`` and the train settings of ``--config`` and ``--set``, in a
scratch folder of its own. Per variant: the stage's wall seconds, the training loop's seconds
(``trainer.train()``), training rows/s, the DeepSpeed engine and ZeRO stage the worker really
trained through, the best validation nDCG@10 and the GPU's peak memory in use (NVML, sampled
every 0.1 s; the whole device, so the first variant's includes CUDA's context like the others).

``--rank BEIR_DIR``: the base model and every trained model encode the run's chunks
(``title + " " + chunk``) and the folder's test queries on the GPU, and each query's documents are
ranked by their best chunk (MaxP, as ``beir.py`` scores chunks); the top 100 go to
``OUT/rankings.json``. The test queries are read for evaluation only. Scoring needs pytrec_eval,
which a GPU machine may lack: ``--score OUT/rankings.json`` scores the rankings where it is
installed (nDCG, Recall, P, MAP, MRR @1/5/10/100), with a paired randomization test of each
against the GPU-encoded base model and against the CPU-trained model of RUN_DIR/train/model
(encoded on this machine, or read from ``beir.py``'s embedding cache when ``--cache`` names it).

The last line is one JSON object: per variant its figures, and ``ratio_vs_plain`` (training
rows/s of each DeepSpeed variant ÷ the plain trainer's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path

from common import ROOT, logger, scratch_dir  # noqa: E402  (sets up sys.path and env)

say = logger("gpu-training")

VARIANTS = {"plain": {}, "zero2": {"deepspeed_stage": 2}, "zero3": {"deepspeed_stage": 3}}
TOP_K = 100


class PeakGpuMemory:
    """The GPU's highest memory in use while the block runs (NVML polled every 0.1 s); None
    where NVML is missing (no NVIDIA driver or no nvidia-ml-py)."""

    def __enter__(self):
        self.peak_mib, self._stop = None, threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001  (any NVML failure: no figure, not a failed run)
            return self
        self.peak_mib = 0

        def poll():
            while not self._stop.is_set():
                used = pynvml.nvmlDeviceGetMemoryInfo(handle).used // 2**20
                self.peak_mib = max(self.peak_mib, used)
                time.sleep(0.1)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.peak_mib is not None:
            self._thread.join()


def train_config(args):
    from customir.config import TrainConfig, load_config

    config = load_config(args.config, args.overrides, corpus=str(args.run_dir),
                         run_dir=str(args.run_dir))
    settings = config.train.model_dump()
    if args.base_model:
        settings["base_model"] = str(args.base_model)
    return TrainConfig(**{**settings, "use_gpu": True})


def train_variant(name: str, base: dict, run_dir: Path, work: Path) -> dict:
    """One variant of the train stage in its own scratch run folder; its figures."""
    from customir.config import TrainConfig
    from customir.train import trainer

    config = TrainConfig(**{**base, **VARIANTS[name]})
    out = work / name
    out.mkdir(parents=True)
    for stage in ("triples", "chunks"):
        (out / stage).symlink_to(run_dir / stage)
    say(f"{name}: training ({VARIANTS[name] or 'no DeepSpeed'})")
    started = time.monotonic()
    with PeakGpuMemory() as memory:
        manifest = trainer.run(out / "triples", out / "chunks", out, config)
    metrics = manifest.extra["metrics"]
    loop_s = metrics["training_ended_at"] - metrics["training_started_at"]
    rows = metrics["steps"] * config.batch_size
    return {"stage_s": round(time.monotonic() - started, 1), "loop_s": round(loop_s, 1),
            "steps": metrics["steps"], "batch_size": config.batch_size,
            "rows_per_s": round(rows / loop_s, 1), "deepspeed": metrics["deepspeed"],
            "zero_stage": metrics["deepspeed_zero_stage"], "train_loss": metrics["train_loss"],
            "best_step": metrics["best_step"],
            "best_validation_ndcg@10": metrics.get("best_validation_ndcg@10"),
            "peak_gpu_mib": memory.peak_mib, "model": str(out / "train" / trainer.MODEL_DIR)}


def rank(models: dict[str, str], run_dir: Path, dataset: Path, device: str) -> dict:
    """Each model's top-100 documents per test query, documents scored by their best chunk."""
    from beir import read_chunks, read_documents, read_test_set
    from beir_scoring import MAX_SEQ_LENGTH, chunk_positions
    from customir.evaluate.retrieval import best_chunk_per_document, top_k_run
    from customir.models import load_sentence_transformer

    doc_ids = list(read_documents(dataset))
    chunk_docs, chunk_texts = read_chunks(run_dir)
    chunk_doc = chunk_positions(doc_ids, chunk_docs)
    queries, _ = read_test_set(dataset, "test")
    qids = list(queries)
    rankings = {}
    for name, path in models.items():
        started = time.monotonic()
        model = load_sentence_transformer(path, device=device)
        model.max_seq_length = MAX_SEQ_LENGTH
        chunks = model.encode(chunk_texts, batch_size=256, normalize_embeddings=True,
                              convert_to_numpy=True)
        q = model.encode([queries[i] for i in qids], batch_size=256, normalize_embeddings=True,
                         convert_to_numpy=True)
        best = best_chunk_per_document(q @ chunks.T, chunk_doc, len(doc_ids))
        rankings[name] = top_k_run(qids, best, doc_ids, TOP_K)
        say(f"{name}: {len(chunk_texts)} chunks and {len(qids)} queries ranked in "
            f"{time.monotonic() - started:.1f} s")
    return rankings


def score(rankings_path: Path, run_dir: Path, dataset: Path, cache: Path | None) -> dict:
    """The rankings' metrics, each tested against the GPU base and the CPU-trained model."""
    from beir import read_chunks, read_documents, read_test_set
    from beir_scoring import K_VALUES, Evaluator
    from customir.config import TrainConfig
    from customir.evaluate.metrics import mean_metrics, paired_randomization_test, \
        per_query_metrics

    rankings = json.loads(rankings_path.read_text())
    queries, qrels = read_test_set(dataset, "test")
    evaluator = Evaluator(read_documents(dataset), read_chunks(run_dir), queries, qrels,
                          TrainConfig().base_model, cache or scratch_dir("gpu-score-"))
    cpu_model = run_dir / "train" / "model"
    _, cpu_chunks = evaluator.dense(cpu_model, cpu_cache_name(run_dir) if cache else None)
    runs = {**rankings, "cpu-base": evaluator.runs["base-chunks"], "cpu-tuned": cpu_chunks}
    per_query = {name: per_query_metrics(qrels, run, K_VALUES) for name, run in runs.items()}
    qids = sorted(qrels)

    def test(a: str, b: str) -> dict:
        ndcg = [[per_query[s]["nDCG@10"][q] for q in qids] for s in (a, b)]
        return {"delta": round(sum(ndcg[0]) / len(qids) - sum(ndcg[1]) / len(qids), 4),
                "p_value": paired_randomization_test(ndcg[0], ndcg[1], 10000)}

    return {name: {"metrics": {m: round(v, 4) for m, v in mean_metrics(per_query[name]).items()},
                   "vs_base": test(name, "base") if name != "base" else None,
                   "vs_cpu_tuned": test(name, "cpu-tuned") if name != "cpu-tuned" else None}
            for name in runs}


def cpu_cache_name(run_dir: Path) -> str:
    """The name ``beir.py`` caches the main model's embeddings under."""
    from beir import main_cache_name
    from customir.manifest import Manifest

    return main_cache_name(Manifest.read(run_dir / "train"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run (triples/, chunks/)")
    parser.add_argument("--out", type=Path, help="where rankings.json and figures.json go")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--base-model", type=Path, help="a sentence-transformers folder "
                        "(default: the config's train.base_model)")
    parser.add_argument("--config", type=Path, default=ROOT / "benchmarks/configs/beir.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--rank", type=Path, metavar="BEIR_DIR",
                        help="rank this BEIR folder's test queries with every model")
    parser.add_argument("--score", type=Path, metavar="RANKINGS",
                        help="score rankings.json written by a --rank run (needs --rank)")
    parser.add_argument("--cache", type=Path, help="beir.py's embedding cache for --score")
    args = parser.parse_args()
    run_dir = args.run_dir.resolve()
    for stage in ("chunks",) if args.score else ("triples", "chunks"):
        if not (run_dir / stage).is_dir():
            raise SystemExit(f"{run_dir}: no {stage}/ stage folder (give a finished run)")

    if args.score:
        if not args.rank:
            raise SystemExit("--score needs --rank BEIR_DIR (the queries and qrels)")
        scored = score(args.score, run_dir, args.rank, args.cache)
        print("| model (chunks, MaxP) | nDCG@10 | R@100 | Δ vs base (p) | Δ vs CPU-trained (p) |")
        print("|---|---|---|---|---|")
        for name, s in scored.items():
            cells = [f"{t['delta']:+.4f} ({t['p_value']:.3f})" if t else ""
                     for t in (s["vs_base"], s["vs_cpu_tuned"])]
            print(f"| {name} | {s['metrics']['nDCG@10']:.4f} | {s['metrics']['Recall@100']:.4f} "
                  f"| {cells[0]} | {cells[1]} |")
        print(json.dumps({"benchmark": "gpu-training-score", **{
            n: {"ndcg10": s["metrics"]["nDCG@10"], "vs_base": s["vs_base"],
                "vs_cpu_tuned": s["vs_cpu_tuned"]} for n, s in scored.items()}}))
        return

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (torch.cuda.is_available() is False)")
    if args.out is None:
        raise SystemExit("--out OUT is required for a training run")
    args.out.mkdir(parents=True, exist_ok=True)
    base = train_config(args).model_dump()
    work = scratch_dir("gpu-training-")
    figures = {}
    for name in args.variants:
        figures[name] = train_variant(name, base, run_dir, work)
        (args.out / "figures.json").write_text(json.dumps(figures, indent=1))
    if args.rank:
        models = {"base": base["base_model"], **{n: f["model"] for n, f in figures.items()}}
        rankings = rank(models, run_dir, args.rank, "cuda")
        (args.out / "rankings.json").write_text(json.dumps(rankings))
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| variant | DeepSpeed (ZeRO) | steps × batch | loop s | rows/s | stage s "
          "| peak GPU MiB | best val nDCG@10 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, f in figures.items():
        print(f"| {name} | {f['deepspeed']} ({f['zero_stage']}) | {f['steps']} × "
              f"{f['batch_size']} | {f['loop_s']} | {f['rows_per_s']} | {f['stage_s']} | "
              f"{f['peak_gpu_mib']} | {f['best_validation_ndcg@10'] or ''} |")
    plain = figures.get("plain")
    print(json.dumps({"benchmark": "gpu-training", "gpu": torch.cuda.get_device_name(0),
                      "variants": {n: {k: v for k, v in f.items() if k != "model"}
                                   for n, f in figures.items()},
                      **{f"ratio_vs_plain_{n}": round(f["rows_per_s"] / plain["rows_per_s"], 3)
                         for n, f in figures.items() if plain and n != "plain"}}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
