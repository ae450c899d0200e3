"""Train stage: ``triples/`` + ``chunks/`` → ``model/`` (a sentence-transformers folder).

Contrastive fine-tuning with sentence-transformers' MultipleNegativesRankingLoss (InfoNCE over
in-batch negatives plus the mined hard negatives; van den Oord et al. 2018, Henderson et al.
2017) and its trainer, run inside a Ray Train ``TorchTrainer``: CPU workers talk gloo (DDP when
``num_workers > 1``). Rank 0 saves the model and reports it as the run's checkpoint; the driver
copies that checkpoint into the stage folder.

The stage folder also keeps ``split.parquet`` (doc_id → split) and the exact training rows, so
evaluation knows which documents are held out and a run can be audited.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from customir.config import RayConfig, TrainConfig
from customir.manifest import Balance, Manifest, find_complete, fingerprint, log, stage_output
from customir.runtime import ray_session
from customir.schemas import CHUNKS, TRIPLES, read_table
from customir.train.dataset import assign_split, build_training_rows, largest_fillable_batch

STAGE = "train"
SPLIT_FILE = "split.parquet"
MODEL_DIR = "model"


def validation_top1(model, rows: list[dict]) -> float:
    """Share of validation queries whose positive ranks first among all validation passages.

    (Inside Ray Train the sentence-transformers trainer reports no eval loss, and a ranking
    figure says more about retrieval than a loss does.)
    """
    import numpy as np

    passages = sorted({r["positive"] for r in rows} |
                      {v for r in rows for k, v in r.items() if k.startswith("negative_")})
    index = {p: i for i, p in enumerate(passages)}
    queries = model.encode([r["anchor"] for r in rows], normalize_embeddings=True)
    corpus = model.encode(passages, normalize_embeddings=True)
    best = np.argmax(queries @ corpus.T, axis=1)
    return float(np.mean([best[i] == index[r["positive"]] for i, r in enumerate(rows)]))


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on each Ray Train worker: fit the model, rank 0 saves and reports it."""
    import ray.train
    import torch

    from customir.models import load_sentence_transformer, offline_environment

    offline_environment()
    torch.set_num_threads(loop_config["threads"])
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    cfg = TrainConfig.model_validate(loop_config["train"])
    model = load_sentence_transformer(cfg.base_model)
    model.max_seq_length = cfg.max_seq_length
    train_rows = Dataset.from_parquet(loop_config["train_rows"])
    val_path = loop_config["validation_rows"]
    val_rows = Dataset.from_parquet(val_path) if val_path else None
    with tempfile.TemporaryDirectory() as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch, num_train_epochs=cfg.epochs,
            per_device_train_batch_size=loop_config["batch_size"],
            learning_rate=cfg.learning_rate,
            warmup_ratio=cfg.warmup_ratio, seed=cfg.seed, max_steps=cfg.max_steps or -1,
            use_cpu=not torch.cuda.is_available(),
            # Repeated texts in one batch would be false in-batch negatives.
            batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", eval_strategy="no",
            logging_steps=5, report_to="none", dataloader_num_workers=0, disable_tqdm=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=train_rows,
            loss=MultipleNegativesRankingLoss(model))
        output = trainer.train()
        metrics = {"train_loss": float(output.training_loss), "steps": int(output.global_step)}
        if val_rows is not None:
            metrics["validation_top1"] = validation_top1(model, val_rows.to_list())
        if ray.train.get_context().get_world_rank() == 0:
            model_dir = Path(scratch) / "final"
            model.save(str(model_dir))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(model_dir))
        else:
            ray.train.report(metrics)


