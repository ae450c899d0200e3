"""The HTTP backend: any OpenAI-compatible endpoint (vLLM, a llama.cpp server, OpenAI itself).

Query writing uses chat completions with a JSON-schema ``response_format``. Likelihood scoring
uses the legacy completions endpoint with ``echo=True, logprobs=1``, which vLLM and llama.cpp
servers implement: the prompt's own token log-probabilities come back, and the continuation's
tokens are found by their character offsets.

Why the official client in threads rather than Ray's ``HttpRequestProcessorConfig``: the stage
re-asks only the parts of a reply that failed validation (a bounded number of rounds, the same
for every backend), and scoring needs the echo/logprobs endpoint that processor does not wrap.
So each worker runs up to ``llm.concurrency`` requests at once from a thread pool (the work is
waiting on the network), starts at most ``llm.qps`` per second (:class:`RateLimiter`), and
leaves timeouts and retries with exponential backoff on 408/409/429/5xx and connection errors to
the client (``timeout_s``, ``max_retries``; a 429's ``Retry-After`` sets the wait).

Retries stay the client's (its policy is tested upstream: Retry-After in seconds, milliseconds or
as a date, jitter, ``x-should-retry``), and two httpx event hooks make them visible and complete:

- a request hook counts every attempt into :class:`RequestCounts` of the calling thread (the
  sync client runs hooks in that thread, so the counts belong to the row the thread works on
  while other threads of the pool work on theirs): ``take_request_counts()`` hands them over;
- a response hook turns a 2xx reply whose body is not a JSON object (empty, an HTML page from
  a proxy, cut off, ``null``, a list) or is an error (``{"error": ...}`` sent with 200) into
  ``httpx2.DecodingError`` (the HTTP library of the openai client), which the client retries
  like a dropped connection, so every transient fault gets the same bounded retries (at most
  ``1 + max_retries`` attempts per call) instead of garbage going unretried.

A JSON object without what was asked for (no choices, a choice without a message, logprobs
without token offsets) is a :class:`MalformedReply` that names the endpoint. Every call that
ends in an error, wherever it is raised, counts once in ``RequestCounts.failed``. A 401 or 403
while ``api_key_env`` names an unset variable says so (the variable's name only when it looks
like one, so a key pasted there is never echoed).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass

from customir.config import LLMConfig, ResponseFormat, env_var_label
from customir.llm.protocol import Completion, check_llm


class RateLimiter:
    """Start at most ``qps`` calls per second across threads (calls are spaced 1/qps apart).

    >>> limiter = RateLimiter(None); limiter.wait() <= time.monotonic()  # no limit: at once
    True
    """

    def __init__(self, qps: float | None):
        self.interval = 1.0 / qps if qps else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Sleep until this call's turn; returns its start time (``time.monotonic``)."""
        now = time.monotonic()
        if not self.interval:
            return now
        with self._lock:
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)
        return start


@dataclass
class RequestCounts:
    """Calls a thread made to the endpoint, the HTTP attempts they took, and the calls that
    failed after their retries."""

    requests: int = 0
    attempts: int = 0
    failed: int = 0

    @property
    def retries(self) -> int:
        return self.attempts - self.requests


class MalformedReply(ValueError):
    """A reply in JSON that lacks what the request asked for."""


def reply_body_problem(content: bytes) -> str | None:
    """Why a 2xx reply's body is no reply at all (retried), or None.

    >>> reply_body_problem(b'{"choices": []}') is None  # checked by the caller
    True
    >>> reply_body_problem(b'{"error": {"message": "model overloaded"}}')
    'reply is an error: model overloaded'
    >>> reply_body_problem(b"null")
    "reply body is not a JSON object: b'null'"
    """
    try:
        body = json.loads(content)
    except ValueError:
        return f"reply body is not JSON: {content[:80]!r}"
    if not isinstance(body, dict):
        return f"reply body is not a JSON object: {content[:80]!r}"
    if "error" in body and "choices" not in body:
        error = body["error"]
        message = error.get("message") if isinstance(error, dict) else None
        return f"reply is an error: {message or json.dumps(error)}"[:300]
    return None


def require_json_body(response) -> None:
    """httpx response hook: a successful reply must carry a JSON object that is not an error
    (see the module doc)."""
    import httpx2

    if not response.is_success:
        return
    response.read()
    if (problem := reply_body_problem(response.content)) is not None:
        raise httpx2.DecodingError(problem, request=response.request)


