"""A fault-injecting OpenAI-compatible server on loopback, for tests and benchmarks.

:class:`FaultServer` answers ``POST /v1/chat/completions`` and ``POST /v1/completions`` (echo
with log-probabilities, as verification asks) with the replies of the scripted LLM
(:mod:`customir.llm.scripted`), so a good reply is exactly what ``llm.backend: scripted`` would
have said, and it breaks a share of the requests the way real endpoints do (:class:`Fault`).

Which request gets which fault follows a :class:`FaultPlan`: a seeded draw from the request's
body and the how-many-th time that body arrived, so a run's faults do not depend on the order
in which concurrent threads reach the server (a client's retry of a request is the same body,
attempt + 1). ``max_faults_per_request`` caps the faults one body receives, which makes every
request answerable within a known number of retries.

``GET /stats`` (and :meth:`FaultServer.stats`) returns ``{"requests": n, "answered": n,
"faults": {kind: n}}``: every request counted once, faults only where one was injected.

>>> import httpx
>>> with FaultServer(FaultPlan(rates={Fault.server_error: 1.0})) as server:
...     status = httpx.post(f"{server.url}/chat/completions", json={}).status_code
...     status, server.stats()["faults"]["server_error"]
(500, 1)
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from customir.llm.prompts import JUDGE_INSTRUCTION, JUDGE_QUESTIONS, SCORING_INSTRUCTION
from customir.llm.scripted import ScriptedLLM

__all__ = ["Fault", "FaultPlan", "FaultServer", "ScriptedAnswerer"]


class Fault(str, enum.Enum):
    """How the server breaks a request.

    - ``server_error``: HTTP 500 with a JSON error body (clients retry it).
    - ``rate_limited``: HTTP 429 with ``Retry-After: retry_after_s`` (clients wait that long).
    - ``timeout``: no answer for ``hang_s`` (set it above the client's timeout), then the
      connection is closed.
    - ``slow_body``: a good reply whose body arrives in ``slow_chunks`` pieces ``slow_gap_s``
      apart (each gap under the client's read timeout: slow, but it must be accepted).
    - ``garbage``: HTTP 200 with a JSON content type and a body that is not JSON (an HTML error
      page from a proxy).
    - ``empty``: HTTP 200 with an empty body.
    - ``injection``: a well-formed chat reply whose text fields repeat an instruction planted
      in the passage (a sentence matching ``FaultPlan.injection_pattern``), as a model that
      follows the document instead of the prompt would. Requests with no planted instruction
      (and log-probability requests) get a good reply and count as no fault.
    """

    server_error = "server_error"
    rate_limited = "rate_limited"
    timeout = "timeout"
    slow_body = "slow_body"
    garbage = "garbage"
    empty = "empty"
    injection = "injection"


@dataclass(frozen=True)
class FaultPlan:
    """Which share of requests gets each fault, and how each fault behaves."""

    rates: dict[Fault, float] = field(default_factory=dict)  # shares of requests, sum <= 1
    seed: int = 0
    max_faults_per_request: int | None = None  # then the same body is answered (None: no cap)
    retry_after_s: float = 1.0
    hang_s: float = 2.0
    slow_chunks: int = 4
    slow_gap_s: float = 0.1
    injection_pattern: str = r"[^.!?\n]*\b(?:ignore|disregard)\b[^.!?\n]*[.!?]?"

    def __post_init__(self):
        rates = {Fault(k): float(v) for k, v in self.rates.items()}
        if any(not 0 <= r <= 1 for r in rates.values()) or sum(rates.values()) > 1 + 1e-9:
            raise ValueError(f"fault rates must be shares in [0, 1] summing to <= 1: {rates}")
        object.__setattr__(self, "rates", rates)

    @classmethod
    def every_fault(cls, share: float, **settings) -> "FaultPlan":
        """``share`` of the requests get a fault, split evenly over every kind of :class:`Fault`.

        >>> round(FaultPlan.every_fault(0.7).rates[Fault.garbage], 6)
        0.1
        """
        return cls(rates={kind: share / len(Fault) for kind in Fault}, **settings)

    def fault_for(self, key: str, attempt: int) -> Fault | None:
        """The fault for the ``attempt``-th arrival (0-based) of the request body ``key``.

        >>> plan = FaultPlan(rates={Fault.empty: 0.5}, seed=1)
        >>> [plan.fault_for("a", i) for i in range(3)] == [plan.fault_for("a", i) for i in range(3)]
        True
        """
        digest = hashlib.sha256(f"{self.seed}:{key}:{attempt}".encode()).digest()
        draw, edge = int.from_bytes(digest[:8], "big") / 2 ** 64, 0.0
        for kind in Fault:  # a fixed order, so a plan's draws never depend on dict order
            edge += self.rates.get(kind, 0.0)
            if draw < edge:
                return kind
        return None


_TOKEN = re.compile(r"\s*\S+")


class ScriptedAnswerer:
    """Good replies from :class:`~customir.llm.scripted.ScriptedLLM`, in OpenAI's wire format.

    Completions (``echo=True, logprobs``) split the echoed text where verification's prompts
    end (the judge's ``Answer:``/``Score:``, the scoring prompt's ``Query:``) and give the
    continuation's tokens log-probabilities that add up (judge) or average (likelihood) to the
    scripted LLM's scores, so verification over HTTP reaches the scripted backend's verdicts.
    """

    def __init__(self):
        self.llm = ScriptedLLM()

    def chat(self, body: dict) -> tuple[str, str, int, int]:
        """(content, finish_reason, prompt_tokens, completion_tokens) of a chat request."""
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema", {}).get("schema") if fmt.get("type") == "json_schema"
                  else fmt.get("schema")) or {}
        reply = self.llm.complete_json(body["messages"], schema, int(body.get("max_tokens") or 256))
        return reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens

    def echo_logprobs(self, text: str) -> dict:
        """The ``logprobs`` object of an echoed prompt: the prompt part as one token, then one
        token per word of the continuation."""
        prompt, continuation, score, is_total = self._split(text)
        pieces = [(m.start(), m.group()) for m in _TOKEN.finditer(continuation)]
        per_token = score / len(pieces) if is_total and pieces else score
        return {"tokens": [prompt] + [piece for _, piece in pieces],
                "text_offset": [0] + [len(prompt) + start for start, _ in pieces],
                "token_logprobs": [None] + [per_token] * len(pieces), "top_logprobs": None}

    def _split(self, text: str) -> tuple[str, str, float, bool]:
        """(prompt, continuation, score, whether the score is the total or the mean per
        token) of an echoed verification prompt."""
        if text.startswith(JUDGE_INSTRUCTION):
            for question, choices in JUDGE_QUESTIONS.values():
                cut = question.rsplit("\n", 1)[-1]  # "Answer:" or "Score:"
                at = text.rfind(cut)
                if at >= 0 and question in text:
                    prompt, continuation = text[:at + len(cut)], text[at + len(cut):]
                    lls = self.llm.choice_log_likelihoods(prompt, choices)
                    total = lls[choices.index(continuation)] if continuation in choices else -20.0
                    return prompt, continuation, total, True
        if text.startswith(SCORING_INSTRUCTION) and "\nQuery:" in text:
            at = text.rfind("\nQuery:") + len("\nQuery:")
            prompt, continuation = text[:at], text[at:]
            mean = (self.llm.query_log_likelihood(prompt, continuation)
                    if continuation.strip() else -1.0)
            return prompt, continuation, mean, False
        return text[:1], text[1:], -1.0, False


class FaultServer:
    """An OpenAI-compatible endpoint on ``host`` (a free port) that injects :class:`Fault` s.

    Use as a context manager, or :meth:`start` / :meth:`stop`; ``url`` is its ``/v1`` base URL.
    ``events`` lists every request as ``(monotonic time, path, body key, attempt, fault)``.
    """

    def __init__(self, plan: FaultPlan | None = None, answerer: ScriptedAnswerer | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        self.plan = plan or FaultPlan()
        self.answerer = answerer or ScriptedAnswerer()
        self.events: list[tuple[float, str, str, int, Fault | None]] = []
        self._injection = re.compile(self.plan.injection_pattern, re.IGNORECASE)
        self._lock = threading.Lock()
        self._arrivals: Counter = Counter()
        self._faults_per_key: Counter = Counter()
        self._faults: Counter = Counter()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FaultServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes hanging and dribbling handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> dict:
        """``{"requests": n, "answered": n, "faults": {kind: n}}`` (every kind listed)."""
        with self._lock:
            requests = len(self.events)
            faults = {kind.value: self._faults[kind] for kind in Fault}
        failed = sum(n for kind, n in faults.items()
                     if kind not in (Fault.slow_body.value, Fault.injection.value))
        return {"requests": requests, "answered": requests - failed, "faults": faults}

    # ---- used by the request handler ----------------------------------------------------------

    def _draw(self, path: str, raw: bytes) -> tuple[Fault | None, int]:
        key = hashlib.sha1(path.encode() + b"\0" + raw).hexdigest()
        with self._lock:
            attempt = self._arrivals[key]
            self._arrivals[key] += 1
            cap = self.plan.max_faults_per_request
            fault = (None if cap is not None and self._faults_per_key[key] >= cap
                     else self.plan.fault_for(key, attempt))
            if fault is not None:
                self._faults_per_key[key] += 1
            self.events.append((time.monotonic(), path, key, attempt, fault))
            return fault, len(self.events) - 1

    def _record(self, index: int, fault: Fault | None) -> None:
        """Settle the fault actually applied (an injection may find nothing to inject)."""
        with self._lock:
            t, path, key, attempt, drawn = self.events[index]
            if drawn is not None and fault is None:
                self._faults_per_key[key] -= 1
            self.events[index] = (t, path, key, attempt, fault)
            if fault is not None:
                self._faults[fault] += 1

    def _reply_body(self, path: str, body: dict, fault: Fault | None) -> tuple[dict, Fault | None]:
        """A good (or injected) reply for ``path``, and the fault it carries."""
        model = body.get("model", "scripted")
        if path.endswith("/chat/completions"):
            content, finish, prompt_tokens, completion_tokens = self.answerer.chat(body)
            if fault == Fault.injection:
                content, fault = self._inject(body, content)
            return {"id": "fault-server", "object": "chat.completion", "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "finish_reason": finish,
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": prompt_tokens,
                              "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens}}, fault
        text = body.get("prompt") or ""
        return {"id": "fault-server", "object": "text_completion", "created": 0, "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "length",
                             "logprobs": self.answerer.echo_logprobs(text)}]}, \
            (None if fault == Fault.injection else fault)

    def _inject(self, body: dict, content: str) -> tuple[str, Fault | None]:
        planted = [m.group().strip() for m in
                   self._injection.finditer(body["messages"][-1].get("content") or "")]
        try:
            reply = json.loads(content)
        except ValueError:
            return content, None
        strings = [k for k, v in reply.items() if isinstance(v, str)]
        if not planted or not strings:
            return content, None
        return json.dumps({**reply, **{k: planted[0] for k in strings}}), Fault.injection


def _handler_for(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI client's pool expects

        def log_message(self, *args) -> None:  # quiet: tests read stats, not access logs
            pass

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/stats"):
                self._send(200, json.dumps(server.stats()).encode())
            else:
                self._send(404, b'{"error": {"message": "not found"}}')

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.rstrip("/")
            if not path.endswith(("/chat/completions", "/completions")):
                self._send(404, b'{"error": {"message": "not found"}}')
                return
            fault, index = server._draw(path, raw)
            try:
                self._answer(path, raw, fault, index)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up first
                self.close_connection = True

        def _answer(self, path: str, raw: bytes, fault: Fault | None, index: int) -> None:
            plan = server.plan
            if fault == Fault.timeout:
                server._record(index, fault)
                server._stopping.wait(plan.hang_s)
                self.close_connection = True
                return
            if fault in (Fault.server_error, Fault.rate_limited, Fault.garbage, Fault.empty):
                server._record(index, fault)
                status, headers, payload = {
                    Fault.server_error: (500, {}, b'{"error": {"message": "injected fault"}}'),
                    Fault.rate_limited: (429, {"Retry-After": f"{plan.retry_after_s:g}"},
                                         b'{"error": {"message": "rate limited"}}'),
                    Fault.garbage: (200, {}, b"<html><body>502 Bad Gateway</body></html>"),
                    Fault.empty: (200, {}, b""),
                }[fault]
                self._send(status, payload, headers)
                return
            try:
                reply, fault = server._reply_body(path, json.loads(raw), fault)
            except (ValueError, KeyError, TypeError) as exc:
                server._record(index, None)
                self._send(400, json.dumps({"error": {"message": f"bad request: {exc}"}}).encode())
                return
            server._record(index, fault)
            payload = json.dumps(reply).encode()
            if fault == Fault.slow_body:
                self._send_slowly(payload, plan.slow_chunks, plan.slow_gap_s)
            else:
                self._send(200, payload)

        def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def _send_slowly(self, payload: bytes, chunks: int, gap_s: float) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.flush()
            size = -(-len(payload) // max(chunks, 1))
            for start in range(0, len(payload), size):
                if server._stopping.wait(gap_s):
                    self.close_connection = True
                    return
                self.wfile.write(payload[start:start + size])
                self.wfile.flush()

    return Handler