def _fit(config: TrainConfig, train_rows: Path, val_rows: Path | None, storage: Path,
         ray_config: RayConfig | None, batch_size: int) -> tuple[dict, Path]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    with ray_session(ray_config):
        import ray

        cpus = config.cpus_per_worker or max(
            1, int(ray.cluster_resources().get("CPU", 1)) // config.num_workers)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"train": config.model_dump(mode="json"),
                               "train_rows": str(train_rows),
                               "validation_rows": str(val_rows) if val_rows else None,
                               "threads": cpus, "batch_size": batch_size},
            scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=False,
                                         resources_per_worker={"CPU": cpus}),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RunConfig(storage_path=str(storage), name="train"),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"training reported no checkpoint (error: {result.error})")
        local = Path(tempfile.mkdtemp(prefix="customir-model-"))
        result.checkpoint.to_directory(str(local))
        return dict(result.metrics or {}), local


def run(triples_dir: str | Path, chunks_dir: str | Path, run_dir: str | Path,
        config: TrainConfig, ray_config: RayConfig | None = None) -> Manifest:
    triples_dir, chunks_dir, run_dir = (Path(p).resolve()
                                        for p in (triples_dir, chunks_dir, run_dir))
    out = run_dir / "train"
    inputs = {"triples": fingerprint(triples_dir), "chunks": fingerprint(chunks_dir)}
    if done := find_complete(out, config.config_hash(), inputs):
        log("train: up to date, skipping")
        return done
    chunks = read_table(chunks_dir, CHUNKS).select(["chunk_id", "doc_id", "text"]).to_pydict()
    chunk_text = dict(zip(chunks["chunk_id"], chunks["text"]))
    chunk_doc = dict(zip(chunks["chunk_id"], chunks["doc_id"]))
    docs = sorted(set(chunks["doc_id"]))
    split_of = {d: assign_split(d, config.split, config.seed) for d in docs}
    triples = read_table(triples_dir, TRIPLES).to_pylist()
    with stage_output(out, STAGE, config.config_hash(), inputs) as (tmp, manifest):
        pq.write_table(pa.table({"doc_id": docs, "split": [split_of[d] for d in docs]}),
                       tmp / SPLIT_FILE)
        paths, sizes, fills = {}, {}, 0
        for split in ("train", "validation"):
            allowed = {d for d, s in split_of.items() if s == split}
            rows, n_fill = build_training_rows(triples, chunk_text, chunk_doc, allowed,
                                               config.hard_negatives, config.seed)
            if split == "train":
                train_rows = rows
            fills += n_fill if split == "train" else 0
            sizes[split] = len(rows)
            if rows:
                paths[split] = tmp / f"{split}_rows.parquet"
                pq.write_table(pa.Table.from_pylist(rows), paths[split])
        if "train" not in paths:
            raise ValueError("no training rows: the train split has no queries "
                             "(check the split fractions and the generate stage's output)")
        held_out = len(triples) - sizes["train"] - sizes["validation"]
        log(f"train: {sizes['train']} rows ({fills} random-negative fills), "
            f"{sizes['validation']} validation, {held_out} test queries held out")
        # Small or repetitive training sets cannot fill a no-duplicates batch; without this the
        # run would silently make zero steps (see largest_fillable_batch).
        batch_size = largest_fillable_batch(train_rows, config.batch_size, seed=config.seed)
        if batch_size < config.batch_size:
            log(f"train: the {sizes['train']} rows fill batches of at most {batch_size} distinct "
                f"texts; batch size lowered from {config.batch_size}")
        metrics, model = _fit(config, paths["train"], paths.get("validation"), run_dir / ".ray",
                              ray_config, batch_size)
        if not metrics.get("steps"):
            raise RuntimeError(f"training made no optimizer step ({sizes['train']} rows, "
                               f"batch size {batch_size})")
        shutil.move(str(model), str(tmp / MODEL_DIR))
        manifest.balances["queries"] = Balance(len(triples), sizes["train"],
                                               {"validation": sizes["validation"],
                                                "test": held_out})
        manifest.extra.update({"metrics": metrics, "random_negative_fills": fills,
                               "batch_size": batch_size,
                               "documents_per_split": dict(Counter(split_of.values())),
                               "base_model": config.base_model})
    log(f"train: done {metrics}")
    return manifest
