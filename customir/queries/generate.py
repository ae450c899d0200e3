"""Generate stage: ``chunks/`` → ``queries/`` (schema QUERIES), on Ray Data.

Every chunk gets its free structural pseudo-queries (title, heading); the chunks chosen for the
LLM (``max_llm_chunks``, a seeded sample) also get one query of each configured kind. Replies
that are not valid JSON and queries that fail the filters are kept as counted skips.

Balances: ``llm_chunks`` (chosen = answered + reply errors) and ``queries`` (candidates =
written + filtered by reason).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa

from customir.config import GenerateConfig, RayConfig
from customir.llm.prompts import ReplyError, build_query_messages, parse_query_reply, query_schema
from customir.manifest import Balance, Manifest, find_complete, fingerprint, log, stage_output
from customir.queries.filtering import (choose_llm_chunks, first_chunks_under_headings, query_id,
                                        reject_reason, structural_queries)
from customir.runtime import (SKIP_DETAIL, SKIP_REASON, map_parquet, ray_session, split_skips,
                              with_skip_columns)
from customir.schemas import CHUNKS, DATA_DIR, QUERIES, read_table, write_rows

STAGE = "generate"
OUTPUT = with_skip_columns(QUERIES)
REPLY_ERROR_KIND = "llm_reply"


class QueryWriter:
    """Ray Data UDF: chunks in, query rows (and skip rows) out. Loads the LLM once per actor.

    Input columns: chunk_id, doc_id, chunk_index, title, heading, text.
    """

    def __init__(self, config: GenerateConfig, llm_chunk_ids: set[str],
                 heading_chunk_ids: set[str]):
        from customir.llm.protocol import load_llm

        self.config = config
        self.llm_chunk_ids = llm_chunk_ids
        self.heading_chunk_ids = heading_chunk_ids
        self.llm = load_llm(config.llm) if llm_chunk_ids else None
        self.schema = query_schema(config.kinds) if llm_chunk_ids else None

    def _llm_queries(self, chunk: dict) -> tuple[list[tuple[str, str]], str | None]:
        messages = build_query_messages(chunk["text"], self.config.kinds, chunk.get("title"))
        try:
            reply = self.llm.complete_json(messages, self.schema, self.config.llm.max_tokens)
            return list(parse_query_reply(reply, self.config.kinds).items()), None
        except ReplyError as exc:
            return [], str(exc)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for chunk in batch.to_pylist():
            candidates = []
            if self.config.structural:
                first = chunk["chunk_id"] in self.heading_chunk_ids
                candidates += [(k, q, "structural") for k, q in structural_queries(chunk, first)]
            if chunk["chunk_id"] in self.llm_chunk_ids:
                pairs, error = self._llm_queries(chunk)
                if error is not None:
                    rows.append({"query_id": None, "query": None, "kind": REPLY_ERROR_KIND,
                                 "origin": f"llm:{self.llm.name}", "chunk_id": chunk["chunk_id"],
                                 "doc_id": chunk["doc_id"], SKIP_REASON: "llm_reply_error",
                                 SKIP_DETAIL: error})
                candidates += [(k, q, f"llm:{self.llm.name}") for k, q in pairs]
            seen = set()
            for kind, query, origin in candidates:
                min_words = (self.config.min_structural_words if origin == "structural"
                             else self.config.min_query_words)
                reason = reject_reason(query, chunk["text"], min_words, self.config.max_query_words)
                if reason is None and query.lower() in seen:
                    reason = "duplicate"
                seen.add(query.lower())
                rows.append({"query_id": query_id(kind, query, chunk["chunk_id"]), "query": query,
                             "kind": kind, "origin": origin, "chunk_id": chunk["chunk_id"],
                             "doc_id": chunk["doc_id"], SKIP_REASON: reason,
                             SKIP_DETAIL: query if reason else None})
        return pa.Table.from_pylist(rows, schema=OUTPUT)


def _balances(all_rows: pa.Table | None, llm_chunk_ids: set[str]) -> dict[str, Balance]:
    rows = all_rows.to_pylist() if all_rows is not None else []
    reply_errors = [r for r in rows if r["kind"] == REPLY_ERROR_KIND]
    answered = {r["chunk_id"] for r in rows
                if r["origin"].startswith("llm:") and r["kind"] != REPLY_ERROR_KIND}
    queries = [r for r in rows if r["kind"] != REPLY_ERROR_KIND]
    filtered = Counter(r[SKIP_REASON] for r in queries if r[SKIP_REASON])
    return {
        "llm_chunks": Balance(len(llm_chunk_ids), len(answered & llm_chunk_ids),
                              {"llm_reply_error": len(reply_errors)} if reply_errors else {}),
        "queries": Balance(len(queries), len(queries) - sum(filtered.values()), dict(filtered)),
    }


def run(chunks_dir: str | Path, run_dir: str | Path, config: GenerateConfig,
        ray_config: RayConfig | None = None) -> Manifest:
    """Write ``run_dir/queries``; skip the work when an identical output is already there."""
    chunks_dir, out = Path(chunks_dir).resolve(), Path(run_dir).resolve() / "queries"
    inputs = {"chunks": fingerprint(chunks_dir)}
    if done := find_complete(out, config.config_hash(), inputs):
        log(f"generate: up to date ({done.balances['queries'].n_out} queries), skipping")
        return done
    meta = read_table(chunks_dir, CHUNKS).select(["chunk_id", "doc_id", "chunk_index", "heading"])
    cols = meta.to_pydict()
    llm_ids = (choose_llm_chunks(cols["chunk_id"], config.max_llm_chunks, config.seed)
               if config.kinds else set())
    heading_ids = first_chunks_under_headings(cols["doc_id"], cols["chunk_index"], cols["heading"],
                                              cols["chunk_id"])
    log(f"generate: {meta.num_rows} chunks, {len(llm_ids)} go to the LLM ({config.llm.model})")
    with ray_session(ray_config):
        rows = map_parquet(chunks_dir / DATA_DIR, QueryWriter,
                           constructor_kwargs={"config": config, "llm_chunk_ids": llm_ids,
                                               "heading_chunk_ids": heading_ids},
                           batch_size=config.batch_size)
    table, skips = split_skips(rows, QUERIES, STAGE, "chunk_id")
    with stage_output(out, STAGE, config.config_hash(), inputs) as (tmp, manifest):
        write_rows(tmp, table, skips)
        manifest.balances.update(_balances(rows, llm_ids))
        manifest.extra["kinds"] = dict(Counter(table.column("kind").to_pylist()))
        manifest.extra["llm"] = config.llm.model
    log(f"generate: {table.num_rows} queries {manifest.extra['kinds']}; skipped {len(skips)}")
    return manifest
