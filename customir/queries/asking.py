"""Ask the LLM for JSON replies and re-ask what failed, a bounded number of times.

An :class:`Ask` names the keys its reply must hold (a chunk's query kinds, a multi-hop
``question``, a judge's ``score``) and validates each one. Every round sends all pending asks as
one Ray Data batch job (:func:`customir.llm.batch.answer_requests`, any backend); a key whose
value fails validation — or whose reply was empty, truncated, not JSON or never came back — is
asked again in the next round, alone with the other missing keys of its ask, at
``retry_temperature`` (a greedy model would repeat its mistake). After ``max_attempts`` rounds the
key counts as a failure with the last reason. Nothing a reply contains can raise out of here.
A round whose every request the endpoint refused (a wrong key, an unknown model, a request it
rejects: :func:`~customir.llm.batch.is_refusal`) ends the asking: the next rounds would be
refused the same way, as many requests again each.

Two layers of retries, counted apart in :attr:`Answers.usage`: the HTTP backend's client retries
one request (timeouts, 429, 5xx, bodies that are not JSON: ``http_attempts``, ``http_retries``)
and gives up with an error (``llm_errors``); this module re-asks what came back unusable in the
next round. ``rejected`` counts every unusable key of every round by reason, including those a
later round fixed. An LLM that answered nothing but errors stops the generate stage
(:func:`require_an_answer`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa

from customir.config import GenerateConfig, LLMConfig
from customir.llm.batch import REQUESTS, answer_requests, is_refusal, request_row
from customir.llm.protocol import Completion
from customir.queries.prompts import ReplyError, parse_json_reply


@dataclass
class Ask:
    request_id: str
    kinds: dict[str, str]                     # reply key → the kind it is counted under
    messages: list[dict]
    schema: Callable[[list[str]], dict]       # JSON schema asking for these keys
    validate: Callable[[str, Any], Any]       # (key, raw value) → value, or raise ReplyError
    max_tokens: int


@dataclass
class Answers:
    values: dict[tuple[str, str], Any] = field(default_factory=dict)
    failures: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # reason, detail
    usage: dict[str, Any] = field(default_factory=lambda: {
        "requests": 0, "rounds": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0,
        "http_attempts": 0, "http_retries": 0, "llm_errors": 0, "rejected": {}})


def read_reply(ask: Ask, keys: list[str], reply: dict, answers: Answers) -> list[str]:
    """Record the valid keys of one reply; return the keys to ask again."""
    if reply["error"]:
        problem = ("llm_error", reply["error"])
    else:
        try:
            data = parse_json_reply(Completion(reply["text"] or "", reply["finish_reason"]))
            problem = None
        except ReplyError as exc:
            problem = (exc.reason, str(exc))
    retry = []
    for key in keys:
        if problem is None:
            try:
                answers.values[(ask.request_id, key)] = ask.validate(key, data.get(key))
                answers.failures.pop((ask.request_id, key), None)
                continue
            except ReplyError as exc:
                answers.failures[(ask.request_id, key)] = (exc.reason, str(exc))
        else:
            answers.failures[(ask.request_id, key)] = problem
        reason = answers.failures[(ask.request_id, key)][0]
        answers.usage["rejected"][reason] = answers.usage["rejected"].get(reason, 0) + 1
        retry.append(key)
    return retry


def ask_with_retries(asks: list[Ask], llm: LLMConfig, *, max_attempts: int,
                     retry_temperature: float, batch_size: int, num_workers: int) -> Answers:
    answers = Answers()
    by_id = {a.request_id: a for a in asks}
    pending = {a.request_id: list(a.kinds) for a in asks}
    for attempt in range(max_attempts):
        if not pending:
            break
        temperature = llm.temperature if attempt == 0 else max(llm.temperature, retry_temperature)
        rows = [request_row(rid, by_id[rid].messages, by_id[rid].schema(keys),
                            by_id[rid].max_tokens, temperature) for rid, keys in pending.items()]
        started = time.monotonic()
        replies = answer_requests(pa.Table.from_pylist(rows, schema=REQUESTS), llm,
                                  batch_size=batch_size, num_workers=num_workers)
        usage = answers.usage
        usage["seconds"] += time.monotonic() - started
        usage["rounds"] += 1
        usage["requests"] += len(rows)
        next_pending: dict[str, list[str]] = {}
        answered = set()
        refused = 0
        for reply in replies.to_pylist():
            rid = reply["request_id"]
            if rid not in pending or rid in answered:
                continue
            answered.add(rid)
            usage["prompt_tokens"] += reply["prompt_tokens"] or 0
            usage["completion_tokens"] += reply["completion_tokens"] or 0
            if reply.get("attempts") is not None:
                usage["http_attempts"] += reply["attempts"]
                usage["http_retries"] += max(reply["attempts"] - 1, 0)
            usage["llm_errors"] += bool(reply["error"])
            refused += is_refusal(reply["error"])
            if retry := read_reply(by_id[rid], pending[rid], reply, answers):
                next_pending[rid] = retry
        for rid in set(pending) - answered:  # a lost reply is a failure like any other
            for key in pending[rid]:
                answers.failures[(rid, key)] = ("no_reply", "no reply came back")
                usage["rejected"]["no_reply"] = usage["rejected"].get("no_reply", 0) + 1
            next_pending[rid] = pending[rid]
        pending = next_pending
        if refused == len(rows):  # asking again would be refused again
            break
    return answers


def ask_generate_llm(asks: list[Ask], config: GenerateConfig) -> Answers:
    """:func:`ask_with_retries` with the generate stage's LLM and its retry and batch settings."""
    return ask_with_retries(asks, config.llm, max_attempts=config.max_attempts,
                            retry_temperature=config.retry_temperature,
                            batch_size=config.batch_size, num_workers=config.num_workers)


def first_error_when_nothing_answered(answers: Answers) -> str | None:
    """The first error (one line) when asks were made, none was answered and every failure of
    every round was ``llm_error`` — the endpoint is down, the model unknown, the key wrong —,
    else None. Replies that came back unusable (``not_json``...) mean the LLM is there.
    """
    if answers.values or set(answers.usage["rejected"]) != {"llm_error"}:
        return None
    detail = next(d for reason, d in answers.failures.values() if reason == "llm_error")
    return " ".join(detail.split())


def require_an_answer(answers: Answers, failed: str) -> None:
    """Stop the stage (nothing written) when the LLM answered none of ``answers``' asks, only
    with errors: published, such a run would be reused by every rerun and never ask again.
    ``failed`` says what went unanswered, with ``{n}`` for the number of keys asked."""
    if (error := first_error_when_nothing_answered(answers)) is not None:
        raise ValueError(f"generate: {failed.format(n=len(answers.failures))} (first error: "
                         f"{error}); fix generate.llm and rerun (nothing was written)")
