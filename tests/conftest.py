"""Shared fixtures: a hand-checkable corpus, a session-wide local Ray cluster, loopback ports."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Ten short passages whose BM25 order is easy to check by hand: for "aspirin heart", d1 has both
# terms, d5 has the rarer "aspirin" (df 2), and d2, d3, d9 share the common "heart" (df 4).
PASSAGES = {
    "d1": ("Aspirin and the heart", "Aspirin reduces the risk of heart attack in adults."),
    "d2": ("Statins", "Statins lower cholesterol and reduce heart disease in patients."),
    "d3": ("Exercise", "Regular exercise improves heart health and mood."),
    "d4": ("Vitamin D", "Vitamin D supports bone density in older adults."),
    "d5": ("Aspirin risks", "Aspirin can cause stomach bleeding at high doses."),
    "d6": ("Sleep", "Sleep deprivation impairs memory and attention in students."),
    "d7": ("Coffee", "Coffee consumption is linked to alertness and focus."),
    "d8": ("Green tea", "Green tea contains antioxidants called catechins."),
    "d9": ("Smoking", "Smoking damages the lungs and the heart over many years."),
    "d10": ("Meditation", "Meditation may reduce stress and anxiety in workers."),
}


@pytest.fixture(scope="module", autouse=True)
def _module_tmp_cleanup(request, tmp_path_factory):
    """The folders of a module's shared fixtures (a trained run, an export) go when the module
    ends with no test failed. (A passed test's own ``tmp_path`` goes when it ends:
    ``tmp_path_retention_policy = "failed"`` in pyproject.toml.) The training, export and
    pipeline tests each leave hundreds of MB, and together they once filled a CI machine's
    disk."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            if path.is_symlink():  # pytest's ``<name>current`` link to a numbered folder
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fixture_corpus(tmp_path: Path) -> Path:
    """The ten passages as one jsonl file (ids d1..d10 with titles)."""
    root = tmp_path / "corpus"
    root.mkdir()
    with open(root / "passages.jsonl", "w") as fh:
        for doc_id, (title, text) in PASSAGES.items():
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    return root


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for every test that needs Ray (starting one takes ~4 s)."""
    from customir.config import RayConfig
    from customir.runtime import ray_session

    with ray_session(RayConfig(num_cpus=2)):
        yield


@pytest.fixture
def s3_endpoint(monkeypatch):
    """A real S3 API on 127.0.0.1 (moto's server, dummy credentials), empty; yields its
    host:port."""
    import urllib.request

    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its buckets per process, not per server: start from none, so no test sees
    # another's objects (a run folder left by an earlier test would pass for finished work)
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset",
                                                  method="POST"), timeout=10).close()
    yield f"{host}:{port}"
    server.stop()


def s3_uri(endpoint: str, path: str) -> str:
    """``s3://PATH`` on that endpoint, its options in the query string."""
    return f"s3://{path}?endpoint_override={endpoint}&scheme=http&region=us-east-1"


@pytest.fixture
def s3_bucket(s3_endpoint):
    """One bucket on the S3 API; returns the URI of a prefix in it."""
    import pyarrow.fs as pafs

    pafs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1",
                      allow_bucket_creation=True).create_dir("customir")
    return s3_uri(s3_endpoint, "customir/runs")


# one chunk of a document "a", for tests that build stage folders by hand
ONE_CHUNK = {"chunk_id": "a#0", "doc_id": "a", "chunk_index": 0, "source": "a.txt",
             "text": "tides follow the moon", "n_tokens": 5}


def write_stage(folder: Path, schema, rows: list[dict]) -> Path:
    """A stage folder holding ``rows`` (as the stages write it: data/part-0.parquet)."""
    import pyarrow as pa

    from customir.schemas import write_rows

    folder.mkdir(parents=True)
    write_rows(folder, pa.Table.from_pylist(rows, schema=schema), [])
    return folder


def export_one_document(run: Path, export_config):
    """Ingest one two-sentence document into ``run`` and export the packaged MiniLM there (the
    serving tests' model); returns the export manifest."""
    from customir.config import IngestConfig
    from customir.corpus import ingest
    from customir.export import onnx
    from customir.models import resolve_base_model

    corpus = run / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Insulin regulates blood glucose. The pancreas secretes it.")
    ingest.run(corpus, run, IngestConfig(min_chunk_tokens=1))
    return onnx.run(resolve_base_model("all-MiniLM-L6-v2"), run / "chunks", run, export_config)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_on_loopback(app, start_timeout_s: float = 60.0):
    """Run an ASGI app (a small FastAPI server) with uvicorn on 127.0.0.1; yield its /v1 URL.

    A server that cannot start (the port was taken between free_port() and the bind: uvicorn
    then exits its thread) fails the test at once instead of waiting forever."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive():
            pytest.fail(f"the loopback server on 127.0.0.1:{port} exited before it started "
                        "(port taken?)")
        if time.monotonic() > deadline:
            server.should_exit = True
            pytest.fail(f"the loopback server on 127.0.0.1:{port} did not start within "
                        f"{start_timeout_s:g} s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


def schema_answer(body: dict) -> str:
    """A chat request's answer in JSON: each property of its response_format schema filled
    with the first words of the last message (8 for integers)."""
    fmt = body["response_format"]
    schema = fmt["json_schema"]["schema"] if fmt["type"] == "json_schema" else fmt["schema"]
    words = " ".join(body["messages"][-1]["content"].split("\n", 1)[-1].split()[:3])
    return json.dumps({k: 8 if v.get("type") == "integer" else f"{k} {words}"
                       for k, v in schema["properties"].items()})


def chat_completion(body: dict, content: str) -> dict:
    """An OpenAI chat.completion reply carrying ``content``."""
    return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26}}
