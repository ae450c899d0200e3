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

import contextlib
import functools
import hashlib
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
from customir.train.dataset import assign_split, largest_fillable_batch, rows_per_split

STAGE = "train"
SPLIT_FILE = "split.parquet"
MODEL_DIR = "model"


BEST_METRIC = "eval_validation_cosine_ndcg@10"
CURVES_FILE = "curves.json"
FINAL = "final"


def validation_evaluator(rows: list[dict], batch_size: int):
    """IR metrics on the validation rows: each query against every validation passage (its
    positive and everyone's negatives), nDCG@10 as the primary score."""
    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator)

    passages = sorted({r["positive"] for r in rows} |
                      {v for r in rows for k, v in r.items() if k.startswith("negative_")})
    pid = {p: f"p{i}" for i, p in enumerate(passages)}
    queries, relevant = {}, {}
    for r in rows:
        qid = queries.setdefault(r["anchor"], f"q{len(queries)}")
        relevant.setdefault(qid, set()).add(pid[r["positive"]])
    return InformationRetrievalEvaluator(
        queries={qid: q for q, qid in queries.items()}, corpus={v: k for k, v in pid.items()},
        relevant_docs=relevant, name="validation", batch_size=batch_size, write_csv=False,
        ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[10],
        map_at_k=[100])


def deepspeed_config(stage: int) -> dict:
    """ZeRO at ``stage``; sizes, clipping and precision follow the Hugging Face arguments."""
    return {"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": "auto",
            "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto", "bf16": {"enabled": "auto"}}


