"""Serve: an OpenAI-compatible ``/v1/embeddings`` on Ray Serve.

Requests are micro-batched across clients with ``@serve.batch`` (the batch size counts texts, not
requests) and replicas autoscale between ``min_replicas`` and ``max_replicas`` around
``target_ongoing_requests``. The encoder backend (onnxruntime fp32/int8, torch, TensorRT) comes
from the config. Starting and stopping it on a cluster (``customir serve``, the API key, the
ingress settings) are in :mod:`customir.serve.lifecycle`.

Bad requests always get an OpenAI-shaped error with a 4xx code: 400 (invalid input, malformed
JSON, limits), 401 (API key), 404 (unknown model), 408 (not answered within
``request_timeout_s``), 413 (body too large). An overloaded server (``max_queued_requests``
waiting) answers 503 with ``Retry-After`` at once; on shutdown or downscaling a replica finishes
its in-flight requests (``graceful_shutdown_timeout_s``). A 500 means a fault of the server
itself, never of the request. Every 4xx carries ``x-should-retry: false``, which the official
``openai`` client obeys: it would otherwise send a timed-out (408) request three times, tripling
the load that made it time out. Unknown paths (404), wrong methods (405, with ``Allow``) and a
body that is not UTF-8 (400) get the same OpenAI error shape as everything else.
"""

import asyncio
import hmac
import json
import logging
from pathlib import Path

from customir.config import EncoderBackend, ServeConfig
from customir.node_files import ShippedFolder, resolve
from customir.serve.openai_schema import (Embedding, EmbeddingRequest, EmbeddingResponse,
                                          ModelCard, ModelList, RequestError, Usage,
                                          encode_embedding, validate_request,
                                          validation_message)

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at
# runtime, and inside a Ray Serve class string annotations do not resolve.

# A refused request fails again the same way; a 408 retried by the client adds load to a server
# that is already too slow for it. (openai-python: `_should_retry` reads this header first.)
NO_RETRY = {"x-should-retry": "false"}


def resolve_model_dir(path: str | Path, backend: EncoderBackend) -> Path:
    """Accept a run folder (uses its export/), an export folder, or a sentence-transformers
    folder (torch backend only); say clearly what is missing otherwise."""
    from customir.serve.encoder import EXPORT_CONFIG, MODEL_FILES

    path = Path(path)
    if (path / "modules.json").is_file() and backend == EncoderBackend.torch:
        return path
    folder = next((f for f in (path / "export", path) if (f / EXPORT_CONFIG).is_file()),
                  None)
    if folder is None:
        raise FileNotFoundError(
            f"{path} is neither a run folder with export/, an export folder, nor (with "
            "--backend torch) a sentence-transformers folder; run `customir export` first")
    if backend == EncoderBackend.torch:  # the export's source model, as TorchEncoder loads it
        source = Path(json.loads((folder / EXPORT_CONFIG).read_text())["source_model"])
        if not (source / "modules.json").is_file():
            raise FileNotFoundError(
                f"{folder} was exported from {source}, which this machine does not have; "
                "serve that model folder (RUN/train/model) with --backend torch instead")
    needed = MODEL_FILES.get(backend)
    if needed and not (folder / needed).is_file():
        why = {EncoderBackend.onnx_int8: "export writes it only when the int8 graph passed "
               "its checks (see the export manifest); serve --backend onnx instead",
               EncoderBackend.tensorrt: "export it on a CUDA GPU with export.tensorrt: true"}
        raise FileNotFoundError(f"{folder} has no {needed} for --backend {backend.value}: "
                                f"{why.get(backend, 'run `customir export` again')}")
    return folder


class _BodyLimit:
    """ASGI middleware: a body declared larger than ``max_bytes`` gets 413 before it is read; one
    sent without a declared length (``Transfer-Encoding: chunked``) is counted as it arrives and
    gets 413 once past the limit. (A plain ASGI class: Starlette's ``@app.middleware("http")``
    wraps every request in extra tasks and streams, measurable per request on a small
    machine.)"""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if length.isdigit():
            if int(length) > self.max_bytes:
                return await self._refuse(f"{length} bytes", scope, receive, send)
            return await self.app(scope, receive, send)
        parts, size = [], 0
        while True:  # no declared length: read the body here, at most max_bytes of it
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_bytes:
                return await self._refuse(f"over {self.max_bytes} bytes", scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(parts), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, size: str, scope, receive, send):
        error = RequestError(f"request body of {size} is over the limit of {self.max_bytes}",
                             status=413)
        await error_response(error)(scope, receive, send)


def error_response(error: RequestError, headers: dict | None = None):
    """The OpenAI-shaped JSON response for ``error``; a 4xx tells clients not to retry."""
    from fastapi.responses import JSONResponse

    headers = {**(headers or {}), **(NO_RETRY if error.status < 500 else {})}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _encode_requests(encoder, requests: list[list[str]], batch_size: int) -> list:
    """Embed a micro-batch of requests' texts in one pass: per request ``(vectors, tokens
    embedded)``. If the pass fails, each request is encoded alone, so only a request whose own
    text breaks the encoder fails (its exception in its place), not every request that happened
    to share its batch."""
    flat = [text for texts in requests for text in texts]
    try:
        vectors, tokens = encoder.encode_counted(flat, batch_size)
    except Exception:
        logging.getLogger(__name__).exception(
            "encoding a batch of %d requests failed; encoding them one by one", len(requests))
        out = []
        for texts in requests:
            try:
                vectors, tokens = encoder.encode_counted(texts, batch_size)
                out.append((vectors, sum(tokens)))
            except Exception as exc:
                out.append(exc)
        return out
    out, start = [], 0
    for texts in requests:
        end = start + len(texts)
        out.append((vectors[start:end], sum(tokens[start:end])))
        start = end
    return out


