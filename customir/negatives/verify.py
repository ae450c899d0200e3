"""Verify stage: ``candidates/`` → ``triples/`` (schema TRIPLES): the LLM removes false negatives.

For each query the LLM scores the positive and every mined candidate, by one of the methods of
:class:`~customir.config.VerifyMethod`: a yes/no or 1-10 relevance judgement read from the answer
tokens' probabilities (default), or the mean log P(query | passage) (UPR, Sachan et al. 2022). A
candidate that scores about as well as the positive (score >= positive -
``false_negative_margin``) is most likely relevant too, so it is dropped: thresholds are
relative to the positive, which calibrates them per query and per method. How well each method
separates true passages from BM25 near-misses is measured by ``benchmarks/verifier.py`` (figures
in ``VerifyMethod``'s docstring and the README): with a 1.5B model, barely above chance.

A query is verified as a whole: a multi-hop question has one row per supporting chunk, all
with the same query text (and mining took its margin from the weakest of them), so the rows of
one query text are grouped into one input row of the UDF (:func:`group_by_query`; no Ray Data
batch splits them), each of its positives and distinct candidates is scored once, every
candidate is judged against the *lowest* positive score, and all its rows get the same verdicts
(``positive_llm_score`` is that lowest score). ``max_queries`` counts query texts.

A pair the LLM could not score (the backend's retries exhausted, a reply without
log-probabilities) is no reason to fail the stage or drop the query: the candidate's verdict is
``llm_error`` (all of a query's candidates when one of its positives could not be scored,
since verdicts are relative to them), and like an unverified candidate it stays a negative only with
``keep_unverified``. ``extra.llm_errors`` counts the failed pairs by error type and
``extra.llm_requests`` the backend's requests, HTTP attempts, retries and failures.

Balances: ``queries`` (rows: in = out) and ``candidates`` (in = kept as negatives +
false_negative + unverified_dropped + llm_error_dropped).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from customir.config import LLMBackend, RayConfig, VerifyConfig, VerifyMethod
from customir.llm.batch import describe_error, llm_gpus
from customir.llm.prompts import (build_judge_prompt, build_scoring_prompt, judge_score,
                                  scoring_continuation)
from customir.llm.protocol import check_llm, load_llm
from customir.manifest import Balance, Manifest, find_complete, fingerprint, log, stage_output
from customir.node_files import resolve
from customir.runtime import map_table, ray_session, split_skips, with_skip_columns
from customir.schemas import CANDIDATES, CHUNKS, TRIPLES, read_table, write_rows

STAGE = "verify"
# Per-row LLM bookkeeping, summed into the manifest and dropped from the written rows.
USAGE = [("llm_requests", pa.int32()), ("llm_attempts", pa.int32()), ("llm_failed", pa.int32()),
         ("llm_errors", pa.list_(pa.string()))]
OUTPUT = pa.schema(list(with_skip_columns(TRIPLES)) + [pa.field(n, t) for n, t in USAGE])
KEPT, FALSE_NEGATIVE, UNVERIFIED, LLM_ERROR = "kept", "false_negative", "unverified", "llm_error"


def judge_candidates(positive_score: float, candidate_scores: list[float],
                     margin: float) -> list[str]:
    """Verdict per candidate: a false negative scores at least ``positive - margin``.

    >>> judge_candidates(-1.0, [-3.0, -0.9, -1.05], margin=0.1)
    ['kept', 'false_negative', 'false_negative']
    """
    return [FALSE_NEGATIVE if s >= positive_score - margin else KEPT for s in candidate_scores]


def choose_queries_to_verify(queries: list[str], limit: int | None, seed: int = 13) -> set[str]:
    if limit is None or limit >= len(queries):
        return set(queries)
    return set(sorted(queries, key=lambda q: hashlib.sha1(f"{seed}:{q}".encode()).hexdigest())
               [:limit])


def queries_to_verify(candidates: pa.Table, config: VerifyConfig) -> set[str]:
    """The query texts whose candidates the LLM checks: at most ``max_queries`` of those with a
    candidate (a multi-hop question counts once), none when verification is off."""
    if not config.enabled:
        return set()
    pairs = zip(candidates["query"].to_pylist(), candidates["candidate_chunk_ids"].to_pylist())
    with_candidates = dict.fromkeys(query for query, found in pairs if found)
    return choose_queries_to_verify(list(with_candidates), config.max_queries)


def group_by_query(candidates: pa.Table) -> pa.Table:
    """The verifier's input: one row per query text (in order of first appearance), holding its
    candidate rows (in input order) as a list in ``rows``.

    >>> table = pa.table({"query": ["q", "r", "q"], "chunk_id": ["a", "b", "c"]})
    >>> [[row["chunk_id"] for row in rows] for rows in group_by_query(table)["rows"].to_pylist()]
    [['a', 'c'], ['b']]
    """
    members: dict[str, list[int]] = defaultdict(list)
    for i, query in enumerate(candidates["query"].to_pylist()):
        members[query].append(i)
    order = [i for rows in members.values() for i in rows]
    offsets = [0]
    for rows in members.values():
        offsets.append(offsets[-1] + len(rows))
    rows = candidates.take(pa.array(order, pa.int64())).to_struct_array().combine_chunks()
    return pa.table({"query": pa.array(list(members), pa.string()),
                     "rows": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), rows)})


def score_pair(llm, method: VerifyMethod, query: str, passage: str) -> float:
    """The verifier's score of one (query, passage) pair: higher = more relevant."""
    if method == VerifyMethod.likelihood:
        return llm.query_log_likelihood(build_scoring_prompt(passage),
                                        scoring_continuation(query))
    scale = "yes_no" if method == VerifyMethod.judge_yes_no else "scale"
    prompt, choices = build_judge_prompt(passage, query, scale)
    return judge_score(llm.choice_log_likelihoods(prompt, choices))


