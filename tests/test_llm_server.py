"""The openai backend against llama.cpp's own OpenAI-compatible server (llama-cpp-python's
``llama_cpp.server``) serving the embedded model on 127.0.0.1: real HTTP, real model, real
JSON-schema grammar — the same path a vLLM or hosted endpoint takes."""

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from customir.config import GenerateConfig, IngestConfig, LLMConfig
from customir.corpus import ingest
from customir.llm.gguf import resolve_gguf
from customir.queries import generate
from customir.schemas import QUERIES, read_table

from conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    pytest.importorskip("llama_cpp.server.app", reason="pip install 'customir[dev]' for the server")
    port = free_port()
    # the server logs a lot: a pipe nobody reads would fill up and block it
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model",
         str(resolve_gguf("qwen2.5-coder-1.5b-instruct")), "--host", "127.0.0.1", "--port",
         str(port), "--n_ctx", "2048", "--model_alias", "embedded"],
        stdout=log_file, stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"llama.cpp server did not start: "
                                   f"{log_path.read_text()[-2000:]}") from None
            time.sleep(1)
    yield url
    process.terminate()
    process.wait(timeout=30)
    log_file.close()


def test_generate_through_llama_cpp_server(llama_server, tmp_path, ray_cluster):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "insulin.md").write_text(
        "# Insulin and glucose\n\nInsulin is released by pancreatic beta cells after a meal and "
        "lowers blood glucose by increasing its uptake into muscle and fat tissue.\n")
    ingest.run(corpus, tmp_path / "run", IngestConfig(min_chunk_tokens=3))
    llm = LLMConfig(backend="openai", base_url=llama_server, model="embedded",
                    response_format="json_object", concurrency=1, timeout_s=300)
    manifest = generate.run(tmp_path / "run" / "chunks", tmp_path / "run", GenerateConfig(
        llm=llm, kinds={"keyword": 1.0, "question": 1.0}, multihop=0.0, profile="terms"))
    assert manifest.balances["llm_queries"].n_in == 2
    assert manifest.balances["llm_queries"].n_out >= 1  # the served model answered in JSON
    assert manifest.extra["llm_usage"]["queries"]["completion_tokens"] > 0
    rows = read_table(tmp_path / "run" / "queries", QUERIES).to_pylist()
    written = [r for r in rows if r["origin"] == "llm:embedded"]
    assert written and all(r["chunk_id"] == "insulin.md#0" for r in written)