def worker_scratch_path(location: str | Path, rank: int) -> Path:
    """The worker's scratch folder on its node, named by the run's checkpoint location and the
    worker's rank (see ``worker_scratch``)."""
    name = hashlib.sha256(str(location).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"customir-train-{name}-rank{rank}"


@contextlib.contextmanager
def worker_scratch(location: str | Path, rank: int):
    """The folder where a worker's Hugging Face trainer saves its checkpoints (~270 MB each for
    MiniLM with its optimizer state): a worker restarted after its process was killed first
    removes what the killed one left, and a worker that ends removes its own."""
    path = worker_scratch_path(location, rank)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield str(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


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


DEEPSPEED_INSTALL = "pip install 'customir[deepspeed]'"


def require_deepspeed(config: TrainConfig) -> None:
    """Fail before any work when DeepSpeed is asked for but missing (inside the Ray workers it
    would surface as a worker traceback)."""
    import importlib.util

    if config.deepspeed_stage is not None and importlib.util.find_spec("deepspeed") is None:
        raise ImportError(f"train.deepspeed_stage needs DeepSpeed: {DEEPSPEED_INSTALL}")


def validation_interval(config: TrainConfig, train_rows: Path, batch_size: int) -> int:
    """``eval_steps``, shortened so that a short run is still validated (and checkpointed) at
    least 4 times (without validation rows checkpoints keep the configured interval)."""
    import math

    import pyarrow.parquet as pq

    rows = pq.ParquetFile(train_rows).metadata.num_rows
    total = config.max_steps or math.ceil(
        math.ceil(rows / (batch_size * config.num_workers)) * config.epochs)
    return max(1, min(config.eval_steps, total // 4))


def resume_point(ray_checkpoint, location: str, scratch: Path) -> str | None:
    """The local Hugging Face checkpoint folder to resume from: the further on of the latest
    checkpoint Ray Train handed this worker and the newest one registered in the storage
    ``location`` (by an interrupted earlier run); checkpoints in cloud storage are downloaded
    into ``scratch`` first."""
    import pyarrow.fs as pafs

    registered = None
    if ray_checkpoint is not None:
        if isinstance(ray_checkpoint.filesystem, pafs.LocalFileSystem):
            folder = Path(ray_checkpoint.path) / "checkpoint"
        else:
            folder = Path(ray_checkpoint.to_directory(str(scratch / "resume"))) / "checkpoint"
        if (folder / "trainer_state.json").is_file():
            registered = str(folder)
    newest = latest_checkpoint(location)
    if newest and (registered is None or resumed_step(newest) > resumed_step(registered)):
        return str(storage.download(newest, scratch / "resume-newest"))
    return registered


def resumed_step(resume: str | None) -> int:
    if not resume:
        return 0
    state = storage.read_text(storage.join(resume, "trainer_state.json"))
    return int(json.loads(state)["global_step"])


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's list of registered checkpoints


def registered_checkpoints(location: str | Path) -> list[str]:
    """The Hugging Face checkpoints that a run reported into ``location`` (a local path or a
    cloud URI) and Ray Train registered (listed in its checkpoint manager's snapshot), oldest
    first: a folder a worker was killed while writing is never used. Ray Train names checkpoint
    folders by time, so names sort by age."""
    root = storage.join(location, "train")
    try:
        snapshot = json.loads(storage.read_text(storage.join(root, RAY_SNAPSHOT)))
        names = sorted(r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"])
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or not a format we know
        return []
    folders = [storage.join(root, name, "checkpoint") for name in names]
    return [f for f in folders if storage.exists(storage.join(f, "trainer_state.json"))]


def latest_checkpoint(location: str | Path) -> str | None:
    """The newest registered checkpoint in ``location`` (see ``registered_checkpoints``)."""
    return next(reversed(registered_checkpoints(location)), None)


def restore_best_checkpoint(resume: str | None, location: str, scratch: Path) -> str | None:
    """The folder to resume from, with the best checkpoint its state names put back.

    A Hugging Face state names its best checkpoint by a folder in the scratch of the worker
    that saved it, which a restarted worker has removed: the trainer would drop it and end on
    the last step's model instead of the best validated one. The registered checkpoint of the
    best step is copied to ``scratch/checkpoint-<step>``, and the trainer resumes from a copy of
    the state that names it there."""
    if not resume:
        return resume
    state = json.loads(storage.read_text(storage.join(resume, "trainer_state.json")))
    step = state.get("best_global_step")
    if not state.get("best_model_checkpoint") or step is None:
        return resume
    best = next((c for c in registered_checkpoints(location) if resumed_step(c) == step),
                resume if state["global_step"] == step else None)
    if best is None:  # Ray keeps the best-scored checkpoints, so only a foreign folder lacks it
        log(f"train: the best checkpoint (step {step}) is gone; the model published will be the "
            "best of the steps still to run")
        return resume
    target = scratch / f"checkpoint-{step}"
    _copy_folder(best, target)
    if not Path(resume).is_relative_to(scratch):  # never edit a registered checkpoint
        _copy_folder(resume, scratch / "resume-state")
        resume = str(scratch / "resume-state")
    state["best_model_checkpoint"] = str(target)
    Path(resume, "trainer_state.json").write_text(json.dumps(state, indent=2))
    return resume


def _copy_folder(source: str, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    if storage.is_uri(source):
        storage.download(source, target)
    else:
        shutil.copytree(source, target)


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
                                 checkpoint_config=_checkpoint_config(val_rows is not None),
                                 failure_config=FailureConfig(max_failures=config.max_failures)),
        )
        result = trainer.fit()
        if result.checkpoint is None or not (result.metrics or {}).get(FINAL):
            raise RuntimeError(f"training reported no final model (error: {result.error})")
        local = Path(tempfile.mkdtemp(prefix="customir-model-"))
        result.checkpoint.to_directory(str(local))
        return dict(result.metrics), local


def _checkpoint_config(validated: bool):
    """Ray Train keeps the newest checkpoint and, with validation, the best-scored ones (the
    best model must outlive a restart that resumes from the newest)."""
    from ray.train import CheckpointConfig

    if not validated:
        return CheckpointConfig(num_to_keep=3)
    return CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=BEST_METRIC,
                            checkpoint_score_order="max")


def checkpoint_location(root: str | Path, config: TrainConfig, inputs: dict[str, str]) -> str:
    """This run's checkpoint folder under ``root``: one per settings *and* inputs, so a resume
    never continues a model that was trained with other settings or on other triples."""
    key = json.dumps([config.config_hash(), inputs], sort_keys=True)
    return storage.join(root, hashlib.sha256(key.encode()).hexdigest()[:16])


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


def plot_curves(log_history: list[dict], path: Path) -> None:
    """Training loss and validation nDCG@10 by step (the report shows this figure)."""
    from matplotlib.figure import Figure  # not pyplot: its backend is the caller's to choose

    loss = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    ndcg = [(e["step"], e[BEST_METRIC]) for e in log_history if BEST_METRIC in e]
    fig = Figure(figsize=(6, 3.5))
    left = fig.subplots()
    if loss:  # with a marker: a run that logged its loss once still shows a point
        left.plot(*zip(*loss), color="tab:blue", marker="o", markersize=3, label="training loss")
    else:
        left.text(0.5, 0.5, "no loss logged", transform=left.transAxes, ha="center",
                  va="center", color="tab:gray")
    left.set_xlabel("step")
    left.set_ylabel("training loss", color="tab:blue")
    if ndcg:
        right = left.twinx()
        right.plot(*zip(*ndcg), color="tab:orange", marker="o", label="validation nDCG@10")
        right.set_ylabel("validation nDCG@10", color="tab:orange")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
