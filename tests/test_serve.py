"""Export the base MiniLM (fp32 + int8), serve it on Ray Serve, call it with the real openai
client; every bad request gets its 4xx and the server keeps answering."""

import base64
import concurrent.futures

import httpx
import numpy as np
import openai
import pytest

from customir.config import EncoderBackend, ExportConfig, ServeConfig
from customir.export import onnx
from customir.serve import app, lifecycle
from customir.serve.encoder import OnnxEncoder, TorchEncoder, load_encoder

from conftest import export_one_document, free_port

pytestmark = pytest.mark.ray
KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = tmp_path_factory.mktemp("serve")
    manifest = export_one_document(run, ExportConfig())
    assert manifest.extra["parity"]["min_cosine"] >= 0.9999
    assert manifest.extra["int8"]["accepted"], manifest.extra["int8"]
    return run


@pytest.fixture(scope="module")
def server(exported, ray_cluster, monkeypatch_module):
    monkeypatch_module.setenv("CUSTOMIR_TEST_KEY", KEY)
    config = ServeConfig(port=free_port(), model_name="test-embed", max_input_items=8,
                         max_input_chars=5000, max_body_bytes=200_000,
                         api_key_env="CUSTOMIR_TEST_KEY")
    url = lifecycle.start(exported, config)  # a run folder: its export/ is served
    yield url, config
    lifecycle.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _post(url, payload=None, key=KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/embeddings", json=payload, headers=headers, timeout=60, **kwargs)


def test_served_embeddings_equal_the_exported_model(server, exported):
    url, _ = server
    client = openai.OpenAI(base_url=url, api_key=KEY)
    texts = ["what secretes insulin?", "glucose regulation", "an unrelated sentence"]
    reply = client.embeddings.create(model="test-embed", input=texts)  # base64 on the wire
    served = np.array([d.embedding for d in reply.data])
    direct = OnnxEncoder(exported / "export").encode(texts)
    assert served.shape == (3, 384)
    assert np.min(np.sum(served * direct, axis=1)) >= 0.9999
    assert [d.index for d in reply.data] == [0, 1, 2]
    assert reply.model == "test-embed" and reply.usage.prompt_tokens > 0

    floats = client.embeddings.create(model="test-embed", input="glucose regulation",
                                      encoding_format="float")
    assert np.allclose(floats.data[0].embedding, direct[1], atol=1e-6)
    assert [m.id for m in client.models.list().data] == ["test-embed"]


def test_health_and_base64(server):
    url, _ = server
    health = httpx.get(url.replace("/v1", "/health"), timeout=30).json()
    assert health == {"status": "ready", "backend": "onnx", "dimension": 384}
    body = _post(url, {"input": "hello", "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (384,) and abs(np.linalg.norm(vector) - 1) < 1e-4


def test_long_input_is_truncated_to_the_model_and_usage_says_so(server):
    url, _ = server
    long_text = "glucose " * 600  # ~600 tokens, under the 5,000-character limit
    body = _post(url, {"input": long_text}).json()
    assert body["usage"]["prompt_tokens"] == 256  # max_seq_length, [CLS]/[SEP] included


@pytest.mark.parametrize("payload, status, message", [
    ({"input": []}, 400, "'input' must not be empty"),
    ({"input": ["ok", "  "]}, 400, "empty strings"),
    ({"input": [[1, 2, 3]]}, 400, "check_embedding_ctx_length=False"),
    ({"input": [101, 2023, 102]}, 400, "'input' must be text"),
    ({"input": ["x"] * 10_000}, 400, "at most 8 per request"),
    ({"input": "x" * 6000}, 400, "at most 5000 per item"),
    ({"input": 12}, 400, "input"),
    ({"input": {"text": "x"}}, 400, "input"),
    ({"input": "x", "model": "gpt-4"}, 404, "is not served here"),
    ({"input": "x", "dimensions": 12}, 400, "384 dimensions"),
    ({"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ({"inputs": "typo"}, 400, "input"),
])
def test_bad_requests_get_openai_style_errors(server, payload, status, message):
    url, _ = server
    response = _post(url, payload)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    assert response.headers["x-should-retry"] == "false"  # the openai client does not resend it


def test_unknown_paths_wrong_methods_and_unreadable_bodies_get_openai_errors(server):
    """Starlette's own refusals answer in OpenAI's shape too, not FastAPI's {"detail": ...}."""
    url, _ = server
    auth = {"Authorization": f"Bearer {KEY}"}
    not_utf8 = httpx.post(f"{url}/embeddings", content=b'{"input": "\xff\xfe"}',
                          headers={**auth, "Content-Type": "application/json"}, timeout=30)
    wrong_method = httpx.get(f"{url}/embeddings", headers=auth, timeout=30)
    unknown = httpx.post(f"{url}/embedding", json={"input": "x"}, headers=auth, timeout=30)
    for reply, status, message in ((not_utf8, 400, "UTF-8"), (wrong_method, 405, "GET"),
                                   (unknown, 404, "/v1/embedding")):
        assert reply.status_code == status, reply.text
        error = reply.json()["error"]
        assert message in error["message"] and error["type"] == "invalid_request_error"
        assert reply.headers["x-should-retry"] == "false"
    assert wrong_method.headers["allow"] == "POST"


def test_a_lone_surrogate_is_replaced_and_its_batch_neighbours_are_answered(server, exported):
    """Half an emoji (``\\ud83d``: legal JSON, which a client slicing a string may send) becomes
    U+FFFD, as in ingest; before, the tokenizer raised on it and every request batched with it
    got a 500."""
    url, _ = server
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def send(i):
        if i == 3:
            return httpx.post(f"{url}/embeddings", content=b'{"input": "\\ud83d glucose"}',
                              headers=headers, timeout=60)
        return _post(url, {"input": f"good request {i}"})

    with concurrent.futures.ThreadPoolExecutor(7) as pool:
        replies = list(pool.map(send, range(7)))
    assert [r.status_code for r in replies] == [200] * 7, [r.text[:200] for r in replies]
    served = np.array(replies[3].json()["data"][0]["embedding"])
    assert float(served @ OnnxEncoder(exported / "export").encode(["\ufffd glucose"])[0]) > 0.9999


class _BreaksOn:
    """An encoder that fails any pass holding ``bad`` (as the tokenizer did on a lone
    surrogate): the server's safety net for a text that breaks the encoder in some new way."""

    def __init__(self, bad: str):
        self.bad = bad

    def encode_counted(self, texts, batch_size=32):
        if self.bad in texts:
            raise TypeError("cannot encode this text")
        return np.ones((len(texts), 2), dtype=np.float32), [len(t) for t in texts]


def test_a_text_that_breaks_the_encoder_fails_only_its_own_request():
    out = app._encode_requests(_BreaksOn("bad"), [["a", "bb"], ["x", "bad"], ["ccc"]], 32)
    assert [tokens for _, tokens in (out[0], out[2])] == [3, 3]
    assert out[0][0].shape == (2, 2) and isinstance(out[1], TypeError)


def test_the_server_counts_tokens_from_the_tokenization_it_embeds(exported):
    """usage.prompt_tokens comes from the encoding thread's one tokenization, not a second one
    on the replica's event loop."""
    encoder = OnnxEncoder(exported / "export")
    requests = [["short"], ["glucose " * 600, "insulin"]]
    expected = [encoder.count_tokens(texts) for texts in requests]
    calls, tokenizer = [], encoder.tokenizer

    class CountingTokenizer:
        def encode_batch(self, texts):
            calls.append(len(texts))
            return tokenizer.encode_batch(texts)

    encoder.tokenizer = CountingTokenizer()
    out = app._encode_requests(encoder, requests, 32)
    assert calls == [3] and [tokens for _, tokens in out] == expected == [3, 259]
    assert np.allclose(out[1][0], OnnxEncoder(exported / "export").encode(requests[1]))


def test_malformed_json_oversized_body_and_keys(server):
    url, _ = server
    bad_json = httpx.post(f"{url}/embeddings", content=b'{"input": ["unterminated',
                          headers={"Authorization": f"Bearer {KEY}",
                                   "Content-Type": "application/json"}, timeout=30)
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]
    # found by black-box runs: curl's default form type, and union errors listing every member
    form = httpx.post(f"{url}/embeddings", content=b'{"input": "hi"}', timeout=30, headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/x-www-form-urlencoded"})
    assert (form.status_code, form.json()["error"]["message"]) == (
        400, "send the body as JSON with 'Content-Type: application/json'")
    for bad_input in (["a", 1], None):
        refused = _post(url, {"input": bad_input})
        assert (refused.status_code, refused.json()["error"]["message"]) == (
            400, "'input' must be a string or a list of strings")
    huge = _post(url, {"input": "x" * 1_000_000})
    assert huge.status_code == 413 and "over the limit" in huge.json()["error"]["message"]
    # the same body sent without a declared length (Transfer-Encoding: chunked)
    body = b'{"input": "' + b"x" * 1_000_000 + b'"}'
    chunked = httpx.post(f"{url}/embeddings", content=iter([body[i:i + 65536] for i in
                                                           range(0, len(body), 65536)]),
                         headers={"Authorization": f"Bearer {KEY}",
                                  "Content-Type": "application/json"}, timeout=30)
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert chunked.status_code == 413 and "over the limit" in chunked.json()["error"]["message"]
    small = b'{"input": "a chunked request within the limit"}'
    fine = httpx.post(f"{url}/embeddings", content=iter([small[:10], small[10:]]),
                      headers={"Authorization": f"Bearer {KEY}",
                               "Content-Type": "application/json"}, timeout=30)
    assert fine.status_code == 200 and len(fine.json()["data"]) == 1
    assert _post(url, {"input": "x"}, key=None).status_code == 401
    wrong = _post(url, {"input": "x"}, key="wrong-key")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="nope").embeddings.create(model="test-embed",
                                                                       input="x")
    # ... and the server still answers.
    assert _post(url, {"input": "still alive?"}).status_code == 200


def test_concurrent_requests_are_all_answered(server, exported):
    url, _ = server
    texts = [f"request number {i}" for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda t: _post(url, {"input": t}).json(), texts))
    assert all(len(r["data"][0]["embedding"]) == 384 for r in replies)
    # each reply is its own text's embedding: replies swapped between concurrent requests
    # (batched together on the replica) fail — these texts differ in one number only, their
    # cosines to each other are < 0.9999, and each must be nearest its own direct encoding
    served = np.array([r["data"][0]["embedding"] for r in replies])
    direct = OnnxEncoder(exported / "export").encode(texts)
    cosines = served @ direct.T
    assert np.min(np.diag(cosines)) >= 0.9999
    assert list(np.argmax(cosines, axis=1)) == list(range(len(texts)))


def test_int8_and_torch_backends_agree_with_fp32(exported):
    texts = ["what secretes insulin?", "glucose regulation"]
    fp32 = load_encoder(exported / "export", EncoderBackend.onnx).encode(texts)
    int8 = load_encoder(exported / "export", EncoderBackend.onnx_int8).encode(texts)
    torch_emb = TorchEncoder(exported / "export").encode(texts)
    assert np.min(np.sum(fp32 * int8, axis=1)) >= 0.99
    assert np.min(np.sum(fp32 * torch_emb, axis=1)) >= 0.9999


def test_a_model_without_token_types_exports_and_matches_torch(exported, tmp_path):
    """RoBERTa- and MPNet-style tokenizers give no token_type_ids; export must not need them."""
    import json

    from customir.models import load_sentence_transformer

    model = load_sentence_transformer("all-MiniLM-L6-v2")
    model.tokenizer.model_input_names = ["input_ids", "attention_mask"]
    source = tmp_path / "no-token-types"
    model.save(str(source))
    settings = json.loads((source / "tokenizer_config.json").read_text())
    (source / "tokenizer_config.json").write_text(json.dumps(
        {**settings, "model_input_names": ["input_ids", "attention_mask"]}))
    assert "token_type_ids" not in load_sentence_transformer(source).tokenizer(["a"])
    manifest = onnx.run(source, exported / "chunks", tmp_path / "run", ExportConfig(int8=False))
    assert manifest.extra["parity"]["min_cosine"] >= 0.9999
    texts = ["what secretes insulin?", "glucose regulation"]
    graph = OnnxEncoder(tmp_path / "run" / "export").encode(texts)
    assert np.min(np.sum(graph * TorchEncoder(source).encode(texts), axis=1)) >= 0.9999


def test_a_model_without_normalize_exports_unit_vectors_like_the_torch_backend(exported,
                                                                              tmp_path):
    """A plain Hugging Face folder loads as [Transformer, Pooling]: the graph normalizes, so the
    ONNX backends serve what the torch backend serves (unit vectors), and parity checks it."""
    from sentence_transformers import SentenceTransformer

    from customir.models import load_sentence_transformer

    full = load_sentence_transformer("all-MiniLM-L6-v2")
    source = tmp_path / "no-normalize"
    SentenceTransformer(modules=[full[0], full[1]]).save(str(source))
    assert [type(m).__name__ for m in load_sentence_transformer(source)] == ["Transformer",
                                                                             "Pooling"]
    manifest = onnx.run(source, exported / "chunks", tmp_path / "run", ExportConfig(int8=False))
    parity = manifest.extra["parity"]
    assert parity["max_norm_error"] < 1e-3 and parity["max_abs_diff"] < 1e-4, parity
    assert manifest.extra["model"]["normalize_added_in_export"]
    texts = ["what secretes insulin?", "glucose regulation in the pancreas"]
    graph = OnnxEncoder(tmp_path / "run" / "export").encode(texts)
    assert np.allclose(np.linalg.norm(graph, axis=1), 1, atol=1e-4)
    assert np.abs(graph - TorchEncoder(source).encode(texts)).max() < 1e-4


def test_parity_fails_on_vectors_of_the_wrong_length_whatever_their_cosine():
    torch_emb = np.eye(3, 8, dtype=np.float32)
    assert onnx.parity_failures(onnx._compare(torch_emb, torch_emb), ExportConfig()) == []
    check = onnx._compare(torch_emb, 3 * torch_emb)  # same directions: cosine 1
    assert check["min_cosine"] > 0.9999
    assert [r.split()[0] for r in onnx.parity_failures(check, ExportConfig())] == ["max", "ONNX"]
    near = onnx._compare(torch_emb, torch_emb + np.float32(1e-5))  # within the default 1e-4
    assert onnx.parity_failures(near, ExportConfig()) == []
    assert [r.split()[0] for r in onnx.parity_failures(near, ExportConfig(max_abs_diff=1e-6))] \
        == ["max"]


def test_torch_backend_on_an_export_whose_source_model_is_gone_is_one_clear_error(tmp_path):
    import json

    (tmp_path / "customir_onnx.json").write_text(json.dumps({"source_model": "/nowhere/model"}))
    with pytest.raises(FileNotFoundError, match="exported from /nowhere/model, which this "
                                                "machine does not have"):
        app.resolve_model_dir(tmp_path, EncoderBackend.torch)


def test_tensorrt_without_the_extra_says_what_to_install(exported):
    with pytest.raises((ImportError, FileNotFoundError), match="gpu extra|model.plan"):
        load_encoder(exported / "export", EncoderBackend.tensorrt)
    from customir.export.tensorrt import build_engine

    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r"pip install 'customir\[gpu\]'"):
        build_engine(exported / "export" / "model.onnx", exported / "model.plan", 8, 256)


def test_starting_without_an_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `customir export` first"):
        lifecycle.start(tmp_path, ServeConfig())


@pytest.mark.parametrize("backend, message", [("onnx-int8", "int8 graph passed its checks"),
                                              ("tensorrt", "export.tensorrt: true")])
def test_serving_a_graph_export_did_not_write_is_one_line_before_ray_starts(tmp_path, backend,
                                                                            message):
    """An export whose int8 graph was rejected (or made on a CPU, without model.plan) is told
    at once: the folder is checked before a Ray cluster starts, not inside a replica."""
    import subprocess
    import sys

    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    (export / "customir_onnx.json").write_text("{}")
    (export / "model.onnx").write_bytes(b"")
    assert app.resolve_model_dir(tmp_path / "run", EncoderBackend.onnx) == export
    out = subprocess.run([sys.executable, "-m", "customir.cli", "serve", str(tmp_path / "run"),
                          "--backend", backend], capture_output=True, text=True, timeout=120,
                         env={"RAY_ADDRESS": "", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"customir: error: {export} has no ") and message in out.stderr
    assert "Traceback" not in out.stderr and "Ray" not in out.stderr


def _cli_serve(exported, *options, env=None):
    """Start `customir serve` in a subprocess; return (process, its first two stdout lines)."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "customir.cli", "serve", str(exported),
                             *options], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    lines = []
    deadline = time.time() + 180
    while time.time() < deadline and len(lines) < 2:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        if line.strip():
            lines.append(line.strip())
    return proc, lines


def _stop_cli(proc):
    import signal

    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 0


def test_cli_serves_a_run_folder_and_prints_a_curl_example(exported):
    port = free_port()
    proc, lines = _cli_serve(exported, "--port", str(port))
    try:
        assert lines[0] == f"serving customir-embed at http://127.0.0.1:{port}/v1"
        assert lines[1].startswith(f"try: curl -s http://127.0.0.1:{port}/v1/embeddings")
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": "hello"},
                           timeout=60).json()
        assert len(reply["data"][0]["embedding"]) == 384
    finally:
        _stop_cli(proc)


def test_cli_serve_stopped_by_sigterm_says_so(exported):
    """SIGTERM (Kubernetes stopping the pod) ends `customir serve` the way it ends every other
    command: the app deleted, one line, exit 143 — not a silent 0, nor Ray's stack dump."""
    import signal

    proc, lines = _cli_serve(exported, "--port", str(free_port()))
    assert lines and lines[0].startswith("serving customir-embed at "), lines
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 143


def test_cli_serve_on_a_port_in_use_is_one_line(exported):
    """Before, Ray's proxy failing to bind came out as a 48-line traceback."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        done = subprocess.run([sys.executable, "-m", "customir.cli", "serve", str(exported),
                               "--port", str(port)], capture_output=True, text=True, env=env,
                              timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"customir: error: cannot serve on 127.0.0.1:{port}: the address is in use; choose "
        "another with --host/--port or serve.host/serve.port")
    assert "Traceback" not in done.stderr


def _haproxy_configs() -> list[str]:
    """Config files of the haproxy processes running now."""
    from pathlib import Path

    configs = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # the process ended
            continue
        if args and Path(args[0]).name == "haproxy" and "-f" in args:
            configs.append(args[args.index("-f") + 1])
    return configs


def test_haproxy_ingress_serves_the_openai_client_and_refuses_bad_requests(exported):
    """serve.ingress haproxy: requests go through Serve's HAProxy (a haproxy process with this
    cluster's own config file) to the replica; answers equal the exported model's."""
    port = free_port()
    proc, lines = _cli_serve(exported, "--port", str(port), "--ingress", "haproxy")
    try:
        assert lines[0] == f"serving customir-embed at http://127.0.0.1:{port}/v1", lines
        assert any("cir-hap-" in c for c in _haproxy_configs()), _haproxy_configs()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        texts = ["insulin and glucose", "the pancreas secretes insulin"]
        reply = client.embeddings.create(model="customir-embed", input=texts)
        served = np.array([d.embedding for d in reply.data], dtype=np.float32)
        assert np.allclose(served, OnnxEncoder(exported / "export").encode(texts), atol=1e-5)
        bad = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": []},
                         timeout=60)
        assert bad.status_code == 400 and "empty" in bad.json()["error"]["message"]
        assert client.embeddings.create(model="customir-embed", input="again").data
    finally:
        _stop_cli(proc)
    assert not any("cir-hap-" in c for c in _haproxy_configs())


def test_an_unknown_ingress_is_one_clear_error(exported):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "customir.cli", "serve", str(exported),
                           "--ingress", "nginx"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(
        "argument --ingress: invalid choice: 'nginx' (choose from 'proxy', 'haproxy')")


@pytest.mark.parametrize("option, message", [
    (["--backend", "bogus"], "invalid config: serve.backend: Input should be 'onnx', "),
    (["--port", "70000"], "invalid config: serve.port: Input should be less than or equal to "
                          "65535 (got 70000)"),
])
def test_bad_serve_options_are_one_line_and_exit_2(exported, option, message):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "customir.cli", "serve", str(exported),
                           *option], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_haproxy_ingress_without_a_usable_binary_is_one_clear_error(exported):
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "customir.cli", "serve", str(exported),
                           "--ingress", "haproxy"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_SERVE_HAPROXY_BINARY_PATH": "/nowhere/haproxy"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "customir: error: serve.ingress: haproxy needs a haproxy binary "
        "(RAY_SERVE_HAPROXY_BINARY_PATH='/nowhere/haproxy' does not point to an executable "
        "file.); install ray[serve] on Linux (it brings one) or haproxy itself, or use "
        "serve.ingress: proxy"]


# --- hardening: a second application next to the module's server, with its own limits ---

LONG_TEXT = " ".join(f"glucose{i} insulin pancreas secretion regulation" for i in range(60))


def _deploy(exported, server, name, **settings):
    """Deploy ``exported`` as another application at /<name>; return its /v1 URL."""
    from ray import serve

    config = ServeConfig(model_name="test-embed", **settings)
    serve.run(app.build_app(exported / "export", config), name=name, route_prefix=f"/{name}")
    return server[0].removesuffix("/v1") + f"/{name}/v1"


def _big(n=128):
    return {"input": [f"{i} {LONG_TEXT}" for i in range(n)]}


def test_an_overloaded_server_answers_503_with_retry_after_at_once(exported, server):
    from ray import serve

    # The queued request waits for the one ahead of it, and the proxy started by the module's
    # server ends any request after 30 + 5 s whatever this application's own limit says: on a
    # loaded machine (CI beside three busy processes) two 128-text encodes ran past it and got
    # the proxy's 408. 24 texts keep both well inside it (32 took 9 + 20 s so loaded), yet take
    # seconds, against hundredths for a refusal.
    url = _deploy(exported, server, "overload", max_ongoing_requests=1, max_queued_requests=1,
                  overload_retry_after_s=2)
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: _post(url, _big(24), key=None), range(6)))
        codes = sorted(r.status_code for r in replies)
        seen = [(r.status_code, r.elapsed.total_seconds(), r.text[:120]) for r in replies]
        assert codes.count(503) >= 2 and set(codes) <= {200, 503}, seen
        refused = [r for r in replies if r.status_code == 503]
        assert all(r.headers.get("retry-after") == "2" for r in refused)
        answered = [r for r in replies if r.status_code == 200]
        assert answered and all(len(r.json()["data"]) == 24 for r in answered)
        # refused at once, not queued: a queued request would wait at least for the request
        # encoding ahead of it, i.e. longer than any answered request takes. A bound relative
        # to the answered ones (seconds of encoding each) rather than a fixed 2 s, so a loaded
        # machine slows both sides alike.
        slowest_refusal = max(r.elapsed.total_seconds() for r in refused)
        fastest_answer = min(r.elapsed.total_seconds() for r in answered)
        assert slowest_refusal < fastest_answer / 2, seen
        assert _post(url, {"input": "after the rush"}, key=None).status_code == 200
    finally:
        serve.delete("overload")


def test_a_request_over_the_time_limit_gets_408_once_and_the_server_goes_on(exported, server):
    from ray import serve

    url = _deploy(exported, server, "slow", request_timeout_s=0.05)
    try:
        reply = _post(url, _big(256), key=None)
        assert reply.status_code == 408, reply.text
        assert reply.json()["error"]["code"] == "timeout"
        # x-should-retry: false, so the openai client does not send it 3 times (its default)
        attempts = []
        client = openai.OpenAI(base_url=url, api_key="unused", http_client=httpx.Client(
            timeout=60, event_hooks={"request": [attempts.append]}))
        with pytest.raises(openai.APIStatusError) as refused:
            client.embeddings.create(model="test-embed", input=_big(256)["input"])
        assert refused.value.status_code == 408 and len(attempts) == 1
        assert httpx.get(f"{url.removesuffix('/v1')}/health", timeout=10).status_code == 200
    finally:
        serve.delete("slow")


def _wait_until_a_replica_holds_a_request(app_name, sender, timeout_s=120):
    """Until a replica of application ``app_name`` counts a request in flight — by Serve's own
    count (``get_num_ongoing_requests``, what its router reads; its replica actors are named
    ``SERVE_REPLICA::<app>#<deployment>#<id>`` in the ``serve`` namespace). A fixed sleep
    raced the request on a loaded machine: deleted before the request reached the replica,
    the app answers 404 and the test proves nothing about draining."""
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert sender.is_alive(), "the request ended before it was seen in flight"
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if (actor["namespace"] == "serve"
                    and actor["name"].startswith(f"SERVE_REPLICA::{app_name}#")):
                replica = ray.get_actor(actor["name"], namespace="serve")
                if ray.get(replica.get_num_ongoing_requests.remote(), timeout=30) > 0:
                    return
        time.sleep(0.05)
    pytest.fail(f"no replica of {app_name!r} held the request within {timeout_s} s")


def test_shutdown_finishes_the_requests_in_flight(exported, server):
    import threading

    from ray import serve

    url = _deploy(exported, server, "drain", graceful_shutdown_timeout_s=30)
    result = {}
    # ~10 s of encoding on 2 idle cores: long enough to be in flight at the delete, short
    # enough to stay clear of the 30 s request timeout on a busy machine
    sender = threading.Thread(target=lambda: result.update(reply=_post(url, _big(192),
                                                                       key=None)))
    sender.start()
    _wait_until_a_replica_holds_a_request("drain", sender)
    serve.delete("drain")  # returns once the replica has shut down
    sender.join(timeout=60)
    reply = result["reply"]
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["data"]) == 192
    assert _post(url, {"input": "gone"}, key=None).status_code == 404  # the app is gone


def test_a_request_larger_than_the_batch_is_split_and_keeps_its_order(exported, server):
    from ray import serve

    url = _deploy(exported, server, "wide", max_batch_size=4)
    try:
        texts = [f"sentence {i} about {'insulin' if i % 2 else 'glucose'}" for i in range(10)]
        reply = _post(url, {"input": texts}, key=None)
        assert reply.status_code == 200, reply.text
        served = np.array([d["embedding"] for d in reply.json()["data"]])
        expected = load_encoder(exported / "export", EncoderBackend.onnx).encode(texts)
        assert np.allclose(served, expected, atol=1e-5)
    finally:
        serve.delete("wide")


def test_the_proxy_waits_longer_than_the_replica_so_a_408_is_openai_shaped(server):
    from ray.serve.context import _get_global_client

    _, config = server
    proxy = _get_global_client().http_config
    assert proxy.request_timeout_s == config.request_timeout_s + lifecycle.PROXY_GRACE_S


def test_stopping_leaves_other_applications_on_the_cluster_running(exported, server):
    """On a shared cluster `stop` deletes this application only; and a second server asking
    for another port where Serve already listens is told so instead of being misrouted."""
    from ray import serve

    url, config = server
    other = _deploy(exported, server, "other")
    try:
        with pytest.raises(ValueError, match=f"already runs on this cluster at "
                                             f"127.0.0.1:{config.port}"):
            lifecycle.start(exported, config.model_copy(update={"port": free_port()}))
        lifecycle.stop()
        assert lifecycle.APP_NAME not in serve.status().applications
        assert _post(other, {"input": "still here"}, key=None).status_code == 200
    finally:
        lifecycle.start(exported, config)  # the module's server again
        serve.delete("other")
    assert _post(url, {"input": "back again"}).status_code == 200
