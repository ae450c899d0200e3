"""The openai LLM backend against a real OpenAI-compatible server on loopback."""

import json

import pytest

from customir.config import LLMConfig
from customir.llm.openai_http import OpenAIHttpLLM
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
    reply = llm.complete_json(build_query_messages("Insulin.", kinds), query_schema(kinds), 50)
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
