"""Ingest stage: a folder of documents → ``chunks/`` (schema CHUNKS) plus ``skipped.parquet``.

Ingest is one sequential pass in the driver: it needs a global view for duplicate detection and
is I/O-bound and cheap next to the LLM stages; the expensive stages after it run on Ray Data.

Balances in the manifest: ``documents`` (files and records in = documents chunked + skipped by
reason) and ``chunks`` (chunks made = written + duplicates + too short). What documents that were
read lost inside them (unreadable PDF pages, invalid UTF-8 bytes replaced) is counted apart, in
``lost_inside_documents``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from customir.config import IngestConfig, TrainConfig
from customir.corpus.chunking import CHUNKER_VERSION, chunk_text, clean_text, normalized_key
from customir.corpus.readers import (READER_VERSION, Document, Skip, corpus_fingerprint,
                                     iter_documents)
from customir.manifest import Balance, Manifest, find_complete, log, stage_output
from customir.models import load_tokenizer, resolve_base_model
from customir.schemas import CHUNKS, write_rows

STAGE = "ingest"


def chunk_document(doc: Document, config: IngestConfig, count_tokens) -> list[dict]:
    """All chunks of one document, in order, with stable ids ``{doc_id}#{index}``."""
    rows = []
    for heading, text in doc.sections:
        for piece in chunk_text(clean_text(text), config.chunk_tokens, count_tokens,
                                config.min_chunk_tokens):
            rows.append({
                "chunk_id": f"{doc.doc_id}#{len(rows)}", "doc_id": doc.doc_id,
                "chunk_index": len(rows), "source": doc.source,
                "title": clean_text(doc.title) if doc.title else None,
                "heading": heading if heading and heading != doc.title else None,
                "text": piece, "n_tokens": count_tokens(piece),
            })
    return rows


@dataclass
class Ingested:
    chunks: pa.Table
    skipped: list[dict]
    balances: dict[str, Balance]
    decoded_as: dict[str, int]      # documents read in an encoding other than UTF-8
    lost_inside: dict[str, dict]    # {what: {count, documents, examples}} (see LostInside)


class LostInside:
    """What documents that were read lost inside them, per kind: how much, in how many
    documents, and the first few of those documents (to look at)."""

    EXAMPLES = 5

    def __init__(self) -> None:
        self.kinds: dict[str, dict] = {}

    def add(self, doc: Document) -> None:
        for what, count in doc.lost.items():
            kind = self.kinds.setdefault(what, {"count": 0, "documents": 0, "examples": []})
            kind["count"] += count
            kind["documents"] += 1
            if len(kind["examples"]) < self.EXAMPLES:
                kind["examples"].append(doc.doc_id)


class EmptyCorpusError(ValueError):
    """Nothing in the corpus folder could be used."""


def ingest(corpus: Path, config: IngestConfig, tokenizer_model: str) -> Ingested:
    """Read, clean, chunk and dedup ``corpus``."""
    tokenizer = load_tokenizer(str(resolve_base_model(tokenizer_model)))

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    docs = Balance(0, 0)
    chunks = Balance(0, 0)
    skipped: list[dict] = []
    rows: list[dict] = []
    seen_docs: set[str] = set()
    seen_text: dict[str, str] = {}
    decoded_as: dict[str, int] = {}
    lost_inside = LostInside()

    def skip(balance: Balance, item: str, reason: str, detail: str | None = None) -> None:
        balance.skipped[reason] = balance.skipped.get(reason, 0) + 1
        skipped.append({"stage": STAGE, "item": item, "reason": reason, "detail": detail})

    for entry in iter_documents(corpus, config):
        docs.n_in += 1
        if isinstance(entry, Skip):
            skip(docs, entry.item, entry.reason, entry.detail)
            continue
        if entry.doc_id in seen_docs:
            skip(docs, entry.doc_id, "duplicate_doc_id", f"again in {entry.source}")
            continue
        seen_docs.add(entry.doc_id)
        made = chunk_document(entry, config, count_tokens)
        if not made:
            skip(docs, entry.doc_id, "empty_text", entry.source)
            continue
        docs.n_out += 1
        lost_inside.add(entry)
        if entry.encoding != "utf-8":
            decoded_as[entry.encoding] = decoded_as.get(entry.encoding, 0) + 1
        for row in made:
            chunks.n_in += 1
            key = normalized_key(row["text"])
            if row["n_tokens"] < config.min_chunk_tokens:
                skip(chunks, row["chunk_id"], "too_short", f"{row['n_tokens']} tokens")
            elif key in seen_text:
                skip(chunks, row["chunk_id"], "duplicate", f"same text as {seen_text[key]}")
            else:
                seen_text[key] = row["chunk_id"]
                rows.append(row)
                chunks.n_out += 1
    return Ingested(pa.Table.from_pylist(rows, schema=CHUNKS), skipped,
                    {"documents": docs, "chunks": chunks}, decoded_as, lost_inside.kinds)


def run(corpus: str | Path, run_dir: str | Path, config: IngestConfig,
        train_config: TrainConfig | None = None) -> Manifest:
    """Write ``run_dir/chunks``; skip the work when an identical output is already there."""
    corpus, out = Path(corpus), Path(run_dir) / "chunks"
    base_model = (train_config or TrainConfig()).base_model
    config_hash = (f"{config.config_hash()}-{base_model}-chunker{CHUNKER_VERSION}"
                   f"-reader{READER_VERSION}")
    inputs = {"corpus": corpus_fingerprint(corpus)}
    if done := find_complete(out, config_hash, inputs):
        log(f"ingest: up to date ({done.balances['chunks'].n_out} chunks), skipping")
        return done
    started = time.monotonic()  # the manifest records the stage's whole wall time
    result = ingest(corpus, config, base_model)
    reasons = dict(Counter(s["reason"] for s in result.skipped))
    if result.chunks.num_rows == 0:
        raise EmptyCorpusError(f"no usable text in {corpus}: {result.balances['documents'].n_in} "
                               f"inputs, all skipped ({reasons or 'the folder is empty'})")
    with stage_output(out, STAGE, config_hash, inputs, started) as (tmp, manifest):
        write_rows(tmp, result.chunks, result.skipped)
        manifest.balances.update(result.balances)
        manifest.extra.update({"skip_reasons": reasons, "corpus": str(corpus),
                               "decoded_as": result.decoded_as,
                               "lost_inside_documents": result.lost_inside})
    log(f"ingest: {result.balances['documents'].n_out} documents → {result.chunks.num_rows} "
        f"chunks; skipped {len(result.skipped)} ({reasons})")
    if result.lost_inside:
        log("ingest: lost inside documents that were read: " + ", ".join(
            f"{what} {kind['count']} in {kind['documents']} (e.g. {kind['examples'][0]})"
            for what, kind in result.lost_inside.items()))
    return manifest
