"""Generate stage: ``chunks/`` → ``queries/`` (schema QUERIES, plus ``profile.json``).

1. **Corpus profile** from a seeded sample of chunks (:mod:`customir.queries.profile`), fed into
   every prompt; with a strong backend the LLM writes its description.
2. **Free signals** for every chunk (:mod:`customir.queries.signals`): titles, e-mail subjects,
   headings and, if configured, inverse-cloze pairs (a chunk drawn for one that has no usable
   sentence split is counted as ``inverse_cloze_no_sentence``).
3. **LLM queries** for the chunks chosen for the LLM (``max_llm_chunks``): each is asked for the
   kinds drawn for it (``kinds`` shares); a ``multihop`` share anchors a question over 1-2
   related chunks of other documents. Invalid parts of replies are re-asked
   (:mod:`customir.queries.asking`), then counted by reason — balance ``llm_queries``. An LLM
   that answers nothing but errors (endpoint down, unknown model, wrong key) — here or as the
   judge — stops the stage before anything is written.
4. **Filters** over all candidates (:mod:`customir.queries.candidate_filters`), in this order —
   balance ``queries``: length, copies of the passage, "the passage", boilerplate titles and
   headings ("Introduction", file names: ``generic_heading``, ``file_name_title``) and ones
   several documents share (``shared_title``), exact and near duplicates (base-model cosine),
   round-trip consistency (an LLM query must find one of its chunks in the ranker's top k;
   Promptagator), LLM-judge grade (Nemotron; off unless ``judge_min_score``).
5. Kept queries are written one row per supporting chunk (a multi-hop question trains on each).

The steps pass :class:`~customir.queries.candidates.Candidate` rows over the chunk table
(:mod:`customir.queries.candidates`).

Counts per kind (asked, reply failures, candidates, kept, dropped by reason, rows) are in the
manifest's ``extra.per_kind`` and in the evaluation report; the LLM requests, their HTTP attempts
and retries, and those that failed after them in ``extra.llm_requests``.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa

from customir.config import (GenerateConfig, LLMBackend, MiningBackend, ProfileMode, RayConfig,
                             TitleChunk)
from customir.manifest import Balance, Manifest, find_complete, fingerprint, log, stage_output
from customir.queries import prompts
from customir.queries.asking import Answers, Ask, ask_generate_llm, require_an_answer
from customir.queries.candidate_filters import (filter_by_judge, filter_each,
                                                filter_near_duplicates, filter_round_trip)
from customir.queries.candidates import Candidate, Chunks, chunk_index
from customir.queries.filtering import chosen, choose_llm_chunks, query_id
from customir.queries.profile import corpus_profile
from customir.queries.signals import (SIGNALS_VERSION, TITLE_KINDS, first_chunks_under_headings,
                                      inverse_cloze_pair, related_chunks, structural_queries)
from customir.runtime import ray_session
from customir.schemas import CHUNKS, QUERIES, read_table, write_rows

STAGE = "generate"
PROFILE_FILE = "profile.json"


# ---- 1. profile ---------------------------------------------------------------------------

def make_profile(chunks: Chunks, config: GenerateConfig) -> tuple[dict, Answers | None]:
    sample = sorted(choose_llm_chunks(chunks.ids, config.profile_sample, config.seed + 1),
                    key=chunks.row.get)
    rows = [chunks.row[c] for c in sample]
    profile = corpus_profile([chunks.texts[r] for r in rows], [chunks.titles[r] for r in rows],
                             [chunks.sources[r] for r in rows], [chunks.headings[r] for r in rows])
    mode = config.profile
    if mode == ProfileMode.auto:
        strong = config.llm.backend in (LLMBackend.openai, LLMBackend.vllm)
        mode = ProfileMode.llm if strong else ProfileMode.terms
    profile["method"] = mode.value
    if mode != ProfileMode.llm or not rows:
        return profile, None
    ask = Ask("profile", {"description": "profile"},
              prompts.build_profile_messages(profile["top_terms"], profile["titles"],
                                             profile["document_kinds"]),
              lambda keys: prompts.PROFILE_SCHEMA,
              lambda key, value: prompts.validate_query(value, [], 80), 160)
    answers = ask_generate_llm([ask], config)
    profile["description"] = answers.values.get(("profile", "description"))
    if profile["description"] is None:  # prompts go on with terms and titles only
        profile["description_error"] = answers.failures[("profile", "description")][0]
    return profile, answers


# ---- 2. free signals ----------------------------------------------------------------------

def free_signals(chunks: Chunks, config: GenerateConfig, chunks_dir: Path | None = None,
                 run_dir: Path | None = None, indexes: dict | None = None) -> list[Candidate]:
    """Titles, headings, subjects and inverse-cloze pairs; ``title_chunk: best`` reads the
    chunks' BM25 index (built under ``run_dir`` from ``chunks_dir`` when missing)."""
    out = []
    if config.structural:
        firsts = first_chunks_under_headings(chunks.docs, chunks.index, chunks.headings,
                                             chunks.ids)
        for row, cid in enumerate(chunks.ids):
            for kind, query in structural_queries(chunks.record(row), cid in firsts):
                out.append(Candidate(kind, query, "structural", [row]))
        if config.title_chunk == TitleChunk.best:
            titles = [c for c in out if c.kind in TITLE_KINDS]
            best_title_chunks(titles, chunks, chunk_index(chunks_dir, run_dir,
                                                          MiningBackend.bm25s, indexes))
    if config.inverse_cloze:
        for row, cid in enumerate(chunks.ids):
            if chosen(cid, config.inverse_cloze, config.seed, "ict"):
                pair = inverse_cloze_pair(chunks.texts[row], cid, config.seed)
                if pair:
                    out.append(Candidate("inverse_cloze", pair[0], "inverse_cloze", [row],
                                         positive_text=pair[1]))
                else:  # a counted candidate, so the chunks drawn add up in per_kind
                    out.append(Candidate("inverse_cloze", "", "inverse_cloze", [row],
                                         reason="inverse_cloze_no_sentence"))
    return out


