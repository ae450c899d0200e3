"""Train stage: ``triples/`` + ``chunks/`` → ``model/`` (a sentence-transformers folder).

Contrastive fine-tuning with the sentence-transformers loss ``train.loss`` names (default
MultipleNegativesRankingLoss: InfoNCE over in-batch negatives plus the mined hard negatives; van
den Oord et al. 2018, Henderson et al. 2017; or its cached variant, or GIST) and its trainer, run
inside a Ray Train ``TorchTrainer``: CPU workers talk gloo (DDP when ``num_workers > 1``), GPU
workers NCCL or DeepSpeed ZeRO. Rank 0 saves the model and reports it as the run's checkpoint;
the driver copies that checkpoint into the stage folder.

The stage folder also keeps ``split.parquet`` (doc_id → split) and the exact training rows, so
evaluation knows which documents are held out and a run can be audited.

This module is the outline (``run`` → ``_fit`` → ``train_loop_per_worker`` on each worker); the
parts live beside it: ``validation`` (evaluator, best-model metric, interval; early stopping
rides on it), ``checkpoints`` (keying, worker scratch, resume), ``deepspeed_config`` and
``curves`` (``curves.json`` + ``curves.png``).
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from customir import storage
from customir.config import RayConfig, TrainConfig
from customir.manifest import Balance, Manifest, find_complete, fingerprint, log, stage_output
from customir.node_files import resolve
from customir.runtime import ray_session
from customir.schemas import CHUNKS, TRIPLES, read_table
from customir.train.checkpoints import (checkpoint_location, latest_checkpoint,
                                        ray_checkpoint_config, restore_best_checkpoint,
                                        resume_point, resumed_step, worker_scratch)
from customir.train.curves import CURVES_FILE, plot_curves
from customir.train.dataset import assign_split, largest_fillable_batch, rows_per_split
from customir.train.deepspeed_config import deepspeed_config, require_deepspeed
from customir.train.validation import BEST_METRIC, validation_evaluator, validation_interval

STAGE = "train"
SPLIT_FILE = "split.parquet"
MODEL_DIR = "model"
FINAL = "final"


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on each Ray Train worker: fit with validation and checkpoints reported to Ray Train;
    rank 0 reports the final (best validated) model as the last checkpoint."""
    import os
    import time

    started = time.time()
    cfg = TrainConfig.model_validate(loop_config["train"])
    if cfg.deepspeed_stage is not None and not cfg.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed is imported
    import ray.train
    import torch
    from datasets import Dataset
    from datasets.table import InMemoryTable
    from ray.train.huggingface.transformers import RayTrainReportCallback
    from sentence_transformers import (SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from transformers import EarlyStoppingCallback

    from customir.models import load_sentence_transformer, offline_environment
    from customir.train.losses import make_loss, with_prefixes
    from customir.train.sampler import GatheredNoDuplicatesBatchSampler

    offline_environment()
    torch.set_num_threads(loop_config["threads"])
    device = "cuda" if cfg.use_gpu else "cpu"
    model = load_sentence_transformer(cfg.base_model, device=device,
                                      trust_remote_code=cfg.trust_remote_code)
    model.max_seq_length = cfg.max_seq_length
    if cfg.dropout is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = cfg.dropout
    guide = (load_sentence_transformer(cfg.base_model, device=device,
                                       trust_remote_code=cfg.trust_remote_code)
             if cfg.loss.value == "gist" else None)
    # the rows come through Ray's object store: this worker's node may not see the run folder
    train_rows = Dataset(InMemoryTable(resolve(loop_config["train_rows"])))
    if cfg.query_prefix or cfg.passage_prefix:
        train_rows = train_rows.map(lambda r: with_prefixes(r, cfg.query_prefix,
                                                            cfg.passage_prefix))
    evaluator = None
    if loop_config["validation_rows"] is not None:
        val_rows = [with_prefixes(r, cfg.query_prefix, cfg.passage_prefix)
                    for r in resolve(loop_config["validation_rows"]).to_pylist()]
        evaluator = validation_evaluator(val_rows, loop_config["batch_size"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if context.get_world_size() == 1 and cfg.deepspeed_stage is None:
        # Alone, the worker needs no gradient all-reduce: without these Ray-set variables the
        # Hugging Face trainer does not wrap the model in a world-size-1 DDP (measured: the
        # training phase of benchmarks/training.py 92.1 → 88.6 s).
        for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
            os.environ.pop(name, None)
    with worker_scratch(loop_config["checkpoints"], rank) as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch, num_train_epochs=cfg.epochs,
            per_device_train_batch_size=loop_config["batch_size"],
            learning_rate=cfg.learning_rate, warmup_ratio=cfg.warmup_ratio, seed=cfg.seed,
            max_steps=cfg.max_steps or -1, use_cpu=not cfg.use_gpu,
            bf16=cfg.use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            # Repeated texts in the gathered batch of a step would be false in-batch negatives.
            batch_sampler=functools.partial(GatheredNoDuplicatesBatchSampler,
                                            world_size=context.get_world_size()),
            eval_strategy="steps" if evaluator else "no", eval_steps=loop_config["eval_steps"],
            save_strategy="steps", save_steps=loop_config["eval_steps"], save_total_limit=2,
            load_best_model_at_end=evaluator is not None,
            metric_for_best_model=BEST_METRIC if evaluator else None, greater_is_better=True,
            deepspeed=(deepspeed_config(cfg.deepspeed_stage)
                       if cfg.deepspeed_stage is not None else None),
            logging_steps=min(5, loop_config["eval_steps"]), report_to="none",
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        callbacks = [RayTrainReportCallback()]  # every save becomes a Ray Train checkpoint
        if evaluator is not None and cfg.patience:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.patience))
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=train_rows, evaluator=evaluator,
            loss=make_loss(model, cfg, guide), callbacks=callbacks)
        resume = resume_point(ray.train.get_checkpoint(), loop_config["checkpoints"],
                              Path(scratch))
        resumed_from = resumed_step(resume)  # read now: Ray prunes old checkpoints as it goes
        resume = restore_best_checkpoint(resume, loop_config["checkpoints"], Path(scratch))
        training = time.time()
        output = trainer.train(resume_from_checkpoint=resume)
        trained = time.time()
        state = trainer.state
        metrics = {"train_loss": float(output.training_loss), "steps": int(output.global_step),
                   "resumed_from_step": resumed_from,
                   "best_step": int(state.best_global_step or output.global_step),
                   "best_validation_ndcg@10": state.best_metric,
                   # Ray keeps checkpoints by this score: the final (best) model ranks with them
                   **({BEST_METRIC: state.best_metric} if evaluator else {}),
                   "stopped_early": output.global_step < state.max_steps, FINAL: True,
                   # wall-clock seconds since the epoch, so the driver can place them in time
                   "loop_started_at": started, "training_started_at": training,
                   "training_ended_at": trained, "torch_threads": torch.get_num_threads(),
                   "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                   "parallel_mode": str(args.parallel_mode.value),
                   # what the Hugging Face trainer actually ran with: its loss, and the
                   # DeepSpeed engine it trained through (trainer.deepspeed, None without)
                   "loss_class": type(trainer.loss).__name__,
                   "deepspeed": trainer.deepspeed is not None,
                   "deepspeed_zero_stage": (trainer.deepspeed.zero_optimization_stage()
                                            if trainer.deepspeed is not None else None)}
        if rank == 0:
            final = Path(scratch) / FINAL
            model.save(str(final / MODEL_DIR))  # the best model when validation ran
            (final / CURVES_FILE).write_text(json.dumps(state.log_history))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(final))
        else:
            ray.train.report(metrics)


