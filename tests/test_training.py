"""The train stage on a real local Ray cluster with the real MiniLM: validation with IR metrics,
early stopping to the best checkpoint, curves, resume after a kill, 2 workers = 1 worker, the
losses, DeepSpeed ZeRO-2 on CPU workers."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from customir.config import (GenerateConfig, IngestConfig, LLMConfig, MineConfig, TrainConfig,
                             VerifyConfig)
from customir import storage
from customir.corpus import ingest
from customir.manifest import Manifest, fingerprint
from customir.negatives import mine, verify
from customir.queries import generate
from customir.train import checkpoints, trainer
from customir.train.curves import CURVES_FILE
from customir.train.validation import BEST_METRIC, validation_evaluator

pytestmark = pytest.mark.ray
SAMPLE = Path(__file__).parent.parent / "examples" / "sample_corpus" / "abstracts.jsonl"
SMALL = dict(max_seq_length=48, batch_size=8, split=(0.75, 0.25, 0.0), seed=3)


@pytest.fixture(scope="module")
def triples(tmp_path_factory, ray_cluster):
    """Title → abstract pairs of 120 sample abstracts with one BM25 negative each (no LLM)."""
    root = tmp_path_factory.mktemp("train")
    (root / "corpus").mkdir()
    lines = SAMPLE.read_text().splitlines()[:120]
    (root / "corpus" / "abstracts.jsonl").write_text("\n".join(lines) + "\n")
    run = root / "run"
    ingest.run(root / "corpus", run, IngestConfig())
    generate.run(run / "chunks", run, GenerateConfig(llm=LLMConfig(backend="scripted"), kinds={},
                                                     multihop=0.0, dedup_cosine=None))
    mine.run(run / "queries", run / "chunks", run, MineConfig(num_negatives=2))
    verify.run(run / "candidates", run / "chunks", run, VerifyConfig(enabled=False))
    return run


def _train(run, tmp_path, **settings):
    out = tmp_path / "run"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("triples", "chunks"):
        if not (out / name).exists():
            (out / name).symlink_to(run / name)
    manifest = trainer.run(out / "triples", out / "chunks", out,
                           TrainConfig(**{**SMALL, **settings}))
    return manifest, out / "train"


def _inputs(out):
    """The train stage's inputs, as its manifest and checkpoint folder name them."""
    return {"triples": fingerprint(out / "triples"), "chunks": fingerprint(out / "chunks")}


def _weights(model_dir):
    from safetensors.numpy import load_file

    return load_file(str(next(Path(model_dir).rglob("model.safetensors"))))


def test_validation_keeps_the_best_model_and_writes_curves(triples, tmp_path):
    manifest, out = _train(triples, tmp_path, eval_steps=3, max_steps=12, patience=None,
                           learning_rate=2e-4)
    metrics = manifest.extra["metrics"]
    assert metrics["steps"] == 12 and metrics["best_step"] in (3, 6, 9, 12)
    curves = json.loads((out / CURVES_FILE).read_text())
    evals = {e["step"]: e[BEST_METRIC] for e in curves if BEST_METRIC in e}
    assert sorted(evals) == [3, 6, 9, 12] and any("loss" in e for e in curves)
    assert metrics["best_validation_ndcg@10"] == pytest.approx(max(evals.values()))
    assert evals[metrics["best_step"]] == max(evals.values())
    assert (out / "curves.png").stat().st_size > 1000
    # the saved model is the best one: it scores the best nDCG@10 on the validation rows
    assert _validation_ndcg(out) == pytest.approx(max(evals.values()), abs=1e-4)


def _validation_ndcg(train_dir):
    """nDCG@10 of the published model on the stage's validation rows."""
    import pyarrow.parquet as pq

    from customir.models import load_sentence_transformer

    rows = pq.read_table(train_dir / "validation_rows.parquet").to_pylist()
    model = load_sentence_transformer(train_dir / trainer.MODEL_DIR)
    model.max_seq_length = SMALL["max_seq_length"]
    return validation_evaluator(rows, 8)(model)["validation_cosine_ndcg@10"]


