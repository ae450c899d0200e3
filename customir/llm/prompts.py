"""Prompts and reply parsing for query writing, likelihood scoring and relevance judging
(pure functions).

The few-shot prefix is fixed and comes first in every chat, so llama.cpp reuses its KV cache from
one passage to the next (measured ~19 → ~12 s per passage on 2 cores). Its example passage is
invented for the prompt, not taken from any evaluation set.
"""

from __future__ import annotations

import json
import math
import re

KIND_INSTRUCTIONS = {
    "keyword": "a short keyword search query (2-6 words, no question mark)",
    "question": "a natural-language question that the passage answers",
    "claim": "a one-sentence factual statement that the passage supports or refutes",
}

_EXAMPLE_PASSAGE = (
    "Regular aerobic exercise lowers resting blood pressure. In a twelve-week trial, adults who "
    "walked briskly for thirty minutes a day reduced their systolic pressure by 5 mmHg on "
    "average compared with a sedentary control group."
)
_EXAMPLE_QUERIES = {
    "keyword": "walking exercise blood pressure",
    "question": "Does brisk daily walking reduce systolic blood pressure?",
    "claim": "Thirty minutes of daily walking lowers systolic blood pressure.",
}

MAX_PASSAGE_CHARS = 1500


def query_schema(kinds: list[str]) -> dict:
    """JSON schema the reply must follow: one string per requested kind."""
    unknown = [k for k in kinds if k not in KIND_INSTRUCTIONS]
    if unknown:
        raise ValueError(f"unknown query kinds {unknown}; known: {sorted(KIND_INSTRUCTIONS)}")
    return {
        "type": "object",
        "properties": {k: {"type": "string"} for k in kinds},
        "required": list(kinds),
    }


def _user_turn(passage: str) -> str:
    return f"Passage:\n{passage[:MAX_PASSAGE_CHARS]}"


def build_query_messages(passage: str, kinds: list[str], title: str | None = None) -> list[dict]:
    """Chat messages asking for one query of each kind about ``passage``.

    >>> msgs = build_query_messages("Aspirin thins blood.", ["keyword"])
    >>> msgs[-1]["content"].endswith("Aspirin thins blood.")
    True
    """
    wanted = "\n".join(f'- "{k}": {KIND_INSTRUCTIONS[k]}' for k in kinds)
    system = (
        "You write search queries that a user would type to find a given passage. "
        "Reply with a JSON object with these keys:\n" + wanted +
        "\nUse the passage's own subject matter; never mention 'the passage'."
    )
    example_reply = json.dumps({k: _EXAMPLE_QUERIES[k] for k in kinds})
    text = passage if not title else f"{title}\n{passage}"
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": _user_turn(_EXAMPLE_PASSAGE)},
        {"role": "assistant", "content": example_reply},
        {"role": "user", "content": _user_turn(text)},
    ]


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)


class ReplyError(ValueError):
    """An LLM reply that does not contain the requested queries."""


def parse_query_reply(reply: str, kinds: list[str]) -> dict[str, str]:
    """Extract ``{kind: query}`` from a reply; raise ReplyError naming what is wrong.

    >>> parse_query_reply('{"keyword": " heart  risk "}', ["keyword"])
    {'keyword': 'heart risk'}
    """
    text = _FENCE.sub("", reply.strip())
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ReplyError(f"no JSON object in reply: {reply[:80]!r}")
    try:
        data = json.loads(text[start:end + 1])
    except json.JSONDecodeError as exc:
        raise ReplyError(f"invalid JSON ({exc.msg}): {reply[:80]!r}") from None
    if not isinstance(data, dict):
        raise ReplyError("reply JSON is not an object")
    queries = {}
    for kind in kinds:
        value = data.get(kind)
        if isinstance(value, str) and value.strip():
            queries[kind] = " ".join(value.split())
    if not queries:
        raise ReplyError(f"reply has none of the kinds {kinds}: {reply[:80]!r}")
    return queries


SCORING_INSTRUCTION = "Read the passage and write a search query that it answers.\n\n"


def build_scoring_prompt(passage: str) -> str:
    """Prompt for log P(query | passage): the query follows as the continuation.

    The instruction comes first and is identical for every pair, so its KV cache is reused.
    """
    return f"{SCORING_INSTRUCTION}Passage: {passage[:MAX_PASSAGE_CHARS]}\nQuery:"


def scoring_continuation(query: str) -> str:
    return f" {query}"


JUDGE_INSTRUCTION = "Judge whether a passage is relevant to a search query.\n\n"
JUDGE_QUESTIONS = {
    "yes_no": ("Does the passage answer the query? Answer yes or no.\nAnswer:",
               [" no", " yes"]),
    "scale": ("How relevant is the passage to the query, from 1 (unrelated) to 10 (answers it "
              "fully)?\nScore:", [f" {i}" for i in range(1, 11)]),
}


def build_judge_prompt(passage: str, query: str, scale: str) -> tuple[str, list[str]]:
    """Prompt and answer choices (worst first) for a relevance judgement read from the
    probabilities of the answer tokens, not from sampled text.

    >>> prompt, choices = build_judge_prompt("Aspirin thins blood.", "aspirin", "yes_no")
    >>> prompt.endswith("Answer:"), choices
    (True, [' no', ' yes'])
    """
    question, choices = JUDGE_QUESTIONS[scale]
    return (f"{JUDGE_INSTRUCTION}Passage: {passage[:MAX_PASSAGE_CHARS]}\nQuery: {query}\n"
            f"{question}", choices)


def judge_score(choice_log_likelihoods: list[float]) -> float:
    """Expected grade in [0, 1] from the choices' log-likelihoods (choices worst first):
    P(yes) for yes/no, (E[score] - 1) / 9 for the 1-10 scale.

    >>> round(judge_score([math.log(0.2), math.log(0.6)]), 3)
    0.75
    """
    top = max(choice_log_likelihoods)
    weights = [math.exp(x - top) for x in choice_log_likelihoods]
    total = sum(weights)
    grades = len(weights) - 1
    return sum(w * i for i, w in enumerate(weights)) / (total * grades)
