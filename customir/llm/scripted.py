"""A deterministic stand-in LLM: no model, same protocol. For fast tests and dry runs of a
pipeline's wiring (``llm.backend: scripted``); its queries are not worth training on.

- ``complete_json`` answers each requested kind with words of the last passage in the chat; a
  passage containing ``[[garbage]]`` gets a reply that is not JSON (to exercise error paths).
- ``query_log_likelihood`` is the share of the continuation's words found in the prompt, minus 1
  (so a passage that contains the query scores 0 and an unrelated one -1).
- ``choice_log_likelihoods`` reads the judge prompt's passage and query, and favours the choice
  (worst first) whose position matches the share of query words found in the passage.
"""

from __future__ import annotations

import json
import re

_WORD = re.compile(r"\w+")


class ScriptedLLM:
    name = "scripted"

    def __init__(self, config=None, *, scoring: bool = False):
        self.calls = 0

    def complete_json(self, messages: list[dict], schema: dict, max_tokens: int) -> str:
        self.calls += 1
        passage = messages[-1]["content"]
        if "[[garbage]]" in passage:
            return "I cannot answer that"
        words = _WORD.findall(passage.split("\n", 1)[-1])
        kinds = list(schema.get("properties", {}))
        reply = {}
        for i, kind in enumerate(kinds):
            picked = words[i * 3: i * 3 + 4] or ["empty"]
            reply[kind] = " ".join(picked) + ("?" if kind == "question" else "")
        return json.dumps(reply)

    def query_log_likelihood(self, prompt: str, continuation: str) -> float:
        self.calls += 1
        seen = {w.lower() for w in _WORD.findall(prompt)}
        words = [w.lower() for w in _WORD.findall(continuation)]
        if not words:
            raise ValueError("empty continuation")
        return sum(w in seen for w in words) / len(words) - 1.0

    def choice_log_likelihoods(self, prompt: str, choices: list[str]) -> list[float]:
        self.calls += 1
        passage = prompt.split("Passage:", 1)[-1].split("\nQuery:", 1)[0]
        query = prompt.split("\nQuery:", 1)[-1].split("\n", 1)[0]
        seen = {w.lower() for w in _WORD.findall(passage)}
        words = [w.lower() for w in _WORD.findall(query)] or [""]
        target = sum(w in seen for w in words) / len(words) * (len(choices) - 1)
        return [-float((i - target) ** 2) for i in range(len(choices))]