class NegativeVerifier:
    """Ray Data UDF: candidate rows grouped by query text (:func:`group_by_query`) in, the
    rows with LLM scores and verdicts out."""

    def __init__(self, chunks, config: VerifyConfig, to_verify: set[str]):
        """``chunks`` (chunk_id, text): a table or an object reference to one (on a cluster
        the actor gets it through Ray, not from the driver's disk); ``to_verify``: the query
        texts to check (:func:`queries_to_verify`)."""
        chunks = resolve(chunks).select(["chunk_id", "text"]).to_pydict()
        self.text = dict(zip(chunks["chunk_id"], chunks["text"]))
        self.config = config
        self.to_verify = to_verify
        self.llm = load_llm(config.llm, scoring=True) if to_verify else None
        self.threads = config.llm.concurrency if config.llm.backend == LLMBackend.openai else 1

    def _score(self, query: str, passage: str, errors: list[str]) -> float | None:
        """The pair's score, or None with the reason appended to ``errors``."""
        try:
            return score_pair(self.llm, self.config.method, query, passage)
        except Exception as exc:  # noqa: BLE001 - one unscorable pair is counted, not fatal
            errors.append(describe_error(exc))
            return None

    def _unverified(self, row: dict) -> dict:
        candidates = row["candidate_chunk_ids"]
        return {"positive_llm_score": None, "candidate_llm_scores": [None] * len(candidates),
                "candidate_verdicts": [UNVERIFIED] * len(candidates),
                "negative_chunk_ids": list(candidates) if self.config.keep_unverified else []}

    def _score_query(self, rows: list[dict], errors: list[str]
                     ) -> tuple[float | None, dict[str, float | None]]:
        """The lowest score of the query's positives, and each distinct candidate's score
        (None: not scorable); every pair is asked once. No candidate is asked when a positive
        could not be scored: verdicts are relative to the positives."""
        query = rows[0]["query"]
        positives = dict.fromkeys(r["positive_text"] or self.text[r["chunk_id"]] for r in rows)
        positive_scores = [self._score(query, passage, errors) for passage in positives]
        if None in positive_scores:
            return None, {}
        candidates = dict.fromkeys(c for r in rows for c in r["candidate_chunk_ids"])
        return min(positive_scores), {c: self._score(query, self.text[c], errors)
                                      for c in candidates}

    def _judge(self, row: dict, lowest: float | None, scores: dict[str, float | None]) -> dict:
        """One row's verdicts from its query's scores."""
        candidates = row["candidate_chunk_ids"]
        llm_scores = [scores.get(c) for c in candidates]
        margin = self.config.false_negative_margin
        verdicts = [LLM_ERROR if s is None else judge_candidates(lowest, [s], margin)[0]
                    for s in llm_scores]
        keep = {KEPT, LLM_ERROR} if self.config.keep_unverified else {KEPT}
        return {"positive_llm_score": lowest, "candidate_llm_scores": llm_scores,
                "candidate_verdicts": verdicts,
                "negative_chunk_ids": [c for c, v in zip(candidates, verdicts) if v in keep]}

    def _verify(self, rows: list[dict]) -> tuple[list[dict], list[str]]:
        """The rows of one query text (a multi-hop question: one per supporting chunk), judged
        together; and the errors of the pairs the LLM could not score."""
        if rows[0]["query"] not in self.to_verify or not any(r["candidate_chunk_ids"]
                                                             for r in rows):
            return [self._unverified(row) for row in rows], []
        errors: list[str] = []
        lowest, scores = self._score_query(rows, errors)
        return [self._judge(row, lowest, scores) for row in rows], errors

    def _verify_counted(self, rows: list[dict]) -> list[dict]:
        """:meth:`_verify` plus the LLM requests it took (from backends that count them) and
        its errors, on the query's first row only, so that the stage's sums count each once."""
        take = getattr(self.llm, "take_request_counts", None)
        if take:
            take()  # start this query's count from zero
        results, errors = self._verify(rows)
        usage = {"llm_errors": errors}
        if take:
            counts = take()
            usage.update(llm_requests=counts.requests, llm_attempts=counts.attempts,
                         llm_failed=counts.failed)
        rest = {key: [] if key == "llm_errors" else 0 for key in usage}
        return [{**row, **result, **(rest if i else usage), "skip_reason": None,
                 "skip_detail": None} for i, (row, result) in enumerate(zip(rows, results))]

    def __call__(self, batch: pa.Table) -> pa.Table:
        """``batch``: rows of :func:`group_by_query` (one per query text); out: their candidate
        rows, each once, with scores and verdicts."""
        queries = batch.column("rows").to_pylist()
        if self.threads > 1 and len(queries) > 1:  # over HTTP, queries wait on the network
            with ThreadPoolExecutor(min(self.threads, len(queries))) as pool:
                out = list(pool.map(self._verify_counted, queries))
        else:
            out = [self._verify_counted(rows) for rows in queries]
        return pa.Table.from_pylist([row for rows in out for row in rows], schema=OUTPUT)