def build_app(model_dir: str | Path | ShippedFolder, config: ServeConfig,
              api_key: str | None = None):
    """The Ray Serve application (a bound deployment) serving ``model_dir``: a path every
    replica's node sees, or a :class:`ShippedFolder` (replicas on other nodes than the one that
    holds it load a copy)."""
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from ray import serve
    from ray.serve.config import BackpressureConfig
    from starlette.exceptions import HTTPException

    app = FastAPI(title="customir embeddings")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(RequestError(validation_message(
            exc.errors(), request.headers.get("content-type", ""))))

    @app.exception_handler(RequestError)
    async def _refused(_: Request, exc: RequestError):
        return error_response(exc)

    # Starlette's own refusals: unknown path (404), wrong method (405), a body FastAPI cannot
    # decode (400, e.g. not UTF-8); without this they answer FastAPI's {"detail": ...}
    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        path = request.url.path
        messages = {400: "the request body could not be parsed; send UTF-8 encoded JSON",
                    404: f"no route {path}; use POST /v1/embeddings or GET /v1/models",
                    405: f"{request.method} is not allowed on {path}"}
        message = messages.get(exc.status_code, str(exc.detail))
        return error_response(RequestError(message, status=exc.status_code), exc.headers)

    @app.exception_handler(Exception)
    async def _fault(_: Request, exc: Exception):
        error = RequestError(f"internal error: {type(exc).__name__}", status=500)
        body = error.body()
        body["error"]["type"] = "server_error"
        return JSONResponse(body, status_code=500)

    app.add_middleware(_BodyLimit, max_bytes=config.max_body_bytes)

    # async: a plain `def` dependency would run in a worker thread for every request
    async def _authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise RequestError("missing or invalid API key (Authorization: Bearer ...)",
                               status=401, code="invalid_api_key")

    @serve.deployment(
        autoscaling_config={"min_replicas": config.min_replicas,
                            "max_replicas": config.max_replicas,
                            "target_ongoing_requests": config.target_ongoing_requests},
        ray_actor_options={"num_cpus": 1},
        max_ongoing_requests=config.max_ongoing_requests,
        # a bounded queue: past it the proxy answers 503 + Retry-After at once
        max_queued_requests=config.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503,
                                               retry_after_s=config.overload_retry_after_s),
        graceful_shutdown_timeout_s=config.graceful_shutdown_timeout_s,
    )
    @serve.ingress(app)
    class EmbeddingServer:
        def __init__(self, model_dir: str | ShippedFolder, config: ServeConfig):
            from customir.serve.encoder import load_encoder

            from concurrent.futures import ThreadPoolExecutor

            self.encoder = load_encoder(resolve(model_dir), config.backend,
                                        config.encoder_threads)
            self._encoding = ThreadPoolExecutor(1, thread_name_prefix="encode")
            self.config = config
            self._encode_batch.set_max_batch_size(config.max_batch_size)
            self._encode_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

        @serve.batch(batch_size_fn=lambda items: sum(len(texts) for texts in items))
        async def _encode_batch(self, requests: list[list[str]]):
            # in a thread (onnxruntime and the tokenizer release the GIL), so the replica's
            # event loop keeps parsing and answering requests while a batch is encoded (and
            # tokens are counted there, from the same tokenization)
            return await asyncio.get_running_loop().run_in_executor(
                self._encoding, _encode_requests, self.encoder, requests,
                self.config.max_batch_size)

        @app.post("/v1/embeddings", response_model=EmbeddingResponse,
                  dependencies=[Depends(_authorize)])
        async def embeddings(self, request: EmbeddingRequest) -> EmbeddingResponse:
            texts = validate_request(request, self.config.model_name, self.encoder.dimension,
                                     self.config.max_input_items, self.config.max_input_chars)
            # @serve.batch refuses an item larger than its batch: a request with more inputs
            # than max_batch_size goes in as several items (batched with other requests')
            size = self.config.max_batch_size
            parts = [self._encode_batch(texts[i:i + size]) for i in range(0, len(texts), size)]
            try:
                done = await asyncio.wait_for(asyncio.gather(*parts),
                                              self.config.request_timeout_s)
            except asyncio.TimeoutError:
                raise RequestError(f"request timed out after {self.config.request_timeout_s} s",
                                   status=408, code="timeout") from None
            failed = next((part for part in done if isinstance(part, Exception)), None)
            if failed is not None:
                raise failed  # this request's own fault: a 500 for it alone
            vectors = [v for part_vectors, _ in done for v in part_vectors]
            tokens = sum(part_tokens for _, part_tokens in done)
            return EmbeddingResponse(
                data=[Embedding(index=i, embedding=encode_embedding(v, request.encoding_format))
                      for i, v in enumerate(vectors)],
                model=self.config.model_name, usage=Usage(prompt_tokens=tokens,
                                                          total_tokens=tokens))

        @app.get("/v1/models", response_model=ModelList, dependencies=[Depends(_authorize)])
        async def models(self) -> ModelList:
            return ModelList(data=[ModelCard(id=self.config.model_name)])

        @app.get("/health")
        async def health(self) -> dict:
            # A replica takes traffic only after __init__ loaded the encoder; until then the
            # Serve proxy answers 503 for this route.
            return {"status": "ready", "backend": self.config.backend.value,
                    "dimension": self.encoder.dimension}

    return EmbeddingServer.bind(model_dir if isinstance(model_dir, ShippedFolder)
                                else str(model_dir), config)
