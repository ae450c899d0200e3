"""A deterministic stand-in LLM: no model, same protocol. For fast tests and dry runs of a
pipeline's wiring (``llm.backend: scripted``); its queries are not worth training on.

- ``complete_json`` fills each string property of the schema with words of the last user
  message (4 words from position 3·i for the i-th property), an integer property (a judge's
  ``score``) with 1-10 by the share of the query's words found in the passage. A message
  containing ``[[garbage]]`` gets a reply that is not JSON, ``[[truncate]]`` one cut off at
  ``max_tokens``, and ``[[crash]]`` ends the process at once, as a segfault in llama.cpp does
  (to exercise error paths).
- ``query_log_likelihood`` is the share of the continuation's words found in the prompt, minus 1
  (so a passage that contains the query scores 0 and an unrelated one -1).
- ``choice_log_likelihoods`` reads the judge prompt's passage and query, and favours the choice
  (worst first) whose position matches the share of query words found in the passage.
"""

from __future__ import annotations

import json
import os
import re

from customir.llm.protocol import Completion

_WORD = re.compile(r"\w+")


class ScriptedLLM:
    name = "scripted"

    def __init__(self, config=None, *, scoring: bool = False):
        self.calls = 0

    def complete_json(self, messages: list[dict], schema: dict, max_tokens: int,
                      temperature: float | None = None) -> Completion:
        self.calls += 1
        content = messages[-1]["content"]
        if "[[crash]]" in content:
            os._exit(139)  # no cleanup, no exception: what a native crash looks like from outside
        if "[[garbage]]" in content:
            return Completion("I cannot answer that", "stop", len(content) // 4, 5)
        words = _WORD.findall(content.split("\n", 1)[-1])
        reply: dict = {}
        for i, (name, spec) in enumerate(schema.get("properties", {}).items()):
            if spec.get("type") == "integer":
                reply[name] = self._grade(content)
                continue
            picked = words[i * 3: i * 3 + 4] or ["empty"]
            reply[name] = " ".join(picked) + ("?" if name == "question" else "")
        text = json.dumps(reply)
        if "[[truncate]]" in content:
            return Completion(text[: len(text) // 2], "length", len(content) // 4, max_tokens)
        return Completion(text, "stop", len(content) // 4, len(text) // 4)

    @staticmethod
    def _grade(content: str) -> int:
        passage = content.split("Passage:", 1)[-1].split("\nQuery:", 1)[0]
        query = content.split("\nQuery:", 1)[-1].split("\n", 1)[0]
        seen = {w.lower() for w in _WORD.findall(passage)}
        words = [w.lower() for w in _WORD.findall(query)] or [""]
        return 1 + round(9 * sum(w in seen for w in words) / len(words))

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