def test_early_stopping_ends_a_run_that_gets_worse(triples, tmp_path):
    # a learning rate this large wrecks the model after its first validation
    manifest, _ = _train(triples, tmp_path, eval_steps=2, max_steps=30, patience=1,
                         learning_rate=5e-3, warmup_ratio=0.0)  # validated every 2 steps
    metrics = manifest.extra["metrics"]
    assert metrics["stopped_early"] and metrics["steps"] < 30
    assert metrics["best_step"] < metrics["steps"]


def test_two_workers_match_one_worker_on_the_same_global_batch(triples, tmp_path):
    # no validation split: the final model is the last step's; no hard negatives: the
    # no-duplicates sampler then fills the 8-row batch and the two 4-row halves identically;
    # no dropout: its random masks would differ between one and two processes
    same = dict(max_steps=3, split=(1.0, 0.0, 0.0), learning_rate=1e-4, hard_negatives=0,
                dropout=0.0)
    one, out_one = _train(triples, tmp_path / "one", batch_size=8, num_workers=1,
                          cpus_per_worker=2, **same)
    two, out_two = _train(triples, tmp_path / "two", batch_size=4, num_workers=2,
                          cpus_per_worker=1, **same)
    losses = [[e["loss"] for e in json.loads((o / CURVES_FILE).read_text()) if "loss" in e]
              for o in (out_one, out_two)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    # one worker trains without a DDP wrapper; two synchronise their gradients through DDP
    assert one.extra["metrics"]["parallel_mode"] == "not_parallel"
    assert two.extra["metrics"]["parallel_mode"] == "distributed"
    a, b = _weights(out_one / trainer.MODEL_DIR), _weights(out_two / trainer.MODEL_DIR)
    base = _weights(Path(__import__("customir.models", fromlist=["x"]).resolve_base_model(
        "all-MiniLM-L6-v2")))
    moved = np.sqrt(sum(float(np.sum((a[k] - base[k]) ** 2)) for k in a))
    apart = np.sqrt(sum(float(np.sum((a[k] - b[k]) ** 2)) for k in a))
    assert moved > 1e-3  # training changed the weights ...
    # ... the same way, up to floating-point noise (Adam's first steps are ~lr * sign(grad),
    # so a weight whose gradient is ~0 may move either way: compare norms, not single weights)
    assert apart < moved / 100, (apart, moved)


@pytest.mark.parametrize("loss", ["cached_mnrl", "gist"])
def test_other_losses_train(triples, tmp_path, loss):
    manifest, _ = _train(triples, tmp_path, loss=loss, mini_batch_size=4, eval_steps=2,
                         max_steps=2, temperature=0.02)
    metrics = manifest.extra["metrics"]
    assert metrics["steps"] == 2
    # the Hugging Face trainer ran with the configured loss, not the default MNRL
    assert metrics["loss_class"] == {"cached_mnrl": "CachedMultipleNegativesRankingLoss",
                                     "gist": "GISTEmbedLoss"}[loss]
    assert metrics["deepspeed"] is False


def test_deepspeed_zero2_on_two_cpu_workers(triples, tmp_path):
    pytest.importorskip("deepspeed")
    manifest, out = _train(triples, tmp_path, deepspeed_stage=2, num_workers=2,
                           cpus_per_worker=1, batch_size=4, eval_steps=2, max_steps=2)
    metrics = manifest.extra["metrics"]
    assert metrics["steps"] == 2
    # the trainer really ran under DeepSpeed ZeRO-2 (not a silent fallback to plain DDP)
    assert metrics["deepspeed"] is True and metrics["deepspeed_zero_stage"] == 2
    assert metrics["loss_class"] == "MultipleNegativesRankingLoss"
    assert (out / trainer.MODEL_DIR / "config.json").is_file()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_training_resumes_from_its_last_checkpoint(triples, tmp_path, where, request):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("triples", "chunks"):
        (out / name).symlink_to(triples / name)
    # checkpoints at steps 3, 6, 9 and 12: the kill after the first leaves work to resume
    settings = {**SMALL, "eval_steps": 3, "max_steps": 12, "patience": None}
    if where == "s3":
        settings["checkpoint_storage"] = request.getfixturevalue("s3_bucket")
    script = (
        "import sys; from customir.config import TrainConfig; from customir.train import trainer;"
        f"trainer.run({str(out / 'triples')!r}, {str(out / 'chunks')!r}, {str(out)!r}, "
        f"TrainConfig(**{settings!r}))")
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local Ray cluster, killed with it
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    location = checkpoints.checkpoint_location(settings.get("checkpoint_storage") or out / ".ray",
                                               TrainConfig(**settings), _inputs(out))
    deadline = time.monotonic() + 300
    while not checkpoints.latest_checkpoint(location):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "train").exists()  # nothing published by the killed run
    if where == "s3":
        assert not (out / ".ray").exists()  # the checkpoints went to the bucket only
    rerun = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    metrics = Manifest.read(out / "train").extra["metrics"]
    assert metrics["resumed_from_step"] >= 3 and metrics["steps"] == 12
    assert not storage.exists(location)  # checkpoints are removed once the model is published


