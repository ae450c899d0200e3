"""The one LLM interface every stage talks to, and the factory that picks a backend.

Three abilities are all the pipeline needs:

- ``complete_json(messages, schema, max_tokens, temperature)``: a chat reply constrained to a
  JSON schema (small models write usable JSON only under a grammar; measured in issue 2), as a
  :class:`Completion` (text, why it stopped, token counts).
- ``query_log_likelihood(prompt, continuation)``: the mean log-probability per token of
  ``continuation`` after ``prompt``. Verification can score log P(query | passage) this way
  (UPR, Sachan et al. 2022).
- ``choice_log_likelihoods(prompt, choices)``: the total log-probability of each answer choice
  after ``prompt``; a relevance judgement (yes/no, 1-10) is read from these probabilities (a
  sampled "yes" would lose the model's confidence; small models answer yes/no at chance).

Any object with these methods and a ``name`` works; tests use a small in-process double.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from customir.config import LLMBackend, LLMConfig


@dataclass
class Completion:
    """One chat reply: its raw text (JSON when the backend honours the schema), why generation
    stopped (``stop``, or ``length`` when cut at ``max_tokens``) and the tokens it cost."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@runtime_checkable
class LLM(Protocol):
    name: str

    def complete_json(self, messages: list[dict], schema: dict, max_tokens: int,
                      temperature: float | None = None) -> Completion:
        """A reply following ``schema``; ``temperature`` None means the configured one."""
        ...

    def query_log_likelihood(self, prompt: str, continuation: str) -> float:
        """Mean natural-log probability per token of ``continuation`` given ``prompt``."""
        ...

    def choice_log_likelihoods(self, prompt: str, choices: list[str]) -> list[float]:
        """Total natural-log probability of each choice as the continuation of ``prompt``."""
        ...


_VLLM_WRITES_ONLY = ("the vllm backend runs inside Ray Data (customir.llm.vllm_batch) and only "
                     "writes queries; use llamacpp or openai (e.g. a vLLM server) for scoring")


def check_llm(config: LLMConfig, *, scoring: bool = False) -> None:
    """Raise, as one line, what would stop ``config``'s backend from loading, without loading
    it: run on the driver before the LLM's Ray actors start (an error in an actor's
    ``__init__`` reaches the driver as ``ActorDiedError`` with a remote traceback). The driver
    runs in the job's environment, so the packages it lacks the actors lack too.
    ``scoring``: the backend must also give log-likelihoods (verify).

    >>> check_llm(LLMConfig(backend="openai"))
    Traceback (most recent call last):
    ValueError: llm.base_url is required for the openai backend (e.g. http://localhost:8000/v1)
    """
    if config.backend == LLMBackend.openai and not config.base_url:
        raise ValueError("llm.base_url is required for the openai backend "
                         "(e.g. http://localhost:8000/v1)")
    if config.backend == LLMBackend.vllm:
        if scoring:
            raise ValueError(_VLLM_WRITES_ONLY)
        from customir.llm.vllm_batch import require_vllm

        require_vllm()
    if config.backend == LLMBackend.llamacpp:
        from customir.llm.gguf import check_gguf
        from customir.llm.llamacpp import require_llama_cpp

        require_llama_cpp()
        check_gguf(config.model)


def load_llm(config: LLMConfig, *, scoring: bool = False) -> LLM:
    """Build the configured backend. ``scoring=True`` prepares it for log-likelihoods."""
    if config.backend == LLMBackend.vllm:  # no in-process vLLM: see customir.llm.vllm_batch
        raise ValueError(_VLLM_WRITES_ONLY)
    check_llm(config, scoring=scoring)
    if config.backend == LLMBackend.llamacpp:
        from customir.llm.llamacpp import LlamaCppLLM

        return LlamaCppLLM(config, scoring=scoring)
    if config.backend == LLMBackend.openai:
        from customir.llm.openai_http import OpenAIHttpLLM

        return OpenAIHttpLLM(config)
    if config.backend == LLMBackend.scripted:
        from customir.llm.scripted import ScriptedLLM

        return ScriptedLLM(config, scoring=scoring)
    raise ValueError(f"unknown LLM backend {config.backend!r}")
