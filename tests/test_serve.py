"""Export the base MiniLM to ONNX, serve it on Ray Serve, call it with the real openai client."""

import base64

import httpx
import numpy as np
import openai
import pytest

from customir.config import ExportConfig, IngestConfig, ServeConfig
from customir.corpus import ingest
from customir.export import onnx
from customir.models import resolve_base_model
from customir.serve import app
from customir.serve.encoder import OnnxEncoder

from conftest import free_port

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = tmp_path_factory.mktemp("serve")
    corpus = run / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Insulin regulates blood glucose. The pancreas secretes it.")
    ingest.run(corpus, run, IngestConfig(min_chunk_tokens=1))
    manifest = onnx.run(resolve_base_model("all-MiniLM-L6-v2"), run / "chunks", run,
                        ExportConfig())
    assert manifest.extra["parity"]["min_cosine"] >= 0.9999
    return run / "export"


@pytest.fixture(scope="module")
def server(exported, ray_cluster):
    config = ServeConfig(port=free_port(), model_name="test-embed", max_input_items=8)
    url = app.start(exported, config)
    yield url, config
    app.stop()


def test_served_embeddings_equal_the_exported_model(server, exported):
    url, config = server
    client = openai.OpenAI(base_url=url, api_key="unused")
    texts = ["what secretes insulin?", "glucose regulation", "an unrelated sentence"]
    reply = client.embeddings.create(model="test-embed", input=texts)  # base64 on the wire
    served = np.array([d.embedding for d in reply.data])
    direct = OnnxEncoder(exported).encode(texts)
    assert served.shape == (3, 384)
    assert np.min(np.sum(served * direct, axis=1)) >= 0.9999
    assert [d.index for d in reply.data] == [0, 1, 2]
    assert reply.model == "test-embed" and reply.usage.prompt_tokens > 0

    floats = client.embeddings.create(model="test-embed", input="glucose regulation",
                                      encoding_format="float")
    assert np.allclose(floats.data[0].embedding, direct[1], atol=1e-6)
    assert [m.id for m in client.models.list().data] == ["test-embed"]


def test_base64_matches_float32_bytes(server):
    url, _ = server
    body = httpx.post(f"{url}/embeddings", json={"input": "hello", "encoding_format": "base64"},
                      timeout=30).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (384,) and abs(np.linalg.norm(vector) - 1) < 1e-4


@pytest.mark.parametrize("payload, status, message", [
    ({"input": []}, 400, "'input' must not be empty"),
    ({"input": ["ok", "  "]}, 400, "empty strings"),
    ({"input": [[1, 2, 3]]}, 400, "token-id input is not supported"),
    ({"input": ["x"] * 9}, 400, "at most 8 per request"),
    ({"input": "x", "model": "gpt-4"}, 404, "is not served here"),
    ({"input": "x", "dimensions": 12}, 400, "384 dimensions"),
    ({"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ({"inputs": "typo"}, 400, "input"),
])
def test_bad_requests_get_openai_style_errors(server, payload, status, message):
    url, _ = server
    response = httpx.post(f"{url}/embeddings", json=payload, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


def test_concurrent_requests_are_all_answered(server):
    import concurrent.futures

    url, _ = server
    texts = [f"request number {i}" for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda t: httpx.post(f"{url}/embeddings", json={"input": t},
                                                     timeout=60).json(), texts))
    assert all(len(r["data"][0]["embedding"]) == 384 for r in replies)


def test_starting_without_an_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.onnx"):
        app.start(tmp_path, ServeConfig())
