"""The vllm backend: chat requests answered by vLLM engines inside Ray Data (``ray.data.llm``).

``vLLMEngineProcessorConfig`` + ``build_processor`` (Ray 2.60) put one vLLM engine per replica
on the cluster's GPUs; Ray applies the model's chat template, batches the rows and streams them
through. Our part is two pure functions, unit-tested on CPU: :func:`to_vllm_request` turns a
REQUESTS row into the processor's input (messages + sampling parameters with the reply's JSON
schema as structured output) and :func:`to_reply` turns its output back into a REPLIES row.
Our request id travels under :data:`ID_COLUMN`: Ray's engine stage writes its own counter into
each row's ``request_id`` (-1 for a failed row), over whatever was there.

vLLM is a CUDA-only optional extra (``pip install 'customir[gpu]'``), imported by Ray only when
the processor runs; without it the stage fails at once with that line.
"""

from __future__ import annotations

import importlib.util
import json

import pyarrow as pa

from customir.config import LLMConfig
from customir.llm.batch import REPLIES, error_reply

INSTALL = "pip install 'customir[gpu]'   (vLLM needs a CUDA GPU)"
ID_COLUMN = "customir_request_id"  # not "request_id": the vLLM engine stage overwrites that


def to_vllm_request(row: dict) -> dict:
    """A REQUESTS row as vLLM processor input. The schema stays JSON text (vLLM's structured
    outputs accept a string), so rows asking for different schemas share one Arrow type.

    >>> r = to_vllm_request({"request_id": "a", "messages": '[{"role": "user", "content": "hi"}]',
    ...                      "schema": '{"type": "object"}', "max_tokens": 8, "temperature": 0.0})
    >>> r["messages"][0]["content"], r["sampling_params"]["structured_outputs"], r[ID_COLUMN]
    ('hi', {'json': '{"type": "object"}'}, 'a')
    """
    return {
        ID_COLUMN: row["request_id"],
        "messages": json.loads(row["messages"]),
        "max_tokens": row["max_tokens"],
        "sampling_params": {"temperature": float(row["temperature"]),
                            "max_tokens": int(row["max_tokens"]),
                            "structured_outputs": {"json": row["schema"]}},
    }


def to_reply(row: dict) -> dict:
    """A processor output row (or a failed row, which Ray passes on with
    ``__inference_error__`` set) as a REPLIES row.

    >>> reply = to_reply({ID_COLUMN: "a", "request_id": 0, "generated_text": '{"q": "x"}',
    ...                   "num_input_tokens": 30, "num_generated_tokens": 8, "max_tokens": 8})
    >>> reply["request_id"], reply["finish_reason"]
    ('a', 'length')
    """
    if row.get("__inference_error__"):
        return error_reply(row[ID_COLUMN], f"vLLM: {row['__inference_error__']}")
    generated = int(row.get("num_generated_tokens") or 0)
    return {"request_id": row[ID_COLUMN], "text": row.get("generated_text") or "",
            "finish_reason": "length" if generated >= int(row["max_tokens"]) else "stop",
            "prompt_tokens": int(row.get("num_input_tokens") or 0),
            "completion_tokens": generated, "error": None, "attempts": None}


def processor_config(config: LLMConfig, batch_size: int):
    """The Ray Data vLLM processor settings for ``config`` (no vLLM import needed)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(
        model_source=config.model,
        engine_kwargs={"max_model_len": config.n_ctx, **config.engine_kwargs},
        batch_size=batch_size,
        concurrency=config.replicas,
        should_continue_on_error=True,  # one bad row is a counted failure, not a failed job
    )


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(f"the vllm LLM backend needs vLLM: {INSTALL}")


def answer_with_vllm(requests: pa.Table, config: LLMConfig, *, batch_size: int) -> pa.Table:
    """REPLIES for ``requests``, computed by vLLM engines on the cluster's GPUs."""
    require_vllm()
    import ray
    from ray.data.llm import build_processor

    processor = build_processor(processor_config(config, batch_size),
                                preprocess=to_vllm_request, postprocess=to_reply)
    return replies_table(processor(ray.data.from_arrow(requests)).take_all())


def replies_table(rows: list[dict]) -> pa.Table:
    """REPLIES from the processor's output rows: those :func:`to_reply` made, and the failed
    rows, which Ray passes on whole (with ``__inference_error__`` set) without postprocessing."""
    return pa.Table.from_pylist([to_reply(r) if r.get("__inference_error__") else
                                 {k: r.get(k) for k in REPLIES.names} for r in rows],
                                schema=REPLIES)
