"""Verify stage: ``candidates/`` → ``triples/`` (schema TRIPLES): the LLM removes false negatives.

For each query the LLM scores the positive and every mined candidate, by one of the methods of
:class:`~customir.config.VerifyMethod`: a yes/no or 1-10 relevance judgement read from the answer
tokens' probabilities (default), or the mean log P(query | passage) (UPR, Sachan et al. 2022). A
candidate that scores about as well as the positive (score >= positive -
``false_negative_margin``) is most likely relevant too, so it is dropped: thresholds are
relative to the positive, which calibrates them per query and per method. How well each method
separates true passages from BM25 near-misses is measured by ``benchmarks/verifier.py`` (figures
in ``VerifyMethod``'s docstring and the README): with a 1.5B model, barely above chance.

Balances: ``queries`` (in = out) and ``candidates`` (in = kept as negatives + false_negative +
unverified_dropped).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa

from customir.config import RayConfig, VerifyConfig, VerifyMethod
from customir.llm.prompts import (build_judge_prompt, build_scoring_prompt, judge_score,
                                  scoring_continuation)
from customir.manifest import Balance, Manifest, find_complete, fingerprint, log, stage_output
from customir.runtime import map_parquet, ray_session, split_skips, with_skip_columns
from customir.schemas import CANDIDATES, CHUNKS, DATA_DIR, TRIPLES, read_table, write_rows

STAGE = "verify"
OUTPUT = with_skip_columns(TRIPLES)
KEPT, FALSE_NEGATIVE, UNVERIFIED = "kept", "false_negative", "unverified"


def judge_candidates(positive_score: float, candidate_scores: list[float],
                     margin: float) -> list[str]:
    """Verdict per candidate: a false negative scores at least ``positive - margin``.

    >>> judge_candidates(-1.0, [-3.0, -0.9, -1.05], margin=0.1)
    ['kept', 'false_negative', 'false_negative']
    """
    return [FALSE_NEGATIVE if s >= positive_score - margin else KEPT for s in candidate_scores]


def choose_queries_to_verify(query_ids: list[str], limit: int | None, seed: int = 13) -> set[str]:
    if limit is None or limit >= len(query_ids):
        return set(query_ids)
    return set(sorted(query_ids, key=lambda q: hashlib.sha1(f"{seed}:{q}".encode()).hexdigest())
               [:limit])


def score_pair(llm, method: VerifyMethod, query: str, passage: str) -> float:
    """The verifier's score of one (query, passage) pair: higher = more relevant."""
    if method == VerifyMethod.likelihood:
        return llm.query_log_likelihood(build_scoring_prompt(passage),
                                        scoring_continuation(query))
    scale = "yes_no" if method == VerifyMethod.judge_yes_no else "scale"
    prompt, choices = build_judge_prompt(passage, query, scale)
    return judge_score(llm.choice_log_likelihoods(prompt, choices))


class NegativeVerifier:
    """Ray Data UDF: candidate rows in, rows with LLM scores and verdicts out."""

    def __init__(self, chunks_dir: str, config: VerifyConfig, to_verify: set[str]):
        from customir.llm.protocol import load_llm

        chunks = read_table(chunks_dir, CHUNKS).select(["chunk_id", "text"]).to_pydict()
        self.text = dict(zip(chunks["chunk_id"], chunks["text"]))
        self.config = config
        self.to_verify = to_verify
        self.llm = load_llm(config.llm, scoring=True) if to_verify else None

    def _score(self, query: str, chunk_id: str) -> float:
        return score_pair(self.llm, self.config.method, query, self.text[chunk_id])

    def _verify(self, row: dict) -> dict:
        candidates = row["candidate_chunk_ids"]
        if row["query_id"] not in self.to_verify or not candidates:
            verdicts = [UNVERIFIED] * len(candidates)
            negatives = list(candidates) if self.config.keep_unverified else []
            return {"positive_llm_score": None, "candidate_llm_scores": [None] * len(candidates),
                    "candidate_verdicts": verdicts, "negative_chunk_ids": negatives}
        positive = (score_pair(self.llm, self.config.method, row["query"], row["positive_text"])
                    if row.get("positive_text") else self._score(row["query"], row["chunk_id"]))
        scores = [self._score(row["query"], cid) for cid in candidates]
        verdicts = judge_candidates(positive, scores, self.config.false_negative_margin)
        return {"positive_llm_score": positive, "candidate_llm_scores": scores,
                "candidate_verdicts": verdicts,
                "negative_chunk_ids": [c for c, v in zip(candidates, verdicts) if v == KEPT]}

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [{**row, **self._verify(row), "skip_reason": None, "skip_detail": None}
                for row in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=OUTPUT)


def run(candidates_dir: str | Path, chunks_dir: str | Path, run_dir: str | Path,
        config: VerifyConfig, ray_config: RayConfig | None = None) -> Manifest:
    candidates_dir, chunks_dir = Path(candidates_dir).resolve(), Path(chunks_dir).resolve()
    out = Path(run_dir) / "triples"
    inputs = {"candidates": fingerprint(candidates_dir), "chunks": fingerprint(chunks_dir)}
    if done := find_complete(out, config.config_hash(), inputs):
        log(f"verify: up to date ({done.balances['queries'].n_out} queries), skipping")
        return done
    started = time.monotonic()  # the manifest records the stage's whole wall time
    candidates = read_table(candidates_dir, CANDIDATES)
    with_candidates = [q for q, c in zip(candidates["query_id"].to_pylist(),
                                         candidates["candidate_chunk_ids"].to_pylist()) if c]
    to_verify = (choose_queries_to_verify(with_candidates, config.max_queries)
                 if config.enabled else set())
    log(f"verify: {len(to_verify)} of {candidates.num_rows} queries get LLM checks "
        f"({config.llm.model})")
    with ray_session(ray_config):
        rows = map_parquet(candidates_dir / DATA_DIR, NegativeVerifier,
                           constructor_kwargs={"chunks_dir": str(chunks_dir), "config": config,
                                               "to_verify": to_verify},
                           batch_size=config.batch_size)
    table, skips = split_skips(rows, TRIPLES, STAGE, "query_id")
    verdicts = Counter(v for vs in table["candidate_verdicts"].to_pylist() for v in vs)
    n_candidates = sum(verdicts.values())
    n_negatives = sum(len(n) for n in table["negative_chunk_ids"].to_pylist())
    skipped = {FALSE_NEGATIVE: verdicts[FALSE_NEGATIVE]}
    if not config.keep_unverified:
        skipped["unverified_dropped"] = verdicts[UNVERIFIED]
    checked = verdicts[KEPT] + verdicts[FALSE_NEGATIVE]
    with stage_output(out, STAGE, config.config_hash(), inputs, started) as (tmp, manifest):
        write_rows(tmp, table, skips)
        manifest.balances["queries"] = Balance(candidates.num_rows, table.num_rows,
                                               dict(Counter(s["reason"] for s in skips)))
        manifest.balances["candidates"] = Balance(n_candidates, n_negatives,
                                                  {k: v for k, v in skipped.items() if v})
        manifest.extra.update({
            "method": config.method.value, "verified_queries": len(to_verify),
            "verdicts": dict(verdicts),
            "dropped_share_of_checked": round(verdicts[FALSE_NEGATIVE] / checked, 4)
            if checked else None,
        })
    log(f"verify: verdicts {dict(verdicts)}; {n_negatives} negatives kept")
    return manifest
