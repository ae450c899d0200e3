"""The openai LLM backend against a real OpenAI-compatible server on loopback."""

import json
from collections import Counter

import openai
import pyarrow as pa
import pytest

from customir.config import LLMConfig
from customir.llm.batch import REQUESTS, ChatAnswerer, request_row
from customir.llm.openai_http import MalformedReply, OpenAIHttpLLM, RequestCounts
from customir.queries import asking
from customir.queries.prompts import build_query_messages, parse_json_reply, query_schema

from conftest import serve_on_loopback


def _fake_openai_server():
    """Chat completions answer per the JSON schema; completions echo one token per word with
    log-prob -0.1 for words seen earlier in the prompt, -2.0 otherwise. The first request fails
    with 503 to exercise the client's retry."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    api = FastAPI()
    state = {"requests": 0}

    @api.post("/v1/chat/completions")
    async def chat(request: Request):
        state["requests"] += 1
        if state["requests"] == 1:
            return JSONResponse({"error": {"message": "warming up"}}, status_code=503)
        body = await request.json()
        keys = body["response_format"]["json_schema"]["schema"]["required"]
        content = json.dumps({k: f"{k} about insulin" for k in keys})
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}]}

    @api.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        assert body["echo"] is True and body["logprobs"] == 1
        text = body["prompt"]
        tokens, offsets, logprobs, seen, pos = [], [], [], set(), 0
        for word in text.split(" "):
            tokens.append(word)
            offsets.append(pos)
            logprobs.append(None if not offsets[:-1] else (-0.1 if word in seen else -2.0))
            seen.update(word.split())
            pos += len(word) + 1
        return {"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "text": text, "finish_reason": "length",
                             "logprobs": {"tokens": tokens, "text_offset": offsets,
                                          "token_logprobs": logprobs, "top_logprobs": None}}]}

    return api, state


@pytest.fixture(scope="module")
def endpoint():
    api, state = _fake_openai_server()
    with serve_on_loopback(api) as url:
        yield url, state


def test_query_writing_over_http_with_a_retry(endpoint):
    url, state = endpoint
    llm = OpenAIHttpLLM(LLMConfig(backend="openai", base_url=url, model="m", max_retries=2))
    kinds = ["keyword", "question"]
    reply = llm.complete_json(build_query_messages("Insulin."), query_schema(kinds), 50)
    assert parse_json_reply(reply) == {"keyword": "keyword about insulin",
                                       "question": "question about insulin"}
    assert state["requests"] == 2  # the 503 was retried


def test_likelihood_reads_only_the_continuation_tokens(endpoint):
    url, _ = endpoint
    llm = OpenAIHttpLLM(LLMConfig(backend="openai", base_url=url, model="m"))
    assert llm.query_log_likelihood("Passage: insulin lowers glucose\nQuery:",
                                    " insulin glucose") == pytest.approx(-0.1)
    assert llm.query_log_likelihood("Passage: insulin\nQuery:", " insulin kidney") == \
        pytest.approx((-0.1 - 2.0) / 2)


def test_choice_likelihoods_sum_each_choices_tokens(endpoint):
    url, _ = endpoint
    llm = OpenAIHttpLLM(LLMConfig(backend="openai", base_url=url, model="m"))
    prompt = "Passage: insulin\nQuery: insulin\nAnswer:"
    assert llm.choice_log_likelihoods(prompt, [" insulin", " kidney", " insulin kidney"]) == \
        pytest.approx([-0.1, -2.0, -2.1])


def test_missing_base_url_is_a_clear_error():
    with pytest.raises(ValueError, match="base_url is required"):
        OpenAIHttpLLM(LLMConfig(backend="openai"))



ODD_REPLIES = {
    "empty_choices": {"id": "x", "object": "chat.completion", "model": "m", "choices": []},
    "null_choices": {"id": "x", "object": "chat.completion", "model": "m", "choices": None},
    "null_message": {"id": "x", "object": "chat.completion", "model": "m",
                     "choices": [{"index": 0, "finish_reason": "stop", "message": None}]},
    "error_200": {"error": {"message": "model overloaded"}},
    "json_list": [],
    "json_null": None,
    "no_offsets": {"id": "x", "object": "text_completion", "model": "m", "choices": [
        {"index": 0, "text": "ab", "finish_reason": "length",
         "logprobs": {"tokens": ["a", "b"], "token_logprobs": [None, -1.0],
                      "text_offset": None}}]},
}


@pytest.fixture(scope="module")
def odd_endpoint():
    """``/KIND/v1/...`` answers 200 with ``ODD_REPLIES[KIND]``; ``/refuse/v1/...`` answers 401
    as OpenAI does to a wrong key. ``hits`` counts the requests per KIND."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    api, hits = FastAPI(), Counter()

    @api.post("/{kind}/v1/{endpoint:path}")
    async def reply(kind: str, endpoint: str):
        hits[kind] += 1
        if kind == "refuse":
            return JSONResponse({"error": {"message": "Incorrect API key provided",
                                           "code": "invalid_api_key"}}, status_code=401)
        return JSONResponse(ODD_REPLIES[kind])

    with serve_on_loopback(api) as url:
        yield url.removesuffix("/v1"), hits