def best_title_chunks(titles: list[Candidate], chunks: Chunks, index) -> None:
    """Move each title (or subject) from its document's first chunk to the chunk ``index``
    scores highest for it among the document's chunks (ties, and a title sharing no word with
    any chunk: the earliest)."""
    rows_of = defaultdict(list)
    for row, doc in enumerate(chunks.docs):
        rows_of[doc].append(row)
    groups = [rows_of[chunks.docs[c.rows[0]]] for c in titles]
    scores = iter(index.score([c.query for c, rows in zip(titles, groups) for _ in rows],
                              [row for rows in groups for row in rows]).tolist())
    for candidate, rows in zip(titles, groups):
        scored = [(next(scores), -chunks.index[row], row) for row in rows]
        candidate.rows = [max(scored)[2]]


# ---- 3. LLM queries -----------------------------------------------------------------------

def multihop_groups(chunks: Chunks, anchors: list[int], config: GenerateConfig,
                    chunks_dir: Path, run_dir: Path,
                    indexes: dict | None = None) -> dict[int, list[int]]:
    """Anchor row → the 2-3 rows of its multi-hop question (anchors without a neighbour from
    another document get none)."""
    if not anchors:
        return {}
    index = chunk_index(chunks_dir, run_dir, config.related_by, indexes)
    heads = [" ".join(chunks.texts[r].split()[:128]) for r in anchors]
    found, _ = index.search(heads, config.related_top_k + 1)
    groups = {}
    for anchor, ranked in zip(anchors, found.tolist()):
        extra = 2 if (config.multihop_chunks == 3 and
                      chosen(chunks.ids[anchor], 0.5, config.seed, "hops")) else 1
        if picked := related_chunks(anchor, ranked, chunks.docs, extra):
            groups[anchor] = [anchor, *picked]
    return groups


