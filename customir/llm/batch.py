"""Answer a table of chat requests on Ray Data with the configured backend.

A request is a row of :data:`REQUESTS` (chat messages and the JSON schema of the reply, both as
JSON text); its answer a row of :data:`REPLIES` (raw text, why generation stopped, tokens, or the
error that prevented an answer). Callers validate the text and re-ask what failed (see
:mod:`customir.queries.asking`), so every backend shares one retry policy:

- ``llamacpp`` / ``scripted``: one model per actor, requests answered one after the other (the
  few-shot prefix's KV cache is reused between them).
- ``openai``: per actor, a thread pool keeps ``llm.concurrency`` requests in flight and the
  backend's rate limiter starts at most ``llm.qps`` per second. Each reply records the HTTP
  attempts it took (``attempts``: 1 + the client's retries; null for in-process backends).
- ``vllm``: Ray Data's own LLM batch processor (:mod:`customir.llm.vllm_batch`).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from customir.config import LLMBackend, LLMConfig
from customir.corpus.readers import whole_characters

REQUESTS = pa.schema([
    ("request_id", pa.string()),
    ("messages", pa.string()),       # JSON list of {"role", "content"}
    ("schema", pa.string()),         # JSON schema of the reply
    ("max_tokens", pa.int32()),
    ("temperature", pa.float32()),
])

REPLIES = pa.schema([
    ("request_id", pa.string()),
    ("text", pa.string()),
    ("finish_reason", pa.string()),  # stop | length | error
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("error", pa.string()),          # why no answer came back (after the backend's retries)
    ("attempts", pa.int32()),        # HTTP requests sent for this reply (null: not over HTTP)
])


def request_row(request_id: str, messages: list[dict], schema: dict, max_tokens: int,
                temperature: float) -> dict:
    return {"request_id": request_id, "messages": json.dumps(messages),
            "schema": json.dumps(schema), "max_tokens": max_tokens, "temperature": temperature}


def error_reply(request_id: str, error: str, attempts: int | None = None) -> dict:
    return {"request_id": request_id, "text": None, "finish_reason": "error", "prompt_tokens": 0,
            "completion_tokens": 0, "error": error[:500], "attempts": attempts}


# What an endpoint answers when asking again cannot help: it refuses the key, the model or the
# request itself (HTTP 400, 401, 403, 404, 422 as the openai client names them).
REFUSALS = ("BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError",
            "UnprocessableEntityError")


def is_refusal(error: str | None) -> bool:
    """Whether a reply's ``error`` (as :func:`describe_error` wrote it) is a refusal.

    >>> is_refusal("AuthenticationError: Error code: 401 - Incorrect API key provided")
    True
    >>> is_refusal("APIConnectionError: Connection error."), is_refusal(None)
    (False, False)
    """
    return bool(error) and error.split(":", 1)[0] in REFUSALS


def describe_error(exc: BaseException) -> str:
    """``Type: message``, followed by the cause a client wrapped (its message alone is often
    just "Connection error.").

    >>> describe_error(RuntimeError("no reply"))
    'RuntimeError: no reply'
    """
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    return f"{text} ({type(cause).__name__}: {cause})" if cause is not None else text


class ChatAnswerer:
    """Ray Data UDF: REQUESTS rows in, REPLIES rows out. Loads the LLM once per actor."""

    def __init__(self, config: LLMConfig):
        from customir.llm.protocol import load_llm

        self.llm = load_llm(config)
        self.threads = config.concurrency if config.backend == LLMBackend.openai else 1

    def _attempts(self) -> int | None:
        """HTTP attempts of this thread's last request (backends that count them)."""
        take = getattr(self.llm, "take_request_counts", None)
        return take().attempts if take else None

    def _answer(self, row: dict) -> dict:
        try:
            reply = self.llm.complete_json(json.loads(row["messages"]), json.loads(row["schema"]),
                                           row["max_tokens"], row["temperature"])
        except Exception as exc:  # noqa: BLE001 - any failure to answer is counted, not fatal
            return error_reply(row["request_id"], describe_error(exc), self._attempts())
        # an endpoint's JSON may carry a "\ud83d" escape: half a character, which no Parquet
        # column takes; it becomes U+FFFD (and a query holding one is re-asked)
        return {"request_id": row["request_id"], "text": whole_characters(reply.text),
                "finish_reason": reply.finish_reason, "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens, "error": None,
                "attempts": self._attempts()}

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        if self.threads > 1 and len(rows) > 1:
            with ThreadPoolExecutor(min(self.threads, len(rows))) as pool:
                out = list(pool.map(self._answer, rows))
        else:
            out = [self._answer(row) for row in rows]
        return pa.Table.from_pylist(out, schema=REPLIES)


def llm_gpus(config: LLMConfig, cluster_gpus: float | None = None) -> float:
    """GPUs per in-process LLM actor: ``llm.gpus_per_worker``, else 1 for llama.cpp on a cluster
    with GPUs (``cluster_gpus``: the running cluster's when None), else 0.

    >>> llm_gpus(LLMConfig(backend="llamacpp"), cluster_gpus=4)
    1.0
    >>> llm_gpus(LLMConfig(backend="llamacpp"), cluster_gpus=0)
    0.0
    >>> llm_gpus(LLMConfig(backend="scripted", gpus_per_worker=0.5), cluster_gpus=0)
    0.5
    """
    if config.gpus_per_worker is not None:
        return float(config.gpus_per_worker)
    if config.backend != LLMBackend.llamacpp:
        return 0.0
    if cluster_gpus is None:
        import ray

        cluster_gpus = ray.cluster_resources().get("GPU", 0)
    return 1.0 if cluster_gpus > 0 else 0.0


def answer_requests(requests: pa.Table, config: LLMConfig, *, batch_size: int,
                    num_workers: int = 1) -> pa.Table:
    """One REPLIES row per request (in any order), on the Ray session already running."""
    if requests.num_rows == 0:
        return REPLIES.empty_table()
    from customir.llm.protocol import check_llm

    check_llm(config)  # here, not as an actor's death in its __init__ (a remote traceback)
    if config.backend == LLMBackend.vllm:
        from customir.llm.vllm_batch import answer_with_vllm

        return answer_with_vllm(requests, config, batch_size=batch_size)
    from customir.runtime import map_table

    if config.backend == LLMBackend.openai:  # keep the thread pool busy
        batch_size = max(batch_size, 2 * config.concurrency)
    replies = map_table(requests, ChatAnswerer, constructor_kwargs={"config": config},
                        batch_size=batch_size, concurrency=num_workers,
                        num_gpus=llm_gpus(config), resources=config.resources_per_worker,
                        restarts=config.worker_restarts)
    return replies if replies is not None else REPLIES.empty_table()
