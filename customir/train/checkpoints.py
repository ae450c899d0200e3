"""Checkpoints of the train stage, so a killed worker or an interrupted run resumes instead of
starting over.

Each run reports its Hugging Face checkpoints to Ray Train under one storage location (a local
path or a cloud URI) keyed by its settings and inputs (``checkpoint_location``); a worker saves
into a scratch folder of its own (``worker_scratch``). On a restart, ``resume_point`` picks the
furthest registered checkpoint and ``restore_best_checkpoint`` puts back the best validated one
its state names, so the published model is still the best step's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from customir import storage
from customir.config import TrainConfig
from customir.manifest import log
from customir.train.validation import BEST_METRIC

RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's list of registered checkpoints


def checkpoint_location(root: str | Path, config: TrainConfig, inputs: dict[str, str]) -> str:
    """This run's checkpoint folder under ``root``: one per settings *and* inputs, so a resume
    never continues a model that was trained with other settings or on other triples."""
    key = json.dumps([config.config_hash(), inputs], sort_keys=True)
    return storage.join(root, hashlib.sha256(key.encode()).hexdigest()[:16])


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


def ray_checkpoint_config(validated: bool):
    """Ray Train keeps the newest checkpoint and, with validation, the best-scored ones (the
    best model must outlive a restart that resumes from the newest)."""
    from ray.train import CheckpointConfig

    if not validated:
        return CheckpointConfig(num_to_keep=3)
    return CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=BEST_METRIC,
                            checkpoint_score_order="max")