def query_asks(chunks: Chunks, config: GenerateConfig, profile: dict, llm_rows: list[int],
               groups: dict[int, list[int]]) -> list[Ask]:
    asks = []
    for row in llm_rows:
        cid, text = chunks.ids[row], chunks.texts[row]
        kinds = [k for k, share in config.kinds.items() if chosen(cid, share, config.seed, k)]
        if kinds:
            asks.append(Ask(
                f"q:{cid}", {k: k for k in kinds},
                prompts.build_query_messages(text, chunks.titles[row], profile),
                prompts.query_schema,
                lambda key, value, t=text: prompts.validate_query(value, [t],
                                                                  config.max_query_words),
                config.llm.max_tokens))
    for anchor, rows in groups.items():
        texts = [chunks.texts[r] for r in rows]
        asks.append(Ask(
            f"m:{chunks.ids[anchor]}", {"question": "multihop"},
            prompts.build_multihop_messages(texts, [chunks.titles[r] for r in rows], profile),
            lambda keys: prompts.MULTIHOP_SCHEMA,
            lambda key, value, t=texts: prompts.validate_query(value, t, config.max_query_words),
            config.llm.max_tokens))
    return asks


def llm_candidates(answers: Answers, chunks: Chunks,
                   groups: dict[int, list[int]], origin: str) -> list[Candidate]:
    out = []
    for (rid, key), query in sorted(answers.values.items()):
        cid = rid.split(":", 1)[1]
        rows = groups[chunks.row[cid]] if rid.startswith("m:") else [chunks.row[cid]]
        kind = "multihop" if rid.startswith("m:") else key
        out.append(Candidate(kind, query, origin, rows))
    return out


# ---- 4. filters: in customir.queries.candidate_filters ----------------------------------


# ---- 5. rows, counts, run -----------------------------------------------------------------

def query_rows(candidates: list[Candidate], chunks: Chunks) -> pa.Table:
    rows = []
    for c in candidates:
        if c.reason is not None:
            continue
        supporting = [chunks.ids[r] for r in c.rows]
        for r in c.rows:
            rows.append({"query_id": query_id(c.kind, c.query, chunks.ids[r]), "query": c.query,
                         "kind": c.kind, "origin": c.origin, "chunk_id": chunks.ids[r],
                         "doc_id": chunks.docs[r], "supporting_chunk_ids": supporting,
                         "positive_text": c.positive_text})
    return pa.Table.from_pylist(rows, schema=QUERIES)


def written_queries(table: pa.Table) -> int:
    """The distinct queries in the written rows (a multi-hop question has a row per chunk),
    counted from the table itself so the ``queries`` balance checks what was written."""
    return len({(kind, query, tuple(chunks)) for kind, query, chunks in zip(
        table.column("kind").to_pylist(), table.column("query").to_pylist(),
        table.column("supporting_chunk_ids").to_pylist())})


def per_kind_counts(asks: list[Ask], answers: Answers | None, candidates: list[Candidate],
                    table: pa.Table) -> dict:
    counts: dict = defaultdict(lambda: {"asked": 0, "written": 0, "reply_failures": Counter(),
                                        "candidates": 0, "kept": 0, "dropped": Counter(),
                                        "rows": 0})
    for ask in asks:
        for key, kind in ask.kinds.items():
            counts[kind]["asked"] += 1
            if answers and (ask.request_id, key) in answers.values:
                counts[kind]["written"] += 1
            elif answers:
                counts[kind]["reply_failures"][answers.failures[(ask.request_id, key)][0]] += 1
    for c in candidates:
        counts[c.kind]["candidates"] += 1
        if c.reason is None:
            counts[c.kind]["kept"] += 1
        else:
            counts[c.kind]["dropped"][c.reason] += 1
    for kind, n in Counter(table.column("kind").to_pylist()).items():
        counts[kind]["rows"] = n
    return {k: {name: dict(v) if isinstance(v, Counter) else v for name, v in d.items()}
            for k, d in sorted(counts.items())}


