"""The verifier UDF called directly on a batch (no Ray), with the scripted LLM: a multi-hop
question (one row per supporting chunk, one query text) is verified as one, against its weakest
positive, with each pair scored once and the same verdicts on every row."""

import pyarrow as pa
import pytest

from customir.config import LLMConfig, VerifyConfig
from customir.llm.openai_http import RequestCounts
from customir.llm.scripted import ScriptedLLM
from customir.negatives.verify import (FALSE_NEGATIVE, KEPT, LLM_ERROR, UNVERIFIED,
                                       NegativeVerifier, group_by_query, queries_to_verify,
                                       sum_llm_counts)
from customir.schemas import CANDIDATES

# The scripted judge's P(yes) grows with the share of query words in the passage:
# a#0 has all four (0.73), c#0 three (0.62), b#0 two (0.50), d#0 none (0.27).
QUESTION = "alpha beta gamma delta"
TEXTS = {"a#0": "alpha beta gamma delta", "b#0": "alpha beta", "c#0": "alpha beta gamma",
          "d#0": "nothing in common", "e#0": "zeta eta", "f#0": "theta"}


class CountingLLM(ScriptedLLM):
    """The scripted LLM, counting its requests like the HTTP backend (and failing on a passage
    that says so, as a request that fails after its retries would)."""

    def __init__(self):
        super().__init__()
        self.failed = 0
        self.taken = (0, 0)  # calls and failures already handed over

    def choice_log_likelihoods(self, prompt: str, choices: list[str]) -> list[float]:
        if "unscorable" in prompt:
            self.calls, self.failed = self.calls + 1, self.failed + 1
            raise ConnectionError("endpoint down")
        return super().choice_log_likelihoods(prompt, choices)

    def take_request_counts(self) -> RequestCounts:
        calls, failed = self.calls - self.taken[0], self.failed - self.taken[1]
        self.taken = (self.calls, self.failed)
        return RequestCounts(calls, calls, failed)


def _row(query: str, chunk_id: str, supporting: list[str], candidates: list[str]) -> dict:
    return {"query_id": f"{query}:{chunk_id}", "query": query, "kind": "multihop",
            "origin": "llm:x", "chunk_id": chunk_id, "doc_id": chunk_id.split("#")[0],
            "supporting_chunk_ids": supporting, "positive_text": None, "positive_score": 1.0,
            "candidate_chunk_ids": candidates, "candidate_scores": [0.5] * len(candidates),
            "n_over_margin": 0}


MULTI_HOP = [_row(QUESTION, "a#0", ["a#0", "b#0"], ["c#0", "d#0"]),
             _row("zeta", "e#0", ["e#0"], ["f#0"]),
             _row(QUESTION, "b#0", ["a#0", "b#0"], ["c#0", "d#0"])]


def _candidates(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=CANDIDATES)


def _verifier(to_verify: set[str], chunks: dict[str, str] = TEXTS, **options):
    config = VerifyConfig(llm=LLMConfig(backend="scripted"), **options)
    table = pa.table({"chunk_id": list(chunks), "text": list(chunks.values())})
    verifier = NegativeVerifier(table, config, to_verify)
    verifier.llm = CountingLLM()
    return verifier


def _verify(verifier, rows: list[dict]) -> dict[str, dict]:
    out = verifier(group_by_query(_candidates(rows)))
    assert out.num_rows == len(rows)  # every row comes back, once
    return {r["query_id"]: r for r in out.to_pylist()}


def test_a_multi_hop_question_is_judged_once_against_its_weakest_positive():
    verifier = _verifier({QUESTION})
    out = _verify(verifier, MULTI_HOP)
    rows = [out[f"{QUESTION}:a#0"], out[f"{QUESTION}:b#0"]]
    for row in rows:  # c#0 scores above b#0 (the weakest positive), below a#0: dropped on both
        assert row["candidate_verdicts"] == [FALSE_NEGATIVE, KEPT]
        assert row["negative_chunk_ids"] == ["d#0"]
        assert row["positive_llm_score"] == pytest.approx(0.5)
    assert rows[0]["candidate_llm_scores"] == rows[1]["candidate_llm_scores"]
    assert out["zeta:e#0"]["candidate_verdicts"] == [UNVERIFIED]
    # two positives and two candidates, each pair asked once (not once per row)
    assert verifier.llm.calls == 4
    errors, requests = sum_llm_counts(pa.Table.from_pylist(list(out.values())))
    assert errors == {} and requests["requests"] == 4


