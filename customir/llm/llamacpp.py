"""The embedded backend: a GGUF model run in-process by llama-cpp-python.

Two measured facts shape it (issue 2): ``OMP_WAIT_POLICY=PASSIVE`` must be set before llama_cpp
is imported (0.9 → 13 tok/s when another process shares the CPU), and a prompt that starts with
the same tokens as the previous one reuses their KV cache — so every prompt starts with one
fixed prefix (few-shot chat for writing, a fixed instruction for scoring).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from customir.config import LLMConfig
from customir.llm.gguf import resolve_gguf
from customir.llm.protocol import Completion

_INSTALL = "pip install llama-cpp-python==0.3.36   (or: pip install 'customir[embedded]')"


def require_llama_cpp() -> None:
    """Fail with the line to install llama-cpp-python when it is missing (without importing
    it: the import loads the native library)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ImportError(f"the llamacpp backend needs llama-cpp-python: {_INSTALL}")


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
            n_gpu_layers=-1 if _gpu_assigned() else 0,  # all layers on the actor's GPU
        )

    def complete_json(self, messages: list[dict], schema: dict, max_tokens: int,
                      temperature: float | None = None) -> Completion:
        reply = self._llm.create_chat_completion(
            messages=messages,
            response_format={"type": "json_object", "schema": schema},
            temperature=self._config.temperature if temperature is None else temperature,
            max_tokens=max_tokens,
        )
        choice, usage = reply["choices"][0], reply.get("usage") or {}
        return Completion(choice["message"]["content"] or "", choice.get("finish_reason") or "stop",
                          usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

    def _log_softmax_rows(self, prompt: str, continuation_ids: list[int]) -> np.ndarray:
        """Evaluate prompt + continuation (reusing the KV cache of the longest prefix shared
        with the last call); return the log-distributions that predict each continuation
        token (row i predicts continuation_ids[i])."""
        llm = self._llm
        prompt_ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        tokens = prompt_ids + continuation_ids
        if len(tokens) > llm.n_ctx():  # cutting would drop the query the score is read after
            raise ValueError(f"prompt and continuation take {len(tokens)} tokens, over "
                             f"llm.n_ctx {llm.n_ctx()}; raise it (the pair is counted as "
                             "llm_error)")
        cached = llm.input_ids[: llm.n_tokens].tolist()
        shared = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            shared += 1
        shared = min(shared, len(tokens) - 1)  # always decode at least one token
        llm.n_tokens = shared
        llm.eval(tokens[shared:])
        start = len(tokens) - len(continuation_ids)
        logits = np.asarray(llm.scores[start - 1: len(tokens) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    def _continuation_logprobs(self, prompt: str, continuation: str) -> np.ndarray:
        cont_ids = self._llm.tokenize(continuation.encode(), add_bos=False, special=False)
        if not cont_ids:
            raise ValueError("empty continuation")
        rows = self._log_softmax_rows(prompt, cont_ids)
        return rows[np.arange(len(cont_ids)), cont_ids]

    def query_log_likelihood(self, prompt: str, continuation: str) -> float:
        return float(np.mean(self._continuation_logprobs(prompt, continuation)))

    def choice_log_likelihoods(self, prompt: str, choices: list[str]) -> list[float]:
        ids = [self._llm.tokenize(c.encode(), add_bos=False, special=False) for c in choices]
        if all(len(i) == 1 for i in ids):
            # one forward pass: every one-token choice is read from the same distribution
            row = self._log_softmax_rows(prompt, ids[0])[0]
            return [float(row[i[0]]) for i in ids]
        # otherwise each choice is decoded after the shared, cached prompt
        return [float(np.sum(self._continuation_logprobs(prompt, c))) for c in choices]


def _gpu_assigned() -> bool:
    """Whether Ray gave this process a GPU (an LLM actor with ``llm.gpus_per_worker``)."""
    try:
        import ray

        return ray.is_initialized() and bool(ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - outside Ray: no GPU was assigned
        return False