def test_ctrl_c_during_training_stops_the_cli_with_one_line_and_keeps_the_checkpoint(
        triples, tmp_path):
    """Ray Train's own SIGINT handler used to abort the workers and let the CLI go on (exit 1,
    no message); it also stayed installed, so Ctrl-C in later stages went unheeded."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("triples", "chunks"):
        (out / name).symlink_to(triples / name)
    settings = {**SMALL, "eval_steps": 3, "max_steps": 60, "patience": None}
    overrides = [f"train.{key}={json.dumps(list(value) if isinstance(value, tuple) else value)}"
                 for key, value in settings.items()]
    command = [sys.executable, "-m", "customir.cli", "train", str(out / "triples"), "--chunks",
               str(out / "chunks"), "--out", str(out)]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local Ray cluster
    process = subprocess.Popen(command, start_new_session=True, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    location = checkpoints.checkpoint_location(out / ".ray", TrainConfig(**settings),
                                               _inputs(out))
    try:
        deadline = time.monotonic() + 300
        while not checkpoints.latest_checkpoint(location):
            assert process.poll() is None, process.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "customir: interrupted"
    assert not (out / "train").exists()  # nothing published
    assert checkpoints.latest_checkpoint(location)  # a rerun resumes from here


def _train_worker_pids() -> set[int]:
    """Processes of Ray Train workers on this machine (Ray titles them ``ray::RayTrainWorker``)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(
                    b"ray::RayTrainWorker"):
                pids.add(int(entry.name))
        except OSError:  # the process ended while being looked at
            continue
    return pids


def _past_the_best(location) -> bool:
    """Whether the newest registered checkpoint comes after the best validated one."""
    newest = checkpoints.latest_checkpoint(location)
    if not newest:
        return False
    try:
        state = json.loads((Path(newest) / "trainer_state.json").read_text())
    except (OSError, ValueError):  # Ray Train may prune it while it is read
        return False
    return (state.get("best_global_step") or state["global_step"]) < state["global_step"]