def llm_request_counts(phases: list[Answers | None]) -> dict[str, int]:
    """Requests sent over all phases, the HTTP attempts and retries they took (0 for in-process
    backends) and those that failed after their retries (the same keys as verify's)."""
    usages = [a.usage for a in phases if a]
    return {"requests": sum(u["requests"] for u in usages),
            "http_attempts": sum(u["http_attempts"] for u in usages),
            "http_retries": sum(u["http_retries"] for u in usages),
            "failed": sum(u["llm_errors"] for u in usages)}


def _skips(asks: list[Ask], answers: Answers | None, candidates: list[Candidate],
           chunks: Chunks) -> list[dict]:
    skips = []
    for ask in asks:
        for key, kind in ask.kinds.items():
            if answers and (ask.request_id, key) not in answers.values:
                reason, detail = answers.failures[(ask.request_id, key)]
                skips.append({"stage": STAGE, "item": f"{ask.request_id} [{kind}]",
                              "reason": f"reply_{reason}", "detail": detail[:300]})
    for c in candidates:
        if c.reason is not None:
            skips.append({"stage": STAGE, "item": f"{chunks.ids[c.rows[0]]} [{c.kind}]",
                          "reason": c.reason,  # no query: the chunk's text says why
                          "detail": (c.query or chunks.texts[c.rows[0]])[:300]})
    return skips


def no_query_message(n_chunks: int, n_candidates: int, dropped: Counter,
                     failures: Counter) -> str:
    """Why generate kept no query, and what to change.

    >>> print(no_query_message(1, 0, Counter(), Counter())[42:])  # doctest: +ELLIPSIS
    no candidate at all (documents without titles or headings give no free queries); ...
    >>> print(no_query_message(9, 4, Counter(roundtrip_miss=3, too_short=1), Counter())[42:])
    ... # doctest: +ELLIPSIS
    all 4 candidates were dropped (most: roundtrip_miss 3; all: {...}); loosen that filter ...
    """
    head = f"generate: no query kept for the {n_chunks} chunks: "
    if not n_candidates:
        return head + ("no candidate at all (documents without titles or headings give no free "
                       "queries" + (f"; LLM reply failures {dict(failures)}" if failures else "")
                       + "); let the LLM write some (generate.max_llm_chunks, generate.kinds) "
                       "or set generate.inverse_cloze")
    reason, count = dropped.most_common(1)[0]
    return head + (f"all {n_candidates} candidates were dropped (most: {reason} {count}; all: "
                   f"{dict(dropped)}); loosen that filter (see README, Query generation)")


