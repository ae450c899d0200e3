"""Training throughput: customir's Ray Train path (1 worker) vs a plain SentenceTransformerTrainer
on the same rows, in the same run.

    python benchmarks/training.py [--rows 512] [--batch-size 32] [--max-seq-length 128]
                                  [--rounds 2]

Rows are SciFact-derived (title → abstract, one BM25 hard negative from bm25s, the abstract's own
document excluded); no test query is read. Both sides train MiniLM for one epoch with the same
loss (MNRL, no-duplicates batches), batch size, sequence length, learning rate and seed:

- ray: ``customir.train.trainer._fit`` on the local Ray cluster customir starts — a
  ``TorchTrainer`` with one worker holding all CPUs, the stage's training arguments, checkpoints
  every ``eval_steps`` (50) reported to Ray Train, the final model reported and copied back;
- plain: ``SentenceTransformerTrainer`` in a fresh Python process (the Ray worker is one too).

Two figures per run: *training* seconds (``trainer.train()`` on either side — what Hugging Face's
own ``train_samples_per_second`` divides by) and *wall* seconds (plain: model load to saved model;
ray: call to return, so Ray Train's start-up, the worker's model load and the checkpoint copies
are in it). Each side runs ``--rounds`` times (default 2), alternated plain-ray, ray-plain, …
with the Ray cluster up throughout, because one run per side varies by ±10 % on a shared 2-core
machine. The last line is one JSON object with ``ratio_vs_plain_trainer`` (ray training
samples/s ÷ plain training samples/s over all rounds) and ``ratio_vs_plain_trainer_wall`` (the
same for wall seconds: Ray's fixed ~15 s of start-up and copies weigh heavily on a 1.5-minute
run and ~1 % on a 20-minute one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import SCIFACT, logger, scratch_dir  # noqa: E402  (sets up sys.path and env)

say = logger("training-bench")


def scifact_rows(data: Path, n_rows: int) -> list[dict]:
    """Title → abstract rows with the best-ranked other abstract by BM25 as the negative."""
    from customir.negatives.bm25 import BM25Index

    docs = []
    with open(data / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if record.get("title") and record.get("text"):
                docs.append((record["title"].strip(), record["text"].strip()))
    texts = [text for _, text in docs]
    index = BM25Index(texts, "english")
    picked = docs[:n_rows]
    found, _ = index.search([title for title, _ in picked], 3)
    rows = []
    for i, ((title, text), ranked) in enumerate(zip(picked, found.tolist())):
        others = [texts[r] for r in ranked if r >= 0 and r != i]
        negative = others[0] if others else texts[(i + 1) % len(texts)]
        rows.append({"anchor": title, "positive": text, "negative_1": negative})
    return rows


def plain_trainer(rows_path: Path, config) -> tuple[float, int, float]:
    """(seconds, steps, training seconds) of a plain SentenceTransformerTrainer run on the same
    rows; training seconds are ``trainer.train()``'s own, as the Ray side measures them."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.training_args import BatchSamplers

    from customir.models import load_sentence_transformer
    from customir.train.losses import make_loss

    torch.set_num_threads(os.cpu_count())
    started = time.monotonic()
    model = load_sentence_transformer(config.base_model)
    model.max_seq_length = config.max_seq_length
    with tempfile.TemporaryDirectory() as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch, num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
            warmup_ratio=config.warmup_ratio, seed=config.seed, use_cpu=True,
            batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", eval_strategy="no",
            logging_steps=5, report_to="none", dataloader_num_workers=0, disable_tqdm=True)
        trainer = SentenceTransformerTrainer(model=model, args=args,
                                             train_dataset=Dataset.from_parquet(str(rows_path)),
                                             loss=make_loss(model, config))
        training = time.monotonic()
        output = trainer.train()
        trained = time.monotonic()
        model.save(str(Path(scratch) / "final"))
    return time.monotonic() - started, int(output.global_step), trained - training


def bench_config(args):
    from customir.config import TrainConfig

    return TrainConfig(batch_size=args.batch_size, max_seq_length=args.max_seq_length,
                       epochs=1.0, cpus_per_worker=os.cpu_count())


