"""Serve: an OpenAI-compatible ``/v1/embeddings`` on Ray Serve, backed by the exported ONNX model.

Requests are micro-batched across clients with ``@serve.batch`` (the batch size counts texts, not
requests) and replicas autoscale between ``min_replicas`` and ``max_replicas``. The server binds
127.0.0.1 unless told otherwise.

    customir serve runs/demo/export --port 8000
    curl -s localhost:8000/v1/embeddings -d '{"input": "hello"}' -H 'content-type: application/json'
"""


import time
from pathlib import Path

from customir.config import RayConfig, ServeConfig
from customir.manifest import log
from customir.serve.openai_schema import (Embedding, EmbeddingRequest, EmbeddingResponse,
                                          ModelCard, ModelList, RequestError, Usage,
                                          encode_embedding, validate_request)

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at
# runtime, and inside a Ray Serve class string annotations do not resolve.
APP_NAME = "customir"


def build_app(model_dir: str | Path, config: ServeConfig):
    """The Ray Serve application (a bound deployment) serving ``model_dir``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from ray import serve

    app = FastAPI(title="customir embeddings")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}"
                            for e in exc.errors()[:3])
        return JSONResponse(RequestError(message or "invalid request").body(), status_code=400)

    @app.exception_handler(RequestError)
    async def _refused(_: Request, exc: RequestError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @serve.deployment(
        autoscaling_config={"min_replicas": config.min_replicas,
                            "max_replicas": config.max_replicas,
                            "target_ongoing_requests": 4},
        ray_actor_options={"num_cpus": 1},
        max_ongoing_requests=64,
    )
    @serve.ingress(app)
    class EmbeddingServer:
        def __init__(self, model_dir: str, config: ServeConfig):
            from customir.serve.encoder import OnnxEncoder

            self.encoder = OnnxEncoder(model_dir)
            self.config = config
            self._encode_batch.set_max_batch_size(config.max_batch_size)
            self._encode_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

        @serve.batch(batch_size_fn=lambda items: sum(len(texts) for texts in items))
        async def _encode_batch(self, requests: list[list[str]]):
            flat = [text for texts in requests for text in texts]
            vectors = self.encoder.encode(flat)
            out, start = [], 0
            for texts in requests:
                out.append(vectors[start:start + len(texts)])
                start += len(texts)
            return out

        @app.post("/v1/embeddings", response_model=EmbeddingResponse)
        async def embeddings(self, request: EmbeddingRequest) -> EmbeddingResponse:
            texts = validate_request(request, self.config.model_name, self.encoder.dimension,
                                     self.config.max_input_items)
            vectors = await self._encode_batch(texts)
            tokens = self.encoder.count_tokens(texts)
            return EmbeddingResponse(
                data=[Embedding(index=i, embedding=encode_embedding(v, request.encoding_format))
                      for i, v in enumerate(vectors)],
                model=self.config.model_name, usage=Usage(prompt_tokens=tokens,
                                                          total_tokens=tokens))

        @app.get("/v1/models", response_model=ModelList)
        async def models(self) -> ModelList:
            return ModelList(data=[ModelCard(id=self.config.model_name)])

        @app.get("/health")
        async def health(self) -> dict:
            return {"status": "ok"}

    return EmbeddingServer.bind(str(model_dir), config)


def start(model_dir: str | Path, config: ServeConfig) -> str:
    """Deploy on the Ray cluster this process is connected to; return the base URL (…/v1)."""
    from ray import serve

    model_dir = Path(model_dir)
    if not (model_dir / "model.onnx").is_file():
        raise FileNotFoundError(f"{model_dir} has no model.onnx; run `customir export` first")
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(model_dir, config), name=APP_NAME, route_prefix="/")
    url = f"http://{config.host}:{config.port}/v1"
    log(f"serve: {config.model_name} at {url}/embeddings")
    return url


def stop() -> None:
    from ray import serve

    serve.shutdown()


def serve_forever(model_dir: str | Path, config: ServeConfig,
                  ray_config: RayConfig | None = None) -> None:
    """`customir serve`: run until interrupted."""
    from customir.runtime import ray_session

    with ray_session(ray_config):
        start(model_dir, config)
        log("serve: press Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            stop()