@pytest.mark.parametrize("kind, message, attempts", [
    ("empty_choices", "MalformedReply: {url} returned no choices", 1),
    ("null_choices", "MalformedReply: {url} returned no choices", 1),
    ("null_message", "MalformedReply: {url} returned a choice without a message", 1),
    ("error_200", "DecodingError: reply is an error: model overloaded", 2),
    ("json_list", "DecodingError: reply body is not a JSON object: b'[]'", 2),
    ("json_null", "DecodingError: reply body is not a JSON object: b'null'", 2),
])
def test_a_malformed_reply_is_named_retried_if_not_json_and_counted(odd_endpoint, kind,
                                                                     message, attempts):
    base, hits = odd_endpoint
    url = f"{base}/{kind}/v1"
    answerer = ChatAnswerer(LLMConfig(backend="openai", base_url=url, model="m", max_retries=1))
    reply = answerer(pa.Table.from_pylist([request_row("r", [{"role": "user", "content": "hi"}],
                                                       {"type": "object"}, 8, 0.0)],
                                          schema=REQUESTS)).to_pylist()[0]
    assert reply["finish_reason"] == "error" and message.format(url=url) in reply["error"]
    assert reply["attempts"] == hits[kind] == attempts  # a reply body that is no reply: retried
    llm = OpenAIHttpLLM(LLMConfig(backend="openai", base_url=url, model="m", max_retries=1))
    name, _, text = message.format(url=url).partition(": ")
    # MalformedReply is ours; a DecodingError is raised by the response hook inside the openai
    # client, which retries it like a dropped connection and then raises APIConnectionError
    expected = MalformedReply if name == "MalformedReply" else openai.APIConnectionError
    with pytest.raises(expected) as raised:
        llm.complete_json([{"role": "user", "content": "hi"}], {"type": "object"}, 8)
    error = raised.value if name == "MalformedReply" else raised.value.__cause__
    assert type(error).__name__ == name and str(error) == text
    assert llm.take_request_counts() == RequestCounts(requests=1, attempts=attempts, failed=1)


def test_logprobs_without_token_offsets_are_named_and_counted(odd_endpoint):
    url = f"{odd_endpoint[0]}/no_offsets/v1"
    llm = OpenAIHttpLLM(LLMConfig(backend="openai", base_url=url, model="m"))
    with pytest.raises(MalformedReply, match=f"{url} returned log-probabilities without a "
                       "text_offset per token"):
        llm.query_log_likelihood("a", "b")
    assert llm.take_request_counts() == RequestCounts(requests=1, attempts=1, failed=1)


def test_a_refused_key_is_asked_for_once_and_the_unset_variable_named(odd_endpoint,
                                                                       monkeypatch):
    """50 asks at an endpoint that answers 401: one round of 50 requests, not one per round of
    ``max_attempts``; the error names the unset variable."""
    base, hits = odd_endpoint
    monkeypatch.setattr(asking, "answer_requests",  # in process, without Ray
                        lambda requests, config, **_: ChatAnswerer(config)(requests))
    monkeypatch.delenv("CUSTOMIR_TEST_UNSET_KEY", raising=False)
    config = LLMConfig(backend="openai", base_url=f"{base}/refuse/v1", model="m",
                       api_key_env="CUSTOMIR_TEST_UNSET_KEY")
    asks = [asking.Ask(f"a{i}", {"q": "keyword"}, [{"role": "user", "content": f"p {i}"}],
                       lambda keys: {"type": "object"}, lambda key, value: value, 16)
            for i in range(50)]
    hits.clear()
    answers = asking.ask_with_retries(asks, config, max_attempts=3, retry_temperature=0.7,
                                      batch_size=50, num_workers=1)
    assert hits["refuse"] == 50 and answers.usage["rounds"] == 1
    assert answers.usage["rejected"] == {"llm_error": 50}
    assert asking.first_error_when_nothing_answered(answers) == (
        "AuthenticationError: Error code: 401 - Incorrect API key provided "
        "(llm.api_key_env: CUSTOMIR_TEST_UNSET_KEY is not set)")
    monkeypatch.setenv("CUSTOMIR_TEST_UNSET_KEY", "sk-wrong-but-set")
    answers = asking.ask_with_retries(asks[:1], config, max_attempts=3, retry_temperature=0.7,
                                      batch_size=1, num_workers=1)
    error = asking.first_error_when_nothing_answered(answers)
    assert error.endswith("Incorrect API key provided") and "sk-wrong" not in error


def test_a_key_pasted_as_the_variable_name_is_not_echoed_by_a_refusal(odd_endpoint,
                                                                      monkeypatch):
    """``gsk_…``/``hf_…`` keys pass as variable names; the 401 hint must not repeat them."""
    base, _ = odd_endpoint
    monkeypatch.setattr(asking, "answer_requests",
                        lambda requests, config, **_: ChatAnswerer(config)(requests))
    pasted = "gsk_8fQ2xLmN0pasted"
    monkeypatch.delenv(pasted, raising=False)
    config = LLMConfig(backend="openai", base_url=f"{base}/refuse/v1", model="m",
                       api_key_env=pasted)
    asks = [asking.Ask("a", {"q": "keyword"}, [{"role": "user", "content": "p"}],
                       lambda keys: {"type": "object"}, lambda key, value: value, 16)]
    answers = asking.ask_with_retries(asks, config, max_attempts=1, retry_temperature=0.7,
                                      batch_size=1, num_workers=1)
    error = asking.first_error_when_nothing_answered(answers)
    assert error.endswith("(llm.api_key_env: the variable it names is not set)")
    assert "8fQ2x" not in error
