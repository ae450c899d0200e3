"""Training throughput: customir's Ray Train path (1 worker) vs a plain SentenceTransformerTrainer
on the same rows, in the same run.

    python benchmarks/training.py [--rows 512] [--batch-size 32] [--max-seq-length 128]

Rows are SciFact-derived (title → abstract, one BM25 hard negative from bm25s, the abstract's own
document excluded); no test query is read. Both sides train MiniLM for one epoch with the same
loss (MNRL, no-duplicates batches), batch size, sequence length, learning rate and seed:

- ray: ``customir.train.trainer._fit`` on a running local Ray cluster — a ``TorchTrainer`` with one
  worker holding all CPUs, the stage's training arguments, checkpoints every ``eval_steps`` (50)
  reported to Ray Train, the final model reported and copied back — timed from call to return
  (Ray Train's start-up included);
- plain: ``SentenceTransformerTrainer`` in this process, timed from model load to saved model.

The last line is one JSON object with ``ratio_vs_plain_trainer`` (ray samples/s / plain samples/s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import SCIFACT, logger  # noqa: E402  (sets up sys.path and env)

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


def plain_trainer(rows_path: Path, config) -> tuple[float, int]:
    """(seconds, steps) of a plain SentenceTransformerTrainer run on the same rows."""
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
        output = trainer.train()
        model.save(str(Path(scratch) / "final"))
    return time.monotonic() - started, int(output.global_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--data", type=Path, default=SCIFACT,
                        help="folder with a BEIR corpus.jsonl (default: SciFact)")
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from customir.config import TrainConfig
    from customir.runtime import WORKER_ENV
    from customir.train import trainer

    work = Path(tempfile.mkdtemp(prefix="training-bench-"))
    rows = scifact_rows(args.data, args.rows)
    rows_path = work / "train_rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), rows_path)
    config = TrainConfig(batch_size=args.batch_size, max_seq_length=args.max_seq_length,
                         epochs=1.0, cpus_per_worker=os.cpu_count())
    say(f"{len(rows)} rows, batch {args.batch_size}, max_seq_length {args.max_seq_length}")

    plain_s, plain_steps = plain_trainer(rows_path, config)
    say(f"plain: {plain_s:.1f} s, {plain_steps} steps")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": dict(WORKER_ENV)})
    started, started_at = time.monotonic(), time.time()
    metrics, final = trainer._fit(config, rows_path, None, work / "storage", None,
                                  args.batch_size)
    ray_s = time.monotonic() - started
    ended_at = time.time()
    phases = {"ray_start_s": metrics["loop_started_at"] - started_at,
              "worker_setup_s": metrics["training_started_at"] - metrics["loop_started_at"],
              "train_s": metrics["training_ended_at"] - metrics["training_started_at"],
              "save_report_copy_s": ended_at - metrics["training_ended_at"]}
    say("ray phases: " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
        + f"; worker torch threads {metrics['torch_threads']}, OMP {metrics['omp_num_threads']}")
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    say(f"ray: {ray_s:.1f} s, {metrics['steps']} steps")

    samples = len(rows)
    figures = {"rows": samples, "batch_size": args.batch_size,
               "max_seq_length": args.max_seq_length,
               "plain_seconds": round(plain_s, 1), "plain_steps": plain_steps,
               "plain_samples_per_s": round(samples / plain_s, 3),
               "ray_seconds": round(ray_s, 1), "ray_steps": metrics["steps"],
               "ray_samples_per_s": round(samples / ray_s, 3),
               "ray_phases_s": {k: round(v, 1) for k, v in phases.items()},
               "ratio_vs_plain_trainer": round(plain_s / ray_s, 3)}
    print(f"{'side':<8}{'steps':>7}{'seconds':>10}{'samples/s':>11}")
    print(f"{'plain':<8}{plain_steps:>7}{plain_s:>10.1f}{samples / plain_s:>11.2f}")
    print(f"{'ray':<8}{metrics['steps']:>7}{ray_s:>10.1f}{samples / ray_s:>11.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