def _fit_interruptibly(trainer):
    """``trainer.fit()``, where Ctrl-C stops the run like any other stage: Ray Train's own
    SIGINT handler aborts the workers, then lets the driver carry on (exit 1, no message) and
    stays installed, so a later Ctrl-C in evaluate or export went unheeded. Here the first
    Ctrl-C aborts the workers and raises KeyboardInterrupt once they stopped (the checkpoints
    stay for a rerun to resume from), a second one raises at once; the previous handler comes
    back afterwards."""
    import signal
    import threading

    import ray

    interrupted: list[bool] = []

    def register(controller) -> None:  # replaces DataParallelTrainer._register_sigint_handler
        def on_sigint(signum, frame):
            if interrupted:
                raise KeyboardInterrupt
            interrupted.append(True)
            log("train: interrupted; stopping the workers (Ctrl-C again to stop at once)")
            try:
                ray.get(controller.abort.remote())
            except ray.exceptions.RayActorError:
                pass  # the controller already ended

        signal.signal(signal.SIGINT, on_sigint)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    trainer._register_sigint_handler = register
    try:
        result = trainer.fit()
    except Exception:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
    return result


def _fit(config: TrainConfig, train_rows: Path, val_rows: Path | None, location: str,
         ray_config: RayConfig | None, batch_size: int) -> tuple[dict, Path]:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resume = latest_checkpoint(location)
    if resume:
        log(f"train: resuming from {resume} (step {resumed_step(resume)})")
    with ray_session(ray_config):
        import ray

        cpus = config.cpus_per_worker or max(
            1, int(ray.cluster_resources().get("CPU", 1)) // config.num_workers)
        filesystem, path = storage.resolve(location)
        if not storage.is_uri(location):
            filesystem = None  # Ray Train's own local handling
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"train": config.model_dump(mode="json"),
                               "train_rows": ray.put(pq.read_table(train_rows)),
                               "validation_rows": (ray.put(pq.read_table(val_rows))
                                                   if val_rows else None),
                               "threads": cpus, "batch_size": batch_size,
                               "checkpoints": location,
                               "eval_steps": (validation_interval(config, train_rows, batch_size)
                                              if val_rows else config.eval_steps)},
            scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                         resources_per_worker={"CPU": cpus}),
            torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
            run_config=RunConfig(storage_path=path, storage_filesystem=filesystem, name="train",
                                 checkpoint_config=ray_checkpoint_config(val_rows is not None),
                                 failure_config=FailureConfig(max_failures=config.max_failures)),
        )
        result = _fit_interruptibly(trainer)
        if result.checkpoint is None or not (result.metrics or {}).get(FINAL):
            raise RuntimeError(f"training reported no final model (error: {result.error})")
        local = Path(tempfile.mkdtemp(prefix="customir-model-"))
        result.checkpoint.to_directory(str(local))
        return dict(result.metrics), local


