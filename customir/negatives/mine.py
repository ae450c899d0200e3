"""Mine stage: ``queries/`` + ``chunks/`` → ``candidates/`` (schema CANDIDATES), on Ray Data.

The candidate index (bm25s, pyserini, dense or hybrid; see :mod:`customir.negatives.index`) is
built once under ``<run>/indexes/<backend>-<hash of its settings>/`` (generate's folder too when
mine keeps the default index settings, which generate uses) and opened once per mining actor (on
another node than the driver's, from a copy: :mod:`customir.node_files`); actors rank whole
batches of queries at a time (one batched search, one batched scoring of the positives). A
query's positives are every chunk that the same query text was written for (multi-hop queries
have several); the margin is taken from the weakest. The search asks for ``top_k`` chunks plus
as many as selection passes over (the positives and, by default, the chunks of their documents,
up to ``2 × top_k`` of them), so a long positive document does not use up the candidates.

An inverse-cloze query's positive is its chunk *without* the query sentence (``positive_text``),
so its margin is measured against that text, not against the indexed chunk that holds the query
word for word (a near-paraphrase would pass far under that margin). The backends score the text
itself (``score_texts``: dense and hybrid encode it, bm25s scores it with the corpus's
statistics); pyserini scores only indexed chunks (as does a bm25s index saved before it kept its
average chunk length), so there with a margin such a query is not mined: its ``positive_score``
is null, it has no candidates and trains on in-batch negatives, and it is counted in
``extra.inverse_cloze_not_mined``.

Balance: ``queries`` (in = out + skipped: positive_not_in_corpus). A query may end up with no
candidate (all over the margin, or no term in common): it still trains on in-batch negatives and
is counted in ``extra.queries_without_candidates``.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa

from customir.config import MineConfig, RayConfig
from customir.manifest import Balance, Manifest, find_complete, fingerprint, log, stage_output
from customir.negatives.index import ensure_index, open_index
from customir.negatives.selection import has_margin, select_under_margin
from customir.node_files import ShippedFolder, resolve
from customir.runtime import (SKIP_DETAIL, SKIP_REASON, map_table, ray_session, split_skips,
                              with_skip_columns)
from customir.schemas import CANDIDATES, CHUNKS, QUERIES, read_table, write_rows

STAGE = "mine"
OUTPUT = with_skip_columns(CANDIDATES)


class Positives(NamedTuple):
    """A query's positives: chunk ids (multi-hop: several), their row numbers in the index (None
    when one is not in the corpus) and, for each, the text it trains with when that is not the
    indexed chunk's (inverse cloze), else None."""

    ids: list[str]
    rows: list[int] | None
    texts: list[str | None]


def positives_by_query(queries: pa.Table) -> dict[str, list[tuple[str, str | None]]]:
    """Every (chunk, its own positive text or None) each query text was written for (a
    multi-hop query has several)."""
    positives: dict[str, dict] = defaultdict(dict)
    for text, chunk_id, own in zip(queries["query"].to_pylist(), queries["chunk_id"].to_pylist(),
                                   queries["positive_text"].to_pylist()):
        positives[text][(chunk_id, own)] = None
    return {text: list(pairs) for text, pairs in positives.items()}


def _fill(scores: list[list], places: list[tuple[int, int]], values) -> None:
    for (j, k), value in zip(places, values.tolist()):
        scores[j][k] = float(value)