def test_an_unscorable_positive_marks_the_whole_question_once():
    chunks = {**TEXTS, "b#0": "alpha beta unscorable"}
    verifier = _verifier({QUESTION, "zeta"}, chunks, keep_unverified=False)
    out = _verify(verifier, MULTI_HOP)
    for chunk in ("a#0", "b#0"):
        row = out[f"{QUESTION}:{chunk}"]
        assert row["candidate_verdicts"] == [LLM_ERROR, LLM_ERROR]
        assert row["negative_chunk_ids"] == [] and row["positive_llm_score"] is None
    assert out["zeta:e#0"]["candidate_verdicts"] == [KEPT]
    errors, requests = sum_llm_counts(pa.Table.from_pylist(list(out.values())))
    assert errors == {"ConnectionError": 1}  # the failed pair, counted once
    # the question's 2 positives (no candidate asked after one failed), and zeta's 2 pairs
    assert requests == {"requests": 4, "http_attempts": 4, "http_retries": 0, "failed": 1}


def test_group_by_query_keeps_a_questions_rows_together_in_one_input_row():
    grouped = group_by_query(_candidates(MULTI_HOP))
    assert grouped["query"].to_pylist() == [QUESTION, "zeta"]
    rows = grouped["rows"].to_pylist()
    assert [[r["chunk_id"] for r in group] for group in rows] == [["a#0", "b#0"], ["e#0"]]
    assert rows[0][0] == MULTI_HOP[0]
    assert group_by_query(_candidates([])).num_rows == 0


def test_max_queries_chooses_whole_questions():
    candidates = _candidates(MULTI_HOP + [_row("omega", "f#0", ["f#0"], [])])
    for limit in (1, 2):
        chosen = queries_to_verify(candidates, VerifyConfig(max_queries=limit))
        assert len(chosen) == limit and chosen <= {QUESTION, "zeta"}  # omega: no candidate
    assert queries_to_verify(candidates, VerifyConfig(enabled=False)) == set()


@pytest.mark.ray
def test_the_stage_on_ray_judges_a_question_together_across_batches(tmp_path, ray_cluster):
    """One query per Ray Data batch: a question's rows still reach one actor call together,
    and the balances reconcile."""
    from customir.negatives import verify
    from customir.schemas import CHUNKS, TRIPLES, read_table

    from conftest import write_stage

    chunks = write_stage(tmp_path / "chunks", CHUNKS, [
        {"chunk_id": cid, "doc_id": cid.split("#")[0], "chunk_index": 0, "source": "x.txt",
         "text": text, "n_tokens": 4} for cid, text in TEXTS.items()])
    candidates = write_stage(tmp_path / "candidates", CANDIDATES, MULTI_HOP)
    manifest = verify.run(candidates, chunks, tmp_path / "run",
                          VerifyConfig(llm=LLMConfig(backend="scripted"), batch_size=1))
    rows = {r["query_id"]: r for r in read_table(tmp_path / "run" / "triples",
                                                   TRIPLES).to_pylist()}
    for chunk in ("a#0", "b#0"):
        assert rows[f"{QUESTION}:{chunk}"]["candidate_verdicts"] == [FALSE_NEGATIVE, KEPT]
    assert manifest.extra["verified_queries"] == 2
    assert manifest.balances["queries"].n_in == manifest.balances["queries"].n_out == 3
    balance = manifest.balances["candidates"]
    assert (balance.n_in, balance.n_out, balance.skipped) == (5, 3, {"false_negative": 2})
