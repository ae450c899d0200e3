"""Mine stage: ``queries/`` + ``chunks/`` → ``candidates/`` (schema CANDIDATES), on Ray Data.

The candidate index (bm25s, pyserini, dense or hybrid; see :mod:`customir.negatives.index`) is
built once under ``<run>/indexes/`` and opened once per mining actor (on another node than
the driver's, from a copy: :mod:`customir.node_files`); actors rank whole batches
of queries at a time (one batched search, one batched scoring of the positives). A query's
positives are every chunk that the same query text was written for (multi-hop queries have
several); the margin is taken from the weakest.

Balance: ``queries`` (in = out + skipped: positive_not_in_corpus). A query may end up with no
candidate (all over the margin, or no term in common): it still trains on in-batch negatives and
is counted in ``extra.queries_without_candidates``.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa

from customir.config import MineConfig, RayConfig
from customir.manifest import Balance, Manifest, find_complete, fingerprint, log, stage_output
from customir.negatives.index import ensure_index, open_index
from customir.negatives.selection import select_under_margin
from customir.node_files import ShippedFolder, resolve
from customir.runtime import (SKIP_DETAIL, SKIP_REASON, map_table, ray_session, split_skips,
                              with_skip_columns)
from customir.schemas import CANDIDATES, CHUNKS, QUERIES, read_table, write_rows

STAGE = "mine"
OUTPUT = with_skip_columns(CANDIDATES)


def positives_by_query(queries: pa.Table) -> dict[str, list[str]]:
    """Every chunk each query text was written for (a multi-hop query has several)."""
    positives: dict[str, list[str]] = defaultdict(list)
    for text, chunk_id in zip(queries["query"].to_pylist(), queries["chunk_id"].to_pylist()):
        positives[text].append(chunk_id)
    return dict(positives)


class CandidateMiner:
    """Ray Data UDF: query rows in, the same rows plus selected candidates out."""

    def __init__(self, chunks, queries, index, config: MineConfig):
        """``chunks`` (chunk_id, doc_id) and ``queries`` (query, chunk_id) are tables or object
        references to them, ``index`` the index folder or a :class:`ShippedFolder` of it: on
        a cluster the actor gets them through Ray, not from the driver's disk."""
        chunks = resolve(chunks).select(["chunk_id", "doc_id"]).to_pydict()
        self.config = config
        self.positives = positives_by_query(resolve(queries))
        self.chunk_ids = chunks["chunk_id"]
        self.doc_ids = chunks["doc_id"]
        self.row_of = {cid: i for i, cid in enumerate(self.chunk_ids)}
        self.index_dir = resolve(index)  # on this node
        self.index = open_index(self.index_dir, config)

    def _positive_rows(self, row: dict) -> tuple[list[str], list[int] | None]:
        ids = list(dict.fromkeys(self.positives.get(row["query"], [row["chunk_id"]])))
        missing = [p for p in ids if p not in self.row_of]
        return ids, (None if missing else [self.row_of[p] for p in ids])

    def _positive_scores(self, queries: list[str], positive_rows: list[list[int]],
                         found, found_scores) -> list[list[float]]:
        """Each positive's score: read from the search results when it was retrieved (the
        usual case), otherwise asked of the index in one batched call."""
        out: list[list[float]] = []
        missing: list[tuple[int, int]] = []
        for j, prows in enumerate(positive_rows):
            hits = dict(zip(found[j].tolist(), found_scores[j].tolist()))
            out.append([hits.get(r, float("nan")) for r in prows])
            missing += [(j, k) for k, r in enumerate(prows) if r not in hits]
        if missing:
            scored = self.index.score([queries[j] for j, _ in missing],
                                      [positive_rows[j][k] for j, k in missing])
            for (j, k), value in zip(missing, scored.tolist()):
                out[j][k] = float(value)
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        positives = [self._positive_rows(row) for row in rows]
        usable = [i for i, (_, prow) in enumerate(positives) if prow is not None]
        out = []
        if usable:
            width = max(len(positives[i][1]) for i in usable)
            queries = [rows[i]["query"] for i in usable]
            found, found_scores = self.index.search(queries, self.config.top_k + width,
                                                    self.config.threads or 0)
            positive_scores = self._positive_scores([rows[i]["query"] for i in usable],
                                                    [positives[i][1] for i in usable],
                                                    found, found_scores)
        results = {}
        for j, i in enumerate(usable):
            ids, prows = positives[i]
            weakest = min(positive_scores[j])
            ranked = [(self.chunk_ids[r], self.doc_ids[r], float(s))
                      for r, s in zip(found[j].tolist(), found_scores[j].tolist()) if r >= 0]
            chosen = select_under_margin(ranked, set(ids), {self.doc_ids[r] for r in prows},
                                         weakest, self.config, rows[i]["query_id"])
            results[i] = {"positive_score": weakest, "candidate_chunk_ids": chosen.chunk_ids,
                          "candidate_scores": chosen.scores,
                          "n_over_margin": chosen.n_over_margin,
                          SKIP_REASON: None, SKIP_DETAIL: None}
        for i, row in enumerate(rows):
            if i in results:
                out.append({**row, **results[i]})
            else:
                missing = [p for p in positives[i][0] if p not in self.row_of]
                out.append({**row, SKIP_REASON: "positive_not_in_corpus",
                            SKIP_DETAIL: ",".join(missing)})
        return pa.Table.from_pylist(out, schema=OUTPUT)


