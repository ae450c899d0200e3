"""Prompts for scoring (query likelihood) and relevance judging by token probabilities, used by
verification (pure functions). Query-writing prompts live in :mod:`customir.queries.prompts`.

Each prompt starts with one fixed instruction, so llama.cpp reuses its KV cache across pairs.
"""

from __future__ import annotations

import math

MAX_PASSAGE_CHARS = 1500


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
