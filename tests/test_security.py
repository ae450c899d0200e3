"""Security defaults: secrets stay in the environment, ids are data (never paths)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from customir.config import IngestConfig
from customir.corpus import ingest
from customir.schemas import CHUNKS, read_table

from conftest import chat_completion, schema_answer, serve_on_loopback

SECRET = "sk-customir-test-0f3c9a7e5d21"
KEY_ENV = "CUSTOMIR_TEST_LLM_KEY"
PASSAGES = {
    "p1": "Glaciers store most of the fresh water on the planet and retreat as climates warm.",
    "p2": "Solar panels convert sunlight to electricity with photovoltaic cells made of silicon.",
    "p3": "Bees pollinate flowering plants, which many crops depend on for their yield.",
}


def _keyed_server(seen: dict):
    """Chat completions that answer only requests bearing SECRET (401 otherwise)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    api = FastAPI()

    @api.post("/v1/chat/completions")
    async def chat(request: Request):
        given = request.headers.get("authorization", "")
        seen["requests"] += 1
        if given != f"Bearer {SECRET}":
            seen["refused"] += 1
            return JSONResponse({"error": {"message": "invalid api key", "type": "auth",
                                           "code": "invalid_api_key"}}, status_code=401)
        body = await request.json()
        return chat_completion(body, schema_answer(body))

    return api


@pytest.fixture
def keyed_endpoint():
    seen = {"requests": 0, "refused": 0}
    with serve_on_loopback(_keyed_server(seen)) as url:
        yield url, seen


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.ray
def test_the_llm_key_is_used_but_never_written_to_the_run_or_the_logs(keyed_endpoint,
                                                                       tmp_path):
    url, seen = keyed_endpoint
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with open(corpus / "passages.jsonl", "w") as fh:
        for doc_id, text in PASSAGES.items():
            fh.write(json.dumps({"_id": doc_id, "text": text}) + "\n")
    run = tmp_path / "run"
    env = {**os.environ, KEY_ENV: SECRET, "RAY_ADDRESS": ""}  # its own local cluster
    cli = [sys.executable, "-m", "customir.cli"]
    started = time.time()
    steps = [
        [*cli, "ingest", str(corpus), "--out", str(run), "--set", "ingest.min_chunk_tokens=3"],
        [*cli, "generate", str(run / "chunks"), "--out", str(run),
         "--set", "generate.llm.backend=openai", "--set", f"generate.llm.base_url={url}",
         "--set", f"generate.llm.api_key_env={KEY_ENV}", "--set", "generate.llm.model=m",
         "--set", "generate.kinds=[keyword]", "--set", "generate.multihop=0.0",
         "--set", "generate.dedup_cosine=null", "--set", "generate.roundtrip_k=null"],
    ]
    output = b""
    for step in steps:
        done = subprocess.run(step, capture_output=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        output += done.stdout + done.stderr
    manifest = json.loads((run / "queries" / "_manifest.json").read_text())
    assert seen["requests"] >= 3 and seen["refused"] == 0  # the key was sent
    assert manifest["balances"]["llm_queries"]["n_out"] == 3
    needle = SECRET.encode()
    assert needle not in output
    assert _files_holding(run, needle) == []
    # the Ray session that subprocess started (logs of every worker that held the key)
    sessions = [s for s in Path("/tmp/ray").glob("session_2*")
                if s.is_dir() and s.stat().st_mtime >= started - 1]
    assert sessions, "the stage's Ray session logs were not found"
    for session in sessions:
        assert _files_holding(session / "logs", needle) == []


def test_ids_are_data_and_never_become_paths(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    nasty = ["../../escaped", "/etc/passwd", "a/../../b", "..", "C:\\Windows\\x", "~/home"]
    with open(corpus / "records.jsonl", "w") as fh:
        for i, doc_id in enumerate(nasty):
            fh.write(json.dumps({"_id": doc_id, "text": f"Record {i} about river deltas and "
                                 f"sediment number {i} in the estuary."}) + "\n")
    before = {p for p in tmp_path.parent.rglob("*")}
    run = tmp_path / "run"
    manifest = ingest.run(corpus, run, IngestConfig(min_chunk_tokens=3))
    assert manifest.balances["documents"].n_out == len(nasty)
    rows = read_table(run / "chunks", CHUNKS).to_pylist()
    assert sorted(r["doc_id"] for r in rows) == sorted(nasty)
    created = {p for p in tmp_path.parent.rglob("*")} - before
    assert created and all(p.is_relative_to(run) for p in created), sorted(
        str(p) for p in created if not p.is_relative_to(run))