@pytest.mark.parametrize("max_failures", [1, 0])
def test_a_worker_lost_mid_training_is_restarted_from_the_checkpoint_within_the_stage(
        triples, tmp_path, max_failures):
    """The worker process is SIGKILLed after the first checkpoint (as when its node is lost, or
    Ray's placement-group cleaner wrongly takes the controller for dead under load): with
    ``max_failures`` 1 Ray Train restarts it from that checkpoint and the stage finishes in the
    same call; with 0 the stage fails, and nothing is published."""
    import threading

    # a learning rate this large makes validation get worse: the worker is killed once the
    # newest checkpoint is past the best one, which the restarted worker must still publish
    settings = {**SMALL, "eval_steps": 3, "max_steps": 30, "patience": None,
                "max_failures": max_failures, "learning_rate": 5e-3, "warmup_ratio": 0.0}
    out = tmp_path / "run"
    before = _train_worker_pids()
    outcome = {}

    def train():
        try:
            outcome["manifest"] = _train(triples, tmp_path, **settings)[0]
        except Exception as exc:  # noqa: BLE001  (the test inspects it)
            outcome["error"] = exc

    out.mkdir()
    for name in ("triples", "chunks"):
        (out / name).symlink_to(triples / name)
    location = Path(checkpoints.checkpoint_location(out / ".ray", TrainConfig(**settings),
                                                    _inputs(out)))
    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 300
    # a checkpoint Ray Train has registered (one it had not would be lost with the worker)
    while not (_past_the_best(location) and _train_worker_pids() - before):
        assert thread.is_alive(), outcome
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    [victim] = _train_worker_pids() - before
    # the worker's own checkpoints (~270 MB each), which its SIGKILL leaves behind
    scratch = checkpoints.worker_scratch_path(str(location.resolve()), rank=0)
    assert scratch.is_dir()
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive()
    if max_failures:
        assert "manifest" in outcome, repr(outcome.get("error"))[-3000:]
        metrics = outcome["manifest"].extra["metrics"]
        assert metrics["resumed_from_step"] > metrics["best_step"] and metrics["steps"] == 30
        assert (out / "train" / trainer.MODEL_DIR / "config.json").is_file()
        assert not scratch.exists()  # taken over by the restarted worker, removed at its end
        assert _validation_ndcg(out / "train") == pytest.approx(
            metrics["best_validation_ndcg@10"], abs=1e-4)
    else:
        assert "error" in outcome and not (out / "train").exists()
        shutil.rmtree(scratch)  # nothing restarted the worker: a rerun would remove it
        assert checkpoints.latest_checkpoint(location)  # kept for a rerun to resume from


def test_checkpoints_of_other_inputs_or_settings_are_never_resumed_from(tmp_path):
    """A run killed mid-training and rerun after an earlier stage changed its triples must not
    continue the old model: the checkpoint folder is named by the settings and the inputs."""
    config = TrainConfig(**SMALL)
    inputs = {"triples": "1111", "chunks": "2222"}
    here = checkpoints.checkpoint_location(tmp_path, config, inputs)
    assert here == checkpoints.checkpoint_location(tmp_path, TrainConfig(**SMALL, max_failures=0),
                                                   dict(inputs))
    assert len({here, checkpoints.checkpoint_location(tmp_path, config, {**inputs, "triples": "3"}),
                checkpoints.checkpoint_location(tmp_path, config, {**inputs, "chunks": "3"}),
                checkpoints.checkpoint_location(tmp_path, TrainConfig(**SMALL, epochs=9), inputs)}
               ) == 4
    assert Path(here).parent == tmp_path


def test_only_a_checkpoint_ray_train_registered_is_resumed_from(tmp_path):
    root = tmp_path / "train"
    for name in ("checkpoint_2026-01-01_10-00-00.000001", "checkpoint_2026-01-01_11-00-00.000001"):
        (root / name / "checkpoint").mkdir(parents=True)
        (root / name / "checkpoint" / "trainer_state.json").write_text("{}")
    assert checkpoints.latest_checkpoint(tmp_path) is None  # no snapshot: nothing was registered
    (root / checkpoints.RAY_SNAPSHOT).write_text(json.dumps({"checkpoint_results": [
        {"checkpoint_dir_name": "checkpoint_2026-01-01_10-00-00.000001"}]}))
    # the newer folder was being written when its worker died: never registered, never used
    assert checkpoints.latest_checkpoint(tmp_path) == str(
        root / "checkpoint_2026-01-01_10-00-00.000001" / "checkpoint")
    (root / checkpoints.RAY_SNAPSHOT).write_text("{not json")
    assert checkpoints.latest_checkpoint(tmp_path) is None


def _checkpoint(root, name, state, weights="w"):
    folder = root / "train" / name / "checkpoint"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps(state))
    (folder / "model.safetensors").write_text(weights)
    return folder


