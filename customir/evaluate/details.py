"""What the evaluation report shows besides the metrics: the earlier stages' manifests (funnel,
wall times, training-data summary), query kinds and lengths, example training queries, and
positive vs hard-negative cosines under each model.

A multi-hop question has a triples row (and a query id) per supporting chunk, so everything here
that speaks of *queries* groups rows by (kind, query text) first.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from customir.manifest import Manifest, fingerprint, log
from customir.queries.filtering import word_count
from customir.schemas import TRIPLES, read_table

if TYPE_CHECKING:
    from customir.evaluate.evaluate import TestSet

N_EXAMPLES, MAX_SCORED_ROWS, MIN_HELD_OUT_QUERIES = 10, 500, 20
# The stages evaluate does not read but reports on, each with the input key under which the
# next stage recorded the folder it read (verify ← mine's "candidates", mine ← generate's
# "queries"): in the order the chain is walked back from the triples.
UPSTREAM = (("mine", "candidates"), ("generate", "queries"))


def _read_manifest(folder: Path) -> Manifest | None:
    try:
        return Manifest.read(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stage_manifests(run_dir: Path, chunks_dir: Path, triples_dir: Path,
                    train_dir: Path) -> dict[str, Manifest]:
    """The manifests of the stages before this one, from the folders this stage was given
    (chunks, triples, train) and, for the stages it does not read (generate, mine), from their
    folders in ``run_dir`` — but only where they made the triples being evaluated: mine's when
    verify's manifest recorded that very candidates folder as its input, generate's when mine's
    recorded that queries folder. Otherwise ``run_dir`` may be another run, whose counts and wall
    times would be reported as this one's. A stage whose manifest is missing, unreadable or not
    of this chain is left out (:func:`left_out_note` says so in the report)."""
    from customir.pipeline import STAGE_FOLDERS, STAGES

    given = {"ingest": chunks_dir, "verify": triples_dir, "train": train_dir}
    manifests = {stage: m for stage, folder in given.items() if (m := _read_manifest(folder))}
    reader = manifests.get("verify")
    for stage, key in UPSTREAM:
        folder = run_dir / STAGE_FOLDERS[stage]
        manifest = _read_manifest(folder)
        if reader is None or manifest is None:
            break
        if reader.inputs.get(key) != fingerprint(folder):
            log(f"evaluate: {folder} is not the {key} folder {reader.stage} read; its "
                f"{stage} manifest (and those before it) are left out of the report")
            break
        manifests[stage] = reader = manifest
    return {stage: manifests[stage] for stage in STAGES if stage in manifests}


def left_out_note(manifests: dict[str, Manifest]) -> str:
    """One sentence naming the earlier stages the funnel and the wall times lack ("" if none).

    >>> left_out_note({}).split(" (")[0]
    'Not counted: ingest, generate, mine, verify, train'
    """
    missing = [s for s in ("ingest", "generate", "mine", "verify", "train") if s not in manifests]
    return (f"Not counted: {', '.join(missing)} (no manifest of theirs that made these "
            "triples)." if missing else "")


def report_details(triples_dir: Path, manifests: dict[str, Manifest], test: TestSet,
                   models: dict, cache: dict, batch_size: int, seed: int = 13) -> dict:
    """The funnel of counts, wall time per stage, query kinds and lengths, example queries, and
    the cosine scores (:func:`score_pairs`). ``manifests``: :func:`stage_manifests`."""
    triples = read_table(triples_dir, TRIPLES).select(
        ["query_id", "query", "kind", "chunk_id", "positive_text",
         "negative_chunk_ids"]).to_pylist()
    distinct = dict.fromkeys((t["query"], t["kind"]) for t in triples)
    lengths: dict[str, list[int]] = defaultdict(list)
    for query, kind in distinct:
        lengths[kind].append(word_count(query))  # CJK-aware: one word per ideograph or kana
    with_negatives = {(t["query"], t["kind"]) for t in triples if t["negative_chunk_ids"]}
    shown = [t for t in triples if (t["query"], t["kind"]) in with_negatives] or triples
    scores, note = score_pairs(triples, test, models, cache, batch_size)
    return {"funnel": funnel_counts(manifests, triples),
            "funnel_note": left_out_note(manifests),
            "stage_seconds": {stage: round(m.seconds, 1) for stage, m in manifests.items()},
            "query_kinds": dict(sorted(Counter(kind for _, kind in distinct).items())),
            "query_lengths": dict(lengths), "examples": example_queries(shown, test.corpus, seed),
            "scores": scores, "scores_note": note}


def held_out_rows(triples: list[dict], test: TestSet) -> list[dict]:
    """The rows with hard negatives of the test split's queries: every row of a query in
    ``test.queries`` (whose positives all lie in test documents), matched by text and kind. A
    row whose chunk merely is a test positive is not enough: a multi-hop question with a chunk
    in a training document was trained on."""
    tested = {(t["query"], t["kind"]) for t in triples if t["query_id"] in test.queries}
    return [t for t in triples if t["negative_chunk_ids"] and (t["query"], t["kind"]) in tested]


def score_pairs(triples: list[dict], test: TestSet, models: dict, cache: dict,
                batch_size: int) -> tuple[dict, str]:
    """cos(query, positive) and cos(query, hard negative) under each model, on the held-out test
    queries' rows where there are at least MIN_HELD_OUT_QUERIES of them, else on every row with
    negatives; and the caption that says which. A row's positive is its ``positive_text`` when
    set (an inverse-cloze row trains on its chunk *without* the query sentence), else its chunk.
    """
    held_out = held_out_rows(triples, test)
    n_held_out = len({(t["query"], t["kind"]) for t in held_out})
    from_held_out = n_held_out >= MIN_HELD_OUT_QUERIES
    pool = held_out if from_held_out else [t for t in triples if t["negative_chunk_ids"]]
    scored = sorted(pool, key=lambda t: t["query_id"])[:MAX_SCORED_ROWS]
    n_queries = len({(t["query"], t["kind"]) for t in scored})
    scores = {}
    if scored:
        row = {c: i for i, c in enumerate(test.corpus)}
        for name, model in models.items():
            q = model.encode([t["query"] for t in scored], batch_size=batch_size,
                             normalize_embeddings=True, convert_to_numpy=True)
            positives = _positive_vectors(model, scored, cache[name], row, batch_size)
            scores[name] = {
                "positive": [float(q[i] @ positives[i]) for i in range(len(scored))],
                "negative": [float(q[i] @ cache[name][row[c]]) for i, t in enumerate(scored)
                             for c in t["negative_chunk_ids"]]}
    which = (f"held-out test queries ({n_queries} queries, {len(scored)} rows)" if from_held_out
             else f"queries incl. trained ones ({n_queries} queries, {len(scored)} rows; "
                  f"{n_held_out} < {MIN_HELD_OUT_QUERIES} held out)")
    return scores, (f"cos(query, positive) vs cos(query, hard negative) on {which}, before "
                    "(base) and after (tuned) training")


def _positive_vectors(model, rows: list[dict], chunk_vectors, row: dict[str, int],
                      batch_size: int) -> list:
    """Each row's positive embedding: its ``positive_text`` encoded now, else its chunk's."""
    own = [t["positive_text"] for t in rows if t.get("positive_text") is not None]
    encoded = iter(model.encode(own, batch_size=batch_size, normalize_embeddings=True,
                                convert_to_numpy=True) if own else [])
    return [next(encoded) if t.get("positive_text") is not None
            else chunk_vectors[row[t["chunk_id"]]] for t in rows]


def example_queries(triples: list[dict], corpus: dict[str, str], seed: int) -> list[dict]:
    """Up to N_EXAMPLES queries, the kinds taking turns, a seeded draw within each kind. A query
    is drawn once with all its rows (a multi-hop question has one per supporting chunk), shown
    with every passage it was written for and the union of its rows' first two hard negatives,
    clipped for the report."""
    rows_of: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for t in sorted(triples, key=lambda t: t["query_id"]):
        rows_of[(t["kind"], t["query"])].append(t)
    by_kind: dict[str, list[list[dict]]] = defaultdict(list)
    for (kind, _), rows in rows_of.items():  # in order of first query id: a stable draw
        by_kind[kind].append(rows)
    rng = random.Random(seed)
    for groups in by_kind.values():
        rng.shuffle(groups)
    examples, kinds = [], sorted(by_kind)
    while len(examples) < N_EXAMPLES and any(by_kind.values()):
        for kind in kinds:
            if by_kind[kind] and len(examples) < N_EXAMPLES:
                examples.append(_example(by_kind[kind].pop(), corpus))
    return examples


def _example(rows: list[dict], corpus: dict[str, str]) -> dict:
    """One query's example: each row's positive (its ``positive_text`` when set: what training
    used) joined by " ‖ ", and its negatives, none of them a positive of the same query."""
    positive_ids = {t["chunk_id"] for t in rows}
    positives = dict.fromkeys(
        t["positive_text"] if t.get("positive_text") is not None else corpus.get(t["chunk_id"], "")
        for t in rows)
    negatives = dict.fromkeys(c for t in rows for c in (t["negative_chunk_ids"] or [])[:2]
                              if c not in positive_ids)
    return {"kind": rows[0]["kind"], "query": rows[0]["query"],
            "positive": " ‖ ".join(_clip(p, 300) for p in positives),
            "negatives": [_clip(corpus.get(c, ""), 200) for c in negatives]}


def funnel_counts(manifests: dict[str, Manifest], triples: list[dict]) -> list[tuple[str, int]]:
    """(label, count) per step, from the stage manifests and the triples' rows. A multi-hop
    question has a row (and a query id) per supporting chunk: queries are counted by text and
    kind, as the report's query kinds are, and rows are named rows."""
    funnel = []
    if m := manifests.get("ingest"):
        funnel += [("documents read", m.balances["documents"].n_in),
                   ("documents ingested", m.balances["documents"].n_out),
                   ("chunks", m.balances["chunks"].n_out)]
    if m := manifests.get("generate"):
        funnel.append(("queries kept", m.balances["queries"].n_out))
        if "rows" in m.extra:
            funnel.append(("query rows (one per supporting chunk)", int(m.extra["rows"])))
    if m := manifests.get("mine"):
        funnel.append(("candidates after the margin", int(m.extra.get("candidates", 0))))
    with_negatives = {(t["query"], t["kind"]) for t in triples if t["negative_chunk_ids"]}
    funnel += [("queries with hard negatives", len(with_negatives)),
               ("hard negatives kept", sum(len(t["negative_chunk_ids"]) for t in triples))]
    if m := manifests.get("train"):
        funnel.append(("training rows", m.balances["queries"].n_out))
    return funnel


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n].rsplit(" ", 1)[0] + " …"


def training_data_summary(manifests: dict[str, Manifest]) -> dict:
    """What the model was trained on, from the stage manifests (:func:`stage_manifests`):
    queries per kind, mining and verification counts (the share of checked candidates the LLM
    dropped as false negatives)."""
    return {stage: {"balances": {unit: {"in": b.n_in, "out": b.n_out, "skipped": b.skipped}
                                 for unit, b in manifest.balances.items()},
                    **manifest.extra}
            for stage, manifest in manifests.items()
            if stage in ("generate", "mine", "verify", "train")}
