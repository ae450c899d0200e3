"""Mine stage: ``queries/`` + ``chunks/`` → ``candidates/`` (schema CANDIDATES), on Ray Data.

Each actor builds the BM25 index over all chunks once, then scores its batches of queries. A
query's positives are every chunk that the same query text was written for.

Balance: ``queries`` (in = out + skipped: positive_not_in_corpus). A query may end up with no
candidate (all over the margin, or no term in common): it still trains on in-batch negatives and
is counted in ``extra.queries_without_candidates``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa

from customir.config import MineConfig, RayConfig
from customir.manifest import Balance, Manifest, find_complete, fingerprint, log, stage_output
from customir.negatives.bm25 import BM25Index
from customir.negatives.selection import select_under_margin
from customir.runtime import (SKIP_DETAIL, SKIP_REASON, map_parquet, ray_session, split_skips,
                              with_skip_columns)
from customir.schemas import CANDIDATES, CHUNKS, DATA_DIR, QUERIES, read_table, write_rows

STAGE = "mine"
OUTPUT = with_skip_columns(CANDIDATES)


class BM25Miner:
    """Ray Data UDF: query rows in, the same rows plus BM25 candidates out."""

    def __init__(self, chunks_dir: str, config: MineConfig, positives: dict[str, list[str]]):
        chunks = read_table(chunks_dir, CHUNKS).select(["chunk_id", "doc_id", "text"]).to_pydict()
        self.config = config
        self.positives = positives
        self.chunk_ids = chunks["chunk_id"]
        self.doc_ids = chunks["doc_id"]
        self.row_of = {cid: i for i, cid in enumerate(self.chunk_ids)}
        self.index = BM25Index(chunks["text"], config.stemmer)

    def _mine(self, row: dict) -> dict:
        positive_ids = set(self.positives.get(row["query"], [row["chunk_id"]]))
        missing = [p for p in positive_ids if p not in self.row_of]
        if missing:
            return {SKIP_REASON: "positive_not_in_corpus", SKIP_DETAIL: ",".join(missing)}
        scores = self.index.scores(row["query"])
        order, top = self.index.top_k(row["query"], self.config.top_k + len(positive_ids),
                                      scores)
        ranked = [(self.chunk_ids[i], self.doc_ids[i], float(s)) for i, s in zip(order, top)]
        positive_score = float(scores[self.row_of[row["chunk_id"]]])
        chosen = select_under_margin(
            ranked, positive_ids, {self.doc_ids[self.row_of[p]] for p in positive_ids},
            positive_score, skip_top=self.config.skip_top,
            relative_margin=self.config.relative_margin, num_negatives=self.config.num_negatives,
            exclude_same_document=self.config.exclude_same_document)
        return {"positive_score": positive_score, "candidate_chunk_ids": chosen.chunk_ids,
                "candidate_scores": chosen.scores, "n_over_margin": chosen.n_over_margin,
                SKIP_REASON: None, SKIP_DETAIL: None}

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [{**row, **self._mine(row)} for row in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=OUTPUT)


def run(queries_dir: str | Path, chunks_dir: str | Path, run_dir: str | Path, config: MineConfig,
        ray_config: RayConfig | None = None) -> Manifest:
    queries_dir, chunks_dir = Path(queries_dir).resolve(), Path(chunks_dir).resolve()
    out = Path(run_dir) / "candidates"
    inputs = {"queries": fingerprint(queries_dir), "chunks": fingerprint(chunks_dir)}
    if done := find_complete(out, config.config_hash(), inputs):
        log(f"mine: up to date ({done.balances['queries'].n_out} queries), skipping")
        return done
    queries = read_table(queries_dir, QUERIES)
    positives: dict[str, list[str]] = defaultdict(list)
    for text, chunk_id in zip(queries["query"].to_pylist(), queries["chunk_id"].to_pylist()):
        positives[text].append(chunk_id)
    log(f"mine: {queries.num_rows} queries against BM25 (top {config.top_k}, "
        f"margin {config.relative_margin})")
    with ray_session(ray_config):
        rows = map_parquet(queries_dir / DATA_DIR, BM25Miner,
                           constructor_kwargs={"chunks_dir": str(chunks_dir), "config": config,
                                               "positives": dict(positives)},
                           batch_size=config.batch_size)
    table, skips = split_skips(rows, CANDIDATES, STAGE, "query_id")
    counts = table.column("candidate_chunk_ids").to_pylist()
    with stage_output(out, STAGE, config.config_hash(), inputs) as (tmp, manifest):
        write_rows(tmp, table, skips)
        manifest.balances["queries"] = Balance(queries.num_rows, table.num_rows,
                                               dict(Counter(s["reason"] for s in skips)))
        manifest.extra.update({
            "candidates": sum(len(c) for c in counts),
            "queries_without_candidates": sum(1 for c in counts if not c),
            "dropped_over_margin": int(sum(table.column("n_over_margin").to_pylist())),
        })
    log(f"mine: {manifest.extra['candidates']} candidates for {table.num_rows} queries; "
        f"{manifest.extra['dropped_over_margin']} over the margin")
    return manifest