def test_a_resumed_run_gets_back_the_best_checkpoint_its_state_names(tmp_path):
    """The state of the step-45 checkpoint names its best (step 30) by a folder in the killed
    worker's scratch, which the restarted worker removed: the step-30 checkpoint Ray kept is
    copied back, and the state the trainer resumes from names the copy."""
    location, scratch = tmp_path / "ckpt", tmp_path / "scratch"
    scratch.mkdir()
    _checkpoint(location, "checkpoint_2026-01-01_10-00-00.000001", {"global_step": 30},
                weights="best")
    newest = _checkpoint(location, "checkpoint_2026-01-01_11-00-00.000001",
                         {"global_step": 45, "best_global_step": 30,
                          "best_model_checkpoint": "/tmp/gone/checkpoint-30"})
    (location / "train" / checkpoints.RAY_SNAPSHOT).write_text(json.dumps({"checkpoint_results": [
        {"checkpoint_dir_name": p} for p in ("checkpoint_2026-01-01_10-00-00.000001",
                                              "checkpoint_2026-01-01_11-00-00.000001")]}))
    resume = checkpoints.restore_best_checkpoint(str(newest), str(location), scratch)
    state = json.loads((Path(resume) / "trainer_state.json").read_text())
    assert state["global_step"] == 45 and Path(resume).is_relative_to(scratch)
    assert (Path(state["best_model_checkpoint"]) / "model.safetensors").read_text() == "best"
    # the registered checkpoint itself is left as Ray wrote it
    assert "/tmp/gone" in (newest / "trainer_state.json").read_text()
    # a state without a best (no validation) resumes as it is
    plain = _checkpoint(tmp_path / "other", "c", {"global_step": 5})
    assert checkpoints.restore_best_checkpoint(str(plain), str(tmp_path / "other"), scratch) == str(
        plain)


@pytest.fixture(scope="module")
def minilm():
    from customir.models import load_sentence_transformer

    return load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")


@pytest.mark.parametrize("loss, expected", [
    ("mnrl", "MultipleNegativesRankingLoss"),
    ("cached_mnrl", "CachedMultipleNegativesRankingLoss"),
    ("gist", "GISTEmbedLoss")])
@pytest.mark.parametrize("workers", [1, 2])
def test_each_train_loss_builds_its_sentence_transformers_loss(minilm, loss, expected, workers):
    """No Ray: make_loss alone (the Ray tests above then check the trainer used it)."""
    from customir.train.losses import make_loss

    config = TrainConfig(loss=loss, temperature=0.02, mini_batch_size=4, num_workers=workers)
    built = make_loss(minilm, config, guide=minilm if loss == "gist" else None)
    assert type(built).__name__ == expected  # exact class: CachedMNRL is not plain MNRL
    assert built.gather_across_devices is (workers > 1)
    if loss == "gist":
        assert built.temperature == 0.02 and built.guide is minilm
        with pytest.raises(ValueError, match="the gist loss needs a guide model"):
            make_loss(minilm, config)
    else:
        assert built.scale == pytest.approx(1 / 0.02)
    if loss == "cached_mnrl":
        assert built.mini_batch_size == 4


def test_deepspeed_asked_for_but_missing_is_one_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(ImportError, match=r"customir\[deepspeed\]"):
        trainer.run(tmp_path / "triples", tmp_path / "chunks", tmp_path,
                    TrainConfig(deepspeed_stage=2))
    assert not (tmp_path / "train").exists()


def test_query_kinds_that_match_nothing_fail_before_training(triples, tmp_path):
    with pytest.raises(ValueError, match=r"train.query_kinds \['claim'\] matches none of the "
                                         r"\d+ queries \(kinds present: \{'title': \d+\}\)"):
        _train(triples, tmp_path, query_kinds=["claim"])
    assert not (tmp_path / "run" / "train").exists()


def test_an_unusable_checkpoint_storage_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"train.checkpoint_storage 'nosuchfs://bucket/x' is "
                                         r"not a usable location"):
        trainer.run(tmp_path / "triples", tmp_path / "chunks", tmp_path,
                    TrainConfig(checkpoint_storage="nosuchfs://bucket/x"))
    assert not (tmp_path / "train").exists()