def run(chunks_dir: str | Path, run_dir: str | Path, config: GenerateConfig,
        ray_config: RayConfig | None = None) -> Manifest:
    """Write ``run_dir/queries``; skip the work when an identical output is already there."""
    chunks_dir, run_dir = Path(chunks_dir).resolve(), Path(run_dir).resolve()
    out = run_dir / "queries"
    inputs = {"chunks": fingerprint(chunks_dir)}
    config_hash = f"{config.config_hash()}-signals{SIGNALS_VERSION}"
    if done := find_complete(out, config_hash, inputs):
        log(f"generate: up to date ({done.balances['queries'].n_out} queries), skipping")
        return done
    started = time.monotonic()  # the manifest records the stage's whole wall time
    from customir.llm.protocol import check_llm

    if config.llm.backend != LLMBackend.llamacpp:  # one line before any work (and before Ray
        check_llm(config.llm)  # starts), not an LLM actor's death in its __init__
    chunks = Chunks(read_table(chunks_dir, CHUNKS))
    wants_llm = any(config.kinds.values()) or config.multihop > 0
    llm_ids = (choose_llm_chunks(chunks.ids, config.max_llm_chunks, config.seed)
               if wants_llm else set())
    llm_rows = sorted(chunks.row[c] for c in llm_ids)
    if llm_rows and config.llm.backend == LLMBackend.llamacpp:  # an extra: needed only if used
        check_llm(config.llm)
    anchors = [r for r in llm_rows if chosen(chunks.ids[r], config.multihop, config.seed, "mh")]
    log(f"generate: {len(chunks.ids)} chunks, {len(llm_rows)} go to the LLM "
        f"({config.llm.backend.value}: {config.llm.model}), {len(anchors)} anchor multi-hop")
    origin = f"llm:{config.llm.model}"
    with ray_session(ray_config):
        profile, profile_answers = make_profile(chunks, config)
        indexes: dict = {}  # titles, multi-hop neighbours and round-trip checks share an index
        candidates = free_signals(chunks, config, chunks_dir, run_dir, indexes)
        groups = multihop_groups(chunks, anchors, config, chunks_dir, run_dir, indexes)
        asks = query_asks(chunks, config, profile, llm_rows, groups)
        answers = ask_generate_llm(asks, config) if asks else None
        if answers:
            require_an_answer(answers, "the LLM answered none of the {n} queries it was asked for")
            candidates += llm_candidates(answers, chunks, groups, origin)
        filter_each(candidates, chunks, config)
        filter_near_duplicates(candidates, config)
        filter_round_trip(candidates, config, chunks_dir, run_dir, indexes)
        judge_answers = filter_by_judge(candidates, chunks, config)
    table = query_rows(candidates, chunks)
    per_kind = per_kind_counts(asks, answers, candidates, table)
    asked = sum(d["asked"] for d in per_kind.values())
    failures = Counter(f"reply_{answers.failures[(a.request_id, k)][0]}"
                       for a in asks for k in a.kinds
                       if answers and (a.request_id, k) not in answers.values)
    dropped = Counter(c.reason for c in candidates if c.reason)
    if not table.num_rows:  # nothing to train on: said here, not by train after mine/verify
        raise ValueError(no_query_message(len(chunks.ids), len(candidates), dropped, failures))
    answered_chunks = {rid.split(":", 1)[1] for rid, _ in (answers.values if answers else {})
                       if rid.startswith("q:")}
    asked_chunks = {a.request_id.split(":", 1)[1] for a in asks if a.request_id.startswith("q:")}
    with stage_output(out, STAGE, config_hash, inputs, started) as (tmp, manifest):
        write_rows(tmp, table, _skips(asks, answers, candidates, chunks))
        (tmp / PROFILE_FILE).write_text(json.dumps(profile, indent=2))
        manifest.balances.update({
            "llm_queries": Balance(asked, asked - sum(failures.values()), dict(failures)),
            "llm_chunks": Balance(len(asked_chunks), len(answered_chunks),
                                  {"no_usable_reply": len(asked_chunks - answered_chunks)}
                                  if asked_chunks - answered_chunks else {}),
            "queries": Balance(len(candidates), written_queries(table), dict(dropped)),
        })
        manifest.extra.update({
            "kinds": dict(Counter(table.column("kind").to_pylist())),
            "per_kind": per_kind,
            "rows": table.num_rows,
            "multihop_anchors": {"chosen": len(anchors), "with_related_chunks": len(groups),
                                 "without_related_chunks": len(anchors) - len(groups)},
            "llm": config.llm.model,
            "llm_usage": {name: (a.usage if a else None) for name, a in
                          (("profile", profile_answers), ("queries", answers),
                           ("judge", judge_answers))},
            "llm_requests": llm_request_counts([profile_answers, answers, judge_answers]),
            "profile": profile,
            "seconds": round(time.monotonic() - started, 1),
        })
    log(f"generate: {table.num_rows} query rows {manifest.extra['kinds']}; dropped "
        f"{dict(dropped)}; reply failures {dict(failures)}")
    return manifest
