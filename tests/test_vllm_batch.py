"""The vllm backend's row handling through Ray 2.60's own processor stage code, on CPU: a
stand-in engine stage returns what ``vLLMEngineStageUDF._generate_with_error_handling`` returns
(its own ``request_id`` counter, -1 for a failed row), merged into the rows by Ray's
``StatefulStageUDF`` as in a real run. vLLM itself is not needed."""

import asyncio

from ray.llm._internal.batch.stages.base import (StatefulStageUDF, wrap_postprocess,
                                                 wrap_preprocess)
from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMOutputData

from customir.llm.batch import request_row
from customir.llm.vllm_batch import replies_table, to_reply, to_vllm_request

DATA = "__data"


class StandInEngine(StatefulStageUDF):
    """Answers each row as vLLM's engine stage does (vllm_engine_stage.py, Ray 2.60): a
    success row gets the engine's counter as ``request_id``; a row whose prompt says "fail" the
    error row with ``request_id`` -1."""

    counter = 0

    async def udf(self, rows):
        for row in rows:
            common = {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN],
                      "batch_uuid": "u", "params": ""}
            if "fail" in row["messages"][0]["content"]:
                out = vLLMOutputData(prompt="p", prompt_token_ids=None, num_input_tokens=0)
                yield {**out.model_dump(), **common, "request_id": -1, "time_taken_llm": -1,
                       "__inference_error__": "ValueError: prompt too long"}
                continue
            out = vLLMOutputData(prompt="p", num_input_tokens=3, generated_text='{"q": "x"}',
                                 num_generated_tokens=4)
            yield {**out.model_dump(), **common, "request_id": self.counter,
                   "time_taken_llm": 0.1, "__inference_error__": ""}
            self.counter += 1


def test_replies_keep_our_request_ids_through_the_engine_stage():
    ids = ["q:chunk-a#0", "q:chunk-b#3", "q:chunk-c#1"]
    prompts = ["hi", "fail", "hello"]
    requests = [request_row(rid, [{"role": "user", "content": p}], {"type": "object"}, 16, 0.0)
                for rid, p in zip(ids, prompts)]
    preprocess = wrap_preprocess(to_vllm_request, DATA)
    engine = StandInEngine(data_column=DATA, expected_input_keys=[])

    async def through_engine():
        async for out in engine({DATA: [preprocess(r)[DATA] for r in requests]}):
            return out[DATA]

    merged = asyncio.run(through_engine())
    assert [r["request_id"] for r in merged] == [0, -1, 1]  # the engine's, over ours
    postprocess = wrap_postprocess(to_reply, DATA)
    replies = replies_table([postprocess({DATA: r}) for r in merged]).to_pylist()
    assert [r["request_id"] for r in replies] == ids
    assert [r["finish_reason"] for r in replies] == ["stop", "error", "stop"]
    assert replies[1]["error"] == "vLLM: ValueError: prompt too long"
    assert replies[0]["text"] == '{"q": "x"}' and replies[2]["completion_tokens"] == 4