def run(queries_dir: str | Path, chunks_dir: str | Path, run_dir: str | Path, config: MineConfig,
        ray_config: RayConfig | None = None) -> Manifest:
    queries_dir, chunks_dir = Path(queries_dir).resolve(), Path(chunks_dir).resolve()
    out = Path(run_dir) / "candidates"
    inputs = {"queries": fingerprint(queries_dir), "chunks": fingerprint(chunks_dir)}
    if done := find_complete(out, config.config_hash(), inputs):
        log(f"mine: up to date ({done.balances['queries'].n_out} queries), skipping")
        return done
    started = time.monotonic()  # the manifest records the stage's whole wall time
    queries = read_table(queries_dir, QUERIES)
    index_dir = ensure_index(chunks_dir, run_dir, config)
    log(f"mine: {queries.num_rows} queries against {config.backend.value} (top {config.top_k}, "
        f"relative margin {config.relative_margin}, absolute margin {config.absolute_margin})")
    with ray_session(ray_config):
        import ray

        # through the object store, not by path: other nodes may not see this run folder
        actor_inputs = {"chunks": ray.put(read_table(chunks_dir, CHUNKS).select(
                            ["chunk_id", "doc_id"])),
                        "queries": ray.put(queries.select(["query", "chunk_id"])),
                        "index": ShippedFolder.ship(index_dir), "config": config}
        rows = map_table(queries, CandidateMiner, constructor_kwargs=actor_inputs,
                         batch_size=config.batch_size, concurrency=config.num_workers,
                         resources=config.resources_per_worker)
    table, skips = split_skips(rows, CANDIDATES, STAGE, "query_id")
    counts = table.column("candidate_chunk_ids").to_pylist()
    with stage_output(out, STAGE, config.config_hash(), inputs, started) as (tmp, manifest):
        write_rows(tmp, table, skips)
        manifest.balances["queries"] = Balance(queries.num_rows, table.num_rows,
                                               dict(Counter(s["reason"] for s in skips)))
        manifest.extra.update({
            "backend": config.backend.value,
            "candidates": sum(len(c) for c in counts),
            "queries_without_candidates": sum(1 for c in counts if not c),
            "dropped_over_margin": int(sum(table.column("n_over_margin").to_pylist())),
        })
    log(f"mine: {manifest.extra['candidates']} candidates for {table.num_rows} queries; "
        f"{manifest.extra['dropped_over_margin']} over the margin")
    return manifest