class OpenAIHttpLLM:
    def __init__(self, config: LLMConfig):
        from openai import DefaultHttpxClient, OpenAI

        check_llm(config)  # base_url is set
        # Local servers usually accept any key; hosted ones fail loudly on the first call.
        api_key = os.environ.get(config.api_key_env)
        self._unset_key = None if api_key else config.api_key_env
        self.name = config.model
        self._config = config
        self._counts = threading.local()
        http = DefaultHttpxClient(event_hooks={"request": [self._count_attempt],
                                               "response": [require_json_body]})
        self._client = OpenAI(base_url=config.base_url, api_key=api_key or "not-set",
                              http_client=http, timeout=config.timeout_s,
                              max_retries=config.max_retries)
        self._limiter = RateLimiter(config.qps)

    def _thread_counts(self) -> RequestCounts:
        if not hasattr(self._counts, "value"):
            self._counts.value = RequestCounts()
        return self._counts.value

    def _count_attempt(self, request) -> None:
        self._thread_counts().attempts += 1

    def take_request_counts(self) -> RequestCounts:
        """This thread's counts since its last call (then starts again from zero)."""
        counts = self._thread_counts()
        self._counts.value = RequestCounts()
        return counts

    def _create(self, endpoint, read, **request):
        """``read(reply)`` of one call through the client (its retries included), counted for
        this thread: a failure to read the reply counts as a failed call too."""
        from openai import AuthenticationError, PermissionDeniedError

        counts = self._thread_counts()
        counts.requests += 1
        self._limiter.wait()
        try:
            return read(endpoint.create(model=self._config.model, **request))
        except Exception as exc:
            counts.failed += 1
            if self._unset_key and isinstance(exc, (AuthenticationError, PermissionDeniedError)):
                exc.message = (f"{exc.message} (llm.api_key_env: "
                               f"{env_var_label(self._unset_key)} is not set)")
                exc.args = (exc.message, *exc.args[1:])
            raise

    def _first_choice(self, reply):
        if not reply.choices:
            raise MalformedReply(f"{self._config.base_url} returned no choices")
        return reply.choices[0]

    def complete_json(self, messages: list[dict], schema: dict, max_tokens: int,
                      temperature: float | None = None) -> Completion:
        if self._config.response_format == ResponseFormat.json_object:
            response_format = {"type": "json_object", "schema": schema}
        else:
            response_format = {"type": "json_schema",
                               "json_schema": {"name": "reply", "schema": schema}}
        return self._create(
            self._client.chat.completions, self._read_completion, messages=messages,
            max_tokens=max_tokens,
            temperature=self._config.temperature if temperature is None else temperature,
            response_format=response_format,
        )

    def _read_completion(self, reply) -> Completion:
        choice, usage = self._first_choice(reply), reply.usage
        if choice.message is None:
            raise MalformedReply(f"{self._config.base_url} returned a choice without a message")
        return Completion(choice.message.content or "", choice.finish_reason or "stop",
                          usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0)

    def _continuation_logprobs(self, prompt: str, continuation: str) -> list[float]:
        text = prompt + continuation

        def read(reply) -> list[float]:
            logprobs = self._first_choice(reply).logprobs
            if logprobs is None or not logprobs.token_logprobs:
                raise MalformedReply(f"{self._config.base_url} returned no prompt "
                                     "log-probabilities; the server must support echo=True "
                                     "with logprobs")
            offsets = logprobs.text_offset
            if not isinstance(offsets, list) or len(offsets) != len(logprobs.token_logprobs):
                raise MalformedReply(f"{self._config.base_url} returned log-probabilities "
                                     "without a text_offset per token")
            picked = [lp for offset, lp in zip(offsets, logprobs.token_logprobs)
                      if len(prompt) <= offset < len(text) and lp is not None]
            if not picked:
                raise ValueError("no continuation tokens found in the echoed prompt")
            return picked

        return self._create(self._client.completions, read, prompt=text, max_tokens=1,
                            temperature=0.0, echo=True, logprobs=1)

    def query_log_likelihood(self, prompt: str, continuation: str) -> float:
        picked = self._continuation_logprobs(prompt, continuation)
        return sum(picked) / len(picked)

    def choice_log_likelihoods(self, prompt: str, choices: list[str]) -> list[float]:
        # One echo request per choice: exact for multi-token choices (" 10"), and servers with
        # prefix caching (vLLM, llama.cpp) do not recompute the shared prompt.
        return [sum(self._continuation_logprobs(prompt, c)) for c in choices]
