"""The embedded backend: a GGUF model run in-process by llama-cpp-python.

Two measured facts shape it (issue 2): ``OMP_WAIT_POLICY=PASSIVE`` must be set before llama_cpp
is imported (0.9 → 13 tok/s when another process shares the CPU), and a prompt that starts with
the same tokens as the previous one reuses their KV cache — so every prompt starts with one
fixed prefix (few-shot chat for writing, a fixed instruction for scoring).
"""

from __future__ import annotations

import os

import numpy as np

from customir.config import LLMConfig
from customir.llm.gguf import resolve_gguf

_INSTALL = "pip install llama-cpp-python==0.3.36   (or: pip install 'customir[embedded]')"


class LlamaCppLLM:
    """``LLM`` protocol over llama-cpp-python. ``scoring=True`` keeps logits for every token."""

    def __init__(self, config: LLMConfig, *, scoring: bool = False):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ImportError(f"the llamacpp backend needs llama-cpp-python: {_INSTALL}") from None
        path = resolve_gguf(config.model)
        self.name = config.model
        self._config = config
        self._llm = Llama(
            model_path=str(path), n_ctx=config.n_ctx, n_threads=config.n_threads or os.cpu_count(),
            logits_all=scoring, verbose=False, seed=0,
        )

    def complete_json(self, messages: list[dict], schema: dict, max_tokens: int) -> str:
        reply = self._llm.create_chat_completion(
            messages=messages,
            response_format={"type": "json_object", "schema": schema},
            temperature=self._config.temperature,
            max_tokens=max_tokens,
        )
        return reply["choices"][0]["message"]["content"] or ""

    def query_log_likelihood(self, prompt: str, continuation: str) -> float:
        llm = self._llm
        prompt_ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        cont_ids = llm.tokenize(continuation.encode(), add_bos=False, special=False)
        if not cont_ids:
            raise ValueError("empty continuation")
        tokens = prompt_ids + cont_ids
        if len(tokens) > llm.n_ctx():
            keep = llm.n_ctx() - len(cont_ids) - 1
            tokens = prompt_ids[:keep] + cont_ids
        # Reuse the KV cache (and logits rows) of the longest prefix shared with the last call.
        cached = llm.input_ids[: llm.n_tokens].tolist()
        shared = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            shared += 1
        shared = min(shared, len(tokens) - 1)  # always decode at least one token
        llm.n_tokens = shared
        llm.eval(tokens[shared:])
        start = len(tokens) - len(cont_ids)
        logits = np.asarray(llm.scores[start - 1: len(tokens) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1))
        picked = logits[np.arange(len(cont_ids)), cont_ids]
        return float(np.mean(picked - log_norm))
