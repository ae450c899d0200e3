"""The openai backend for query writing against a real OpenAI-compatible server on 127.0.0.1:
bounded concurrency, the QPS limit, timeouts, re-asking bad replies and the LLM-written corpus
profile. (The slow suite also runs the stage against llama.cpp's own server with the embedded
model: tests/test_llm_server.py.)"""

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest

from customir.config import GenerateConfig, IngestConfig, LLMConfig
from customir.corpus import ingest
from customir.llm.batch import REQUESTS, ChatAnswerer, request_row
from customir.llm.openai_http import OpenAIHttpLLM, RateLimiter
from customir.queries import generate

from conftest import chat_completion, schema_answer, serve_on_loopback


def _server(state: dict):
    """Chat completions that answer each required key of the JSON schema, after
    ``state["delay"]`` seconds; the first reply to each distinct chat is not JSON when
    ``state["garble_first"]``; a chat containing [[slow]] takes 3 s."""
    from fastapi import FastAPI, Request

    api = FastAPI()

    @api.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        state["arrivals"].append(time.monotonic())
        state["in_flight"] += 1
        state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        try:
            last = body["messages"][-1]["content"]
            await asyncio.sleep(3.0 if "[[slow]]" in last else state["delay"])
            key = json.dumps(body["messages"])
            if state["garble_first"] and key not in state["seen"]:
                state["seen"].add(key)
                content = "Sorry, I can only answer in prose."
            else:
                content = schema_answer(body)
        finally:
            state["in_flight"] -= 1
        return chat_completion(body, content)

    return api


@pytest.fixture
def endpoint():
    state = {"arrivals": [], "in_flight": 0, "max_in_flight": 0, "delay": 0.0,
             "garble_first": False, "seen": set()}
    with serve_on_loopback(_server(state)) as url:
        yield url, state


def test_stage_over_http_bounded_concurrency_re_asks_and_llm_profile(endpoint, tmp_path,
                                                                      fixture_corpus,
                                                                      ray_cluster):
    url, state = endpoint
    state.update(delay=0.3, garble_first=True)
    ingest.run(fixture_corpus, tmp_path / "run", IngestConfig(min_chunk_tokens=3))
    llm = LLMConfig(backend="openai", base_url=url, model="served", concurrency=3)
    manifest = generate.run(tmp_path / "run" / "chunks", tmp_path / "run", GenerateConfig(
        llm=llm, multihop=0.0, dedup_cosine=None, roundtrip_k=None))
    assert 2 <= state["max_in_flight"] <= 3  # in flight together, never more than allowed
    balance = manifest.balances["llm_queries"]
    assert (balance.n_in, balance.n_out) == (30, 30)  # every garbled first reply was re-asked
    assert manifest.extra["llm_usage"]["queries"]["rounds"] == 2
    assert manifest.extra["llm_usage"]["queries"]["completion_tokens"] == 2 * 10 * 6
    profile = json.loads((tmp_path / "run" / "queries" / "profile.json").read_text())
    assert profile["method"] == "llm" and profile["description"].startswith("description ")


def test_qps_limit_spaces_request_starts_across_threads(endpoint):
    url, state = endpoint
    llm = OpenAIHttpLLM(LLMConfig(backend="openai", base_url=url, model="m", qps=5))
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda i: llm.complete_json(
            [{"role": "user", "content": f"Passage:\nchunk {i}"}], schema, 16), range(6)))
    # Arrivals at the server carry connection and scheduling jitter (CI saw one gap of 0.158 s):
    # without the limit, 3 threads put requests in nearly together (gaps ~0); with it the six
    # starts span 5/qps = 1 s.
    arrivals = state["arrivals"]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert len(arrivals) == 6 and min(gaps) >= 0.1 and arrivals[-1] - arrivals[0] >= 0.85


def test_rate_limiter_schedules_starts_one_interval_apart_across_threads():
    limiter = RateLimiter(5)
    with ThreadPoolExecutor(3) as pool:
        starts = sorted(pool.map(lambda _: limiter.wait(), range(6)))
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.2 - 1e-9 and time.monotonic() >= starts[-1]


def test_a_timed_out_request_becomes_a_counted_error_row(endpoint):
    url, _ = endpoint
    udf = ChatAnswerer(LLMConfig(backend="openai", base_url=url, model="m", timeout_s=0.5,
                                 max_retries=0))
    slow = request_row("s", [{"role": "user", "content": "Passage:\n[[slow]] text"}],
                       {"type": "object", "properties": {}}, 16, 0.0)
    started = time.monotonic()
    out = udf(pa.Table.from_pylist([slow], schema=REQUESTS)).to_pylist()[0]
    # The server would answer after 3 s, and a reply would be no error row, so the "Timeout"
    # error itself shows the client gave up at timeout_s; no wall-clock upper bound (it only
    # flaked on a loaded machine). It did wait for the timeout first:
    assert time.monotonic() - started >= 0.4
    assert out["finish_reason"] == "error" and "Timeout" in out["error"]