class CandidateMiner:
    """Ray Data UDF: query rows in, the same rows plus selected candidates out."""

    def __init__(self, chunks, queries, index, config: MineConfig):
        """``chunks`` (chunk_id, doc_id) and ``queries`` (query, chunk_id, positive_text) are
        tables or object references to them, ``index`` the index folder or a
        :class:`ShippedFolder` of it: on a cluster the actor gets them through Ray, not from the
        driver's disk."""
        chunks = resolve(chunks).select(["chunk_id", "doc_id"]).to_pydict()
        self.config = config
        self.positives = positives_by_query(resolve(queries))
        self.chunk_ids = chunks["chunk_id"]
        self.doc_ids = chunks["doc_id"]
        self.chunks_per_doc = Counter(self.doc_ids)
        self.row_of = {cid: i for i, cid in enumerate(self.chunk_ids)}
        self.index_dir = resolve(index)  # on this node
        self.index = open_index(self.index_dir, config)
        self.score_texts = getattr(self.index, "score_texts", None)  # None: see the docstring

    def _positives(self, row: dict) -> Positives:
        pairs = self.positives.get(row["query"], [(row["chunk_id"], row["positive_text"])])
        ids = [chunk_id for chunk_id, _ in pairs]
        rows = None if any(p not in self.row_of for p in ids) else [self.row_of[p] for p in ids]
        return Positives(ids, rows, [text for _, text in pairs])

    def _excluded(self, positives: Positives) -> int:
        """How many chunks selection may pass over for these positives: themselves and, by
        default, the chunks of their documents — at most ``2 × top_k`` of those, since one
        book-length document would otherwise widen the search of its whole batch."""
        own = len(set(positives.ids))
        if not self.config.exclude_same_document:
            return own
        chunks = sum(self.chunks_per_doc[d] for d in {self.doc_ids[r] for r in positives.rows})
        return min(chunks, own + 2 * self.config.top_k)

    def _positive_scores(self, queries: list[str], positives: list[Positives],
                         found, found_scores) -> list[list[float | None]]:
        """Each positive's score, batched: an indexed chunk's is read from the search results
        when it was retrieved (the usual case), otherwise asked of the index; a text of its own
        (inverse cloze) is scored as that text, or is None where the backend cannot."""
        out: list[list[float | None]] = []
        unretrieved: list[tuple[int, int]] = []
        own_text: list[tuple[int, int]] = []
        for j, p in enumerate(positives):
            hits = dict(zip(found[j].tolist(), found_scores[j].tolist()))
            out.append([hits.get(r) if t is None else None for r, t in zip(p.rows, p.texts)])
            for k, (r, t) in enumerate(zip(p.rows, p.texts)):
                if t is not None:
                    own_text.append((j, k))
                elif r not in hits:
                    unretrieved.append((j, k))
        if unretrieved:
            _fill(out, unretrieved, self.index.score([queries[j] for j, _ in unretrieved],
                                                     [positives[j].rows[k]
                                                      for j, k in unretrieved]))
        if own_text and self.score_texts:
            _fill(out, own_text, self.score_texts([queries[j] for j, _ in own_text],
                                                  [positives[j].texts[k] for j, k in own_text]))
        return out

    def _select(self, row: dict, positives: Positives, scores: list[float | None],
                found, found_scores) -> dict:
        """The row's candidates under the margin of its weakest positive."""
        weakest = None if None in scores else min(scores)
        if weakest is None and has_margin(self.config):  # not mined: see the module docstring
            return {"positive_score": None, "candidate_chunk_ids": [], "candidate_scores": [],
                    "n_over_margin": 0}
        ranked = [(self.chunk_ids[r], self.doc_ids[r], float(s))
                  for r, s in zip(found.tolist(), found_scores.tolist()) if r >= 0]
        chosen = select_under_margin(ranked, set(positives.ids),
                                     {self.doc_ids[r] for r in positives.rows}, weakest,
                                     self.config, row["query_id"])
        return {"positive_score": weakest, "candidate_chunk_ids": chosen.chunk_ids,
                "candidate_scores": chosen.scores, "n_over_margin": chosen.n_over_margin}

    def _mine(self, rows: list[dict], positives: list[Positives]) -> list[dict]:
        """One search for the batch (``top_k`` past what selection passes over), one scoring
        of its positives, then each row's selection."""
        if not rows:
            return []
        queries = [row["query"] for row in rows]
        width = max(self._excluded(p) for p in positives)
        found, found_scores = self.index.search(queries, self.config.top_k + width,
                                                self.config.threads or 0)
        scores = self._positive_scores(queries, positives, found, found_scores)
        return [self._select(row, p, s, found[j], found_scores[j])
                for j, (row, p, s) in enumerate(zip(rows, positives, scores))]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        positives = [self._positives(row) for row in rows]
        usable = [i for i, p in enumerate(positives) if p.rows is not None]
        mined = dict(zip(usable, self._mine([rows[i] for i in usable],
                                            [positives[i] for i in usable])))
        out = []
        for i, row in enumerate(rows):
            if i in mined:
                out.append({**row, **mined[i], SKIP_REASON: None, SKIP_DETAIL: None})
            else:
                missing = [p for p in positives[i].ids if p not in self.row_of]
                out.append({**row, SKIP_REASON: "positive_not_in_corpus",
                            SKIP_DETAIL: ",".join(missing)})
        return pa.Table.from_pylist(out, schema=OUTPUT)


def mining_counts(table: pa.Table, config: MineConfig) -> dict[str, int]:
    """The manifest's counts over the mined rows (see the module docstring)."""
    counts = table.column("candidate_chunk_ids").to_pylist()
    unscored = sum(1 for s in table.column("positive_score").to_pylist() if s is None)
    return {"candidates": sum(len(c) for c in counts),
            "queries_without_candidates": sum(1 for c in counts if not c),
            "inverse_cloze_not_mined": unscored if has_margin(config) else 0,
            "dropped_over_margin": int(sum(table.column("n_over_margin").to_pylist()))}


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
                        "queries": ray.put(queries.select(["query", "chunk_id",
                                                           "positive_text"])),
                        "index": ShippedFolder.ship(index_dir), "config": config}
        rows = map_table(queries, CandidateMiner, constructor_kwargs=actor_inputs,
                         batch_size=config.batch_size, concurrency=config.num_workers,
                         resources=config.resources_per_worker, restarts=config.worker_restarts)
    table, skips = split_skips(rows, CANDIDATES, STAGE, "query_id")
    with stage_output(out, STAGE, config.config_hash(), inputs, started) as (tmp, manifest):
        write_rows(tmp, table, skips)
        manifest.balances["queries"] = Balance(queries.num_rows, table.num_rows,
                                               dict(Counter(s["reason"] for s in skips)))
        manifest.extra.update({"backend": config.backend.value,
                               **mining_counts(table, config)})
    log(f"mine: {manifest.extra['candidates']} candidates for {table.num_rows} queries; "
        f"{manifest.extra['dropped_over_margin']} over the margin")
    return manifest