def sum_llm_counts(rows: pa.Table) -> tuple[dict[str, int], dict | None]:
    """Failed pairs by error type, and the backend's request counts (None when it does not
    count them), summed over the verifier's output rows."""
    errors = Counter(e.split(":", 1)[0] for es in rows["llm_errors"].to_pylist() if es
                     for e in es)
    counted = [n for n in rows["llm_requests"].to_pylist() if n is not None]
    if not counted:
        return dict(errors), None
    total = {name: sum(n or 0 for n in rows[f"llm_{name}"].to_pylist())
             for name in ("requests", "attempts", "failed")}
    return dict(errors), {"requests": total["requests"], "http_attempts": total["attempts"],
                          "http_retries": total["attempts"] - total["requests"],
                          "failed": total["failed"]}


def _check_same_run(candidates, chunks, chunks_dir) -> None:
    """Every chunk the candidates name must be in ``chunks``: otherwise ``--chunks`` is another
    run's folder, which is said here rather than as a KeyError inside an actor."""
    known = set(chunks["chunk_id"].to_pylist())
    named = set(candidates["chunk_id"].to_pylist())
    named.update(c for cs in candidates["candidate_chunk_ids"].to_pylist() for c in cs or [])
    missing = sorted(named - known)
    if missing:
        raise ValueError(f"verify: {len(missing)} chunk ids of the candidates are not in "
                         f"{chunks_dir} (e.g. {missing[0]!r}); give the chunks folder the "
                         "candidates were mined from")


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
    queries = group_by_query(candidates)
    to_verify = queries_to_verify(candidates, config)
    log(f"verify: {len(to_verify)} of {queries.num_rows} queries ({candidates.num_rows} rows) "
        f"get LLM checks ({config.llm.model})")
    chunk_table = read_table(chunks_dir, CHUNKS).select(["chunk_id", "text"])
    _check_same_run(candidates, chunk_table, chunks_dir)
    if to_verify:  # one line before Ray starts, not an LLM actor's death
        check_llm(config.llm, scoring=True)
    with ray_session(ray_config):
        import ray

        chunks = ray.put(chunk_table)
        rows = map_table(queries, NegativeVerifier,
                         constructor_kwargs={"chunks": chunks, "config": config,
                                             "to_verify": to_verify},
                         batch_size=config.batch_size, num_gpus=llm_gpus(config.llm),
                         resources=config.llm.resources_per_worker,
                         restarts=config.llm.worker_restarts)
    errors, requests = sum_llm_counts(rows) if rows is not None else ({}, None)
    table, skips = split_skips(rows, TRIPLES, STAGE, "query_id")
    verdicts = Counter(v for vs in table["candidate_verdicts"].to_pylist() for v in vs)
    n_candidates = sum(verdicts.values())
    n_negatives = sum(len(n) for n in table["negative_chunk_ids"].to_pylist())
    skipped = {FALSE_NEGATIVE: verdicts[FALSE_NEGATIVE]}
    if not config.keep_unverified:
        skipped["unverified_dropped"] = verdicts[UNVERIFIED]
        skipped["llm_error_dropped"] = verdicts[LLM_ERROR]
    checked = verdicts[KEPT] + verdicts[FALSE_NEGATIVE]
    if verdicts[LLM_ERROR] and not checked:  # a broken endpoint or model, not a few bad pairs
        first = next(e for es in rows["llm_errors"].to_pylist() if es for e in es)
        raise ValueError(f"verify: the LLM could score none of the {verdicts[LLM_ERROR]} "
                         f"candidates it was asked about (first error: {first}); fix "
                         "verify.llm and rerun (nothing was written)")
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
            "llm_errors": errors, "llm_requests": requests,
        })
    log(f"verify: verdicts {dict(verdicts)}; {n_negatives} negatives kept"
        + (f"; LLM errors {errors}" if errors else ""))
    return manifest