def plain_side(rows_path: Path, args) -> tuple[float, int, float]:
    """:func:`plain_trainer` in a fresh process, as the Ray worker is one: measured here, a
    Ray Train run went 58 → 69 s after the driver itself had trained (and a plain user's
    training runs in a fresh process too)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, __file__, "--plain-side", str(rows_path),
                           "--batch-size", str(args.batch_size),
                           "--max-seq-length", str(args.max_seq_length)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the plain side failed:\n{done.stderr[-2000:]}")
    seconds, steps, train_s = json.loads(done.stdout.strip().splitlines()[-1])
    return seconds, steps, train_s


def ray_trainer(rows_path: Path, config, work: Path) -> tuple[float, dict]:
    """(seconds, metrics) of customir's Ray Train path on the same rows, Ray Train's start-up,
    the final save, report and copy-back included; metrics gain the phases' seconds."""
    from customir.train import trainer

    started, started_at = time.monotonic(), time.time()
    metrics, final = trainer._fit(config, rows_path, None, work / "storage", None,
                                  config.batch_size)
    seconds = time.monotonic() - started
    ended_at = time.time()
    metrics["phases_s"] = {
        "ray_start_s": metrics["loop_started_at"] - started_at,
        "worker_setup_s": metrics["training_started_at"] - metrics["loop_started_at"],
        "train_s": metrics["training_ended_at"] - metrics["training_started_at"],
        "save_report_copy_s": ended_at - metrics["training_ended_at"]}
    shutil.rmtree(work / "storage", ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    return seconds, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs per side, alternated plain-ray, ray-plain, ... (default 2)")
    parser.add_argument("--data", type=Path, default=SCIFACT,
                        help="folder with a BEIR corpus.jsonl (default: SciFact)")
    parser.add_argument("--plain-side", type=Path, help=argparse.SUPPRESS)  # rows to train on
    args = parser.parse_args()
    if args.plain_side:
        print(json.dumps(plain_trainer(args.plain_side, bench_config(args))))
        return

    import pyarrow as pa
    import pyarrow.parquet as pq

    from customir.config import RayConfig
    from customir.runtime import ray_session

    work = scratch_dir("training-bench-")
    rows = scifact_rows(args.data, args.rows)
    rows_path = work / "train_rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), rows_path)
    config = bench_config(args)
    say(f"{len(rows)} rows, batch {args.batch_size}, max_seq_length {args.max_seq_length}, "
        f"{args.rounds} rounds")
    # The cluster is up for both sides, so its idle daemons weigh on both alike; the order
    # alternates (ABBA...) so that a drift in machine speed does not favour one side.
    session = ray_session(RayConfig(num_cpus=os.cpu_count()))  # the product's local cluster
    session.__enter__()
    runs = []  # (round, side, seconds, steps, phases)
    for round_ in range(args.rounds):
        for side in (("plain", "ray") if round_ % 2 == 0 else ("ray", "plain")):
            if side == "plain":
                seconds, steps, train_s = plain_side(rows_path, args)
                phases = {"train_s": train_s}
            else:
                seconds, metrics = ray_trainer(rows_path, config, work)
                steps, phases = metrics["steps"], metrics["phases_s"]
                say(f"ray parallel mode {metrics['parallel_mode']}, worker torch threads "
                    f"{metrics['torch_threads']}, OMP {metrics['omp_num_threads']}")
            say(f"round {round_ + 1} {side}: {seconds:.1f} s, {steps} steps"
                + (" (" + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()) + ")"
                   if phases else ""))
            runs.append((round_ + 1, side, seconds, steps, phases))
    session.__exit__(None, None, None)

    samples = len(rows)
    sides = ("plain", "ray")
    wall = {side: sum(r[2] for r in runs if r[1] == side) for side in sides}
    train = {side: sum(r[4]["train_s"] for r in runs if r[1] == side) for side in sides}
    print(f"{'round':<7}{'side':<7}{'steps':>7}{'wall s':>9}{'train s':>9}{'train/s':>9}"
          "  other ray phases (s)")
    for round_, side, seconds, steps, phases in runs:
        print(f"{round_:<7}{side:<7}{steps:>7}{seconds:>9.1f}{phases['train_s']:>9.1f}"
              f"{samples / phases['train_s']:>9.2f}  "
              + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in phases.items() if k != "train_s"))
    for side in sides:
        print(f"{'all':<7}{side:<7}{'':>7}{wall[side]:>9.1f}{train[side]:>9.1f}"
              f"{samples * args.rounds / train[side]:>9.2f}")
    figures = {"rows": samples, "batch_size": args.batch_size,
               "max_seq_length": args.max_seq_length, "rounds": args.rounds,
               "plain_train_seconds": [round(r[4]["train_s"], 1) for r in runs
                                       if r[1] == "plain"],
               "ray_train_seconds": [round(r[4]["train_s"], 1) for r in runs if r[1] == "ray"],
               "plain_wall_seconds": [round(r[2], 1) for r in runs if r[1] == "plain"],
               "ray_wall_seconds": [round(r[2], 1) for r in runs if r[1] == "ray"],
               "plain_samples_per_s": round(samples * args.rounds / train["plain"], 3),
               "ray_samples_per_s": round(samples * args.rounds / train["ray"], 3),
               "ray_phases_s": [{k: round(v, 1) for k, v in r[4].items()}
                                for r in runs if r[1] == "ray"],
               "ratio_vs_plain_trainer": round(train["plain"] / train["ray"], 3),
               "ratio_vs_plain_trainer_wall": round(wall["plain"] / wall["ray"], 3)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