def run(triples_dir: str | Path, chunks_dir: str | Path, run_dir: str | Path,
        config: TrainConfig, ray_config: RayConfig | None = None, *,
        checkpoint_root: str | None = None) -> Manifest:
    """Write ``run_dir/train``. Checkpoints go to ``config.checkpoint_storage``, else
    ``checkpoint_root`` (a remote run folder's ``.ray``), else ``run_dir/.ray``."""
    triples_dir, chunks_dir, run_dir = (Path(p).resolve()
                                        for p in (triples_dir, chunks_dir, run_dir))
    out = run_dir / "train"
    inputs = {"triples": fingerprint(triples_dir), "chunks": fingerprint(chunks_dir)}
    if done := find_complete(out, config.config_hash(), inputs):
        log("train: up to date, skipping")
        return done
    started = time.monotonic()  # the manifest records the stage's whole wall time
    require_deepspeed(config)
    location = checkpoint_location(config.checkpoint_storage or checkpoint_root or
                                   run_dir / ".ray", config, inputs)
    try:
        storage.resolve(location)
    except storage.location_errors() as exc:
        raise ValueError(f"train.checkpoint_storage {config.checkpoint_storage!r} is not a "
                         f"usable location: {exc}") from None
    chunks = read_table(chunks_dir, CHUNKS).select(["chunk_id", "doc_id", "text"]).to_pydict()
    chunk_text = dict(zip(chunks["chunk_id"], chunks["text"]))
    chunk_doc = dict(zip(chunks["chunk_id"], chunks["doc_id"]))
    docs = sorted(set(chunks["doc_id"]))
    split_of = {d: assign_split(d, config.split, config.seed) for d in docs}
    triples = read_table(triples_dir, TRIPLES).to_pylist()
    n_read = len(triples)
    missing = sorted({t["chunk_id"] for t in triples} - chunk_doc.keys())
    if missing:  # not bad rows: --chunks is another run's folder
        raise ValueError(f"train: {len(missing)} positive chunk ids of the triples are not in "
                         f"{chunks_dir} (e.g. {missing[0]!r}); give the chunks folder the "
                         "triples were made from")
    if config.query_kinds is not None:
        present = Counter(t["kind"] for t in triples)
        triples = [t for t in triples if t["kind"] in set(config.query_kinds)]
        if not triples:
            raise ValueError(f"train.query_kinds {config.query_kinds} matches none of the "
                             f"{n_read} queries (kinds present: {dict(present)})")
    with stage_output(out, STAGE, config.config_hash(), inputs, started) as (tmp, manifest):
        pq.write_table(pa.table({"doc_id": docs, "split": [split_of[d] for d in docs]}),
                       tmp / SPLIT_FILE)
        split_rows, fills, unused = rows_per_split(triples, chunk_text, chunk_doc, split_of,
                                                   config.hard_negatives, config.seed)
        if unused["validation_too_few_negatives"]:
            log("train: no validation, its documents cannot give every query "
                f"{config.hard_negatives} negatives from another document; training without it")
        paths, sizes = {}, {}
        for split, rows in split_rows.items():
            sizes[split] = len(rows)
            if rows:
                paths[split] = tmp / f"{split}_rows.parquet"
                pq.write_table(pa.Table.from_pylist(rows), paths[split])
        train_rows = split_rows["train"]
        if "train" not in paths:
            raise ValueError("no training rows: the train split has no queries "
                             "(check the split fractions and the generate stage's output)")
        held_out = (len(triples) - sizes["train"] - sizes["validation"]
                    - sum(unused.values()))
        log(f"train: {sizes['train']} rows ({fills} random-negative fills), "
            f"{sizes['validation']} validation, {held_out} test queries held out")
        # Small or repetitive training sets cannot fill a no-duplicates batch; without this the
        # run would silently make zero steps (see largest_fillable_batch).
        # Every step's N worker batches are drawn as one duplicate-free batch (train.sampler).
        step_rows = largest_fillable_batch(train_rows, config.batch_size * config.num_workers,
                                           seed=config.seed)
        batch_size = max(1, step_rows // config.num_workers)
        if batch_size < config.batch_size:
            log(f"train: the {sizes['train']} rows fill steps of at most {step_rows} distinct "
                f"texts; batch size per worker lowered from {config.batch_size}")
        metrics, final = _fit(config, paths["train"], paths.get("validation"), location,
                              ray_config, batch_size)
        if not metrics.get("steps"):
            raise RuntimeError(f"training made no optimizer step ({sizes['train']} rows, "
                               f"batch size {batch_size})")
        shutil.move(str(final / MODEL_DIR), str(tmp / MODEL_DIR))
        curves = json.loads((final / CURVES_FILE).read_text())
        (tmp / CURVES_FILE).write_text(json.dumps(curves, indent=1))
        plot_curves(curves, tmp / "curves.png")
        shutil.rmtree(final, ignore_errors=True)
        skipped = {"validation": sizes["validation"], "test": held_out,
                   "kind_not_trained": n_read - len(triples), **unused}
        manifest.balances["queries"] = Balance(n_read, sizes["train"],
                                               {k: v for k, v in skipped.items() if v})
        manifest.extra.update({"metrics": metrics, "random_negative_fills": fills,
                               "batch_size": batch_size,
                               "documents_per_split": dict(Counter(split_of.values())),
                               "base_model": config.base_model})
    storage.delete_dir(location)  # checkpoints are only for resuming this run
    log(f"train: done {metrics}")
    return manifest
