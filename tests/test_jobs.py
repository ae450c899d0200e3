"""jobs/ through real `ray job submit`: a head node started with `ray start --head` on loopback,
the whole adaptation and one single stage submitted with JobSubmissionClient, as on a cluster.

The head runs in its own process group with its own temp dir and ports, so other tests' Ray
sessions on this machine are never touched (`ray stop` would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from customir.manifest import MANIFEST, Manifest
from customir.pipeline import STAGE_FOLDERS, STAGES

from conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.ray]
REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "sample_corpus"
# The env the README's `--runtime-env cluster/runtime_env.yaml` gives a job; it names the same
# keys as customir.runtime.WORKER_ENV, which Ray refuses unless ray_session leaves them out.
JOB_ENV = {"HF_HUB_OFFLINE": "1",
           **(yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text()) or {}).get(
               "env_vars", {}),
           "RAY_AUTH_MODE": "disabled"}
# The working dir is uploaded to the cluster; Ray also skips what .gitignore lists.
UPLOAD_EXCLUDES = [".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__",
                   ".pytest_cache", ".ruff_cache"]
TINY_CONFIG = """\
generate: {llm: {backend: scripted}, multihop: 0.0, max_llm_chunks: 4}
verify: {llm: {backend: scripted}, max_queries: 4}
train: {max_steps: 2, batch_size: 8, split: [0.5, 0.2, 0.3]}
"""


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with the dashboard (the job server); yields its dashboard URL."""
    temp_dir = tempfile.mkdtemp(prefix="cir-jobs-")  # short: Ray's socket paths have a limit
    dashboard_port = free_port()
    env = {**os.environ, **JOB_ENV,
           # `python` in a job's entrypoint is this environment's interpreter
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", f"--port={free_port()}",
               f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1",
               f"--ray-client-server-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=2", "--num-gpus=0",
               "--include-dashboard=true", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    head = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        client = _wait_for_job_server(url, head)
        yield client
    finally:
        _stop_head(head, temp_dir)


def _wait_for_job_server(url: str, head: subprocess.Popen, timeout: float = 120):
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        if head.poll() is not None:
            pytest.fail(f"ray start --head exited {head.returncode}:\n{head.stdout.read()}")
        try:
            return JobSubmissionClient(url)
        except Exception:  # noqa: BLE001 - the dashboard is not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM the head's process group (`ray start --block` then stops what it started), SIGKILL
    whatever is left of it, then any process still naming our temp dir (all started by us)."""
    with_group = lambda sig: os.killpg(head.pid, sig)  # noqa: E731
    try:
        with_group(signal.SIGTERM)
        head.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        with_group(signal.SIGKILL)
    except ProcessLookupError:
        pass
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if temp_dir in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    """Twelve abstracts and two markdown notes, and a config for a run of a couple of minutes."""
    root = tmp_path_factory.mktemp("jobs")
    corpus = root / "corpus"
    (corpus / "notes").mkdir(parents=True)
    records = [json.loads(line) for line in
               (SAMPLE / "abstracts.jsonl").read_text().splitlines()[:14]]
    (corpus / "abstracts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:12]))
    for rec in records[12:]:
        (corpus / "notes" / f"{rec['_id']}.md").write_text(f"# {rec['title']}\n\n{rec['text']}\n")
    config = root / "tiny.yaml"
    config.write_text(TINY_CONFIG + f"corpus: {corpus}\n")
    return root, config


def submit_and_wait(client, entrypoint: str, timeout: float = 600) -> str:
    """Submit ``entrypoint`` with this repo as the job's working dir; return its logs once it
    SUCCEEDED (fail with them otherwise)."""
    from ray.job_submission import JobStatus

    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(REPO), "excludes": UPLOAD_EXCLUDES,
                     "env_vars": dict(JOB_ENV)})
    deadline = time.monotonic() + timeout
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    if status != JobStatus.SUCCEEDED:
        if not status.is_terminal():
            client.stop_job(job_id)
        info = client.get_job_info(job_id)
        pytest.fail(f"job {job_id} ended {status} ({info.message}):\n{logs[-8000:]}")
    return logs


def test_adaptation_job_writes_every_stage(ray_head, job_inputs):
    root, config = job_inputs
    run = root / "run"
    logs = submit_and_wait(ray_head, f"python jobs/run_pipeline.py {config} "
                                     f"--set run_dir={run}")

    assert "joining Ray cluster at" in logs  # the driver used the job's cluster, not its own
    assert '"timings"' in logs and "run finished" in logs
    manifests = {stage: Manifest.read(run / STAGE_FOLDERS[stage]) for stage in STAGES}
    for stage, manifest in manifests.items():
        assert manifest.stage and manifest.finished_at, stage
        for unit, balance in manifest.balances.items():
            balance.check(f"{stage}:{unit}")  # in == out + skipped, as written
    # each stage's output is the next one's input, row for row
    rows = lambda folder: pq.read_table(run / folder / "data").num_rows  # noqa: E731
    chunks = manifests["ingest"].balances["chunks"].n_out
    assert chunks == rows("chunks") > 0
    queries = manifests["generate"].balances["queries"].n_out
    assert queries == rows("queries") > 0
    assert manifests["mine"].balances["queries"].n_in == queries
    mined = manifests["mine"].balances["queries"].n_out
    assert manifests["verify"].balances["queries"].n_in == mined
    triples = manifests["verify"].balances["queries"].n_out
    assert triples == rows("triples") > 0
    assert manifests["train"].balances["queries"].n_in == triples
    assert manifests["train"].extra["metrics"]["steps"] == 2
    model = run / "train" / "model"
    assert (model / "config.json").is_file() and list(model.rglob("*.safetensors"))
    assert manifests["evaluate"].extra["sets"]
    assert (run / "evaluation" / "report.md").is_file()
    assert (run / "export" / "model.onnx").is_file()
    assert manifests["export"].extra["parity"]["min_cosine"] >= 0.9999


def test_single_stage_job(ray_head, job_inputs):
    root, config = job_inputs
    run = root / "ingest-only"
    logs = submit_and_wait(ray_head, f"python jobs/stage.py ingest {config} "
                                     f"--set run_dir={run}")

    summary = json.loads([line for line in logs.splitlines()
                          if line.startswith('{"stage": "ingest"')][-1])
    manifest = Manifest.read(run / "chunks")
    assert summary["run_dir"] == str(run)
    assert summary["counts"]["chunks"]["out"] == manifest.balances["chunks"].n_out > 0
    assert summary["counts"]["documents"] == {"in": 14, "out": 14, "skipped": {}}
    assert (run / "chunks" / MANIFEST).is_file()
    assert not (run / "queries").exists()  # one stage only


def test_job_imports_the_uploaded_code(ray_head):
    """On a cluster the package comes from the job's working dir, not from an install."""
    logs = submit_and_wait(ray_head, "python -c 'import customir; print(customir.__file__)'")
    imported = logs.strip().splitlines()[-1]
    assert imported.endswith("customir/__init__.py")
    assert "runtime_resources" in imported and not imported.startswith(str(REPO))
