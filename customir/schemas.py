"""The file contracts between stages: one pyarrow schema per stage output, defined once here.

    ingest   → chunks/     CHUNKS     one row per chunk
    generate → queries/    QUERIES    one row per (query, positive chunk); profile.json
    mine     → candidates/ CANDIDATES one row per queries row, mined candidates as lists
    verify   → triples/    TRIPLES    one row per queries row, LLM-checked negatives as lists
    ingest, generate, mine, verify → skipped.parquet  SKIPPED  one row per input it could not
                                      use, with the reason

A reader calls :func:`read_table`, which fails with the missing column names when a file does not
follow its contract (a stage run on the wrong folder says so instead of crashing later).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CHUNKS = pa.schema([
    ("chunk_id", pa.string()),        # f"{doc_id}#{chunk_index}", stable across reruns
    ("doc_id", pa.string()),          # the record's own id, else its path relative to the corpus
    ("chunk_index", pa.int32()),
    ("source", pa.string()),          # file path relative to the corpus folder
    ("title", pa.string()),           # document title if known (nullable)
    ("heading", pa.string()),         # nearest markdown/HTML heading if known (nullable)
    ("text", pa.string()),
    ("n_tokens", pa.int32()),         # base-model word pieces
])

QUERIES = pa.schema([
    ("query_id", pa.string()),        # sha1 of (kind, query, chunk_id), first 16 hex digits
    ("query", pa.string()),
    ("kind", pa.string()),            # keyword | question | claim | multihop | title | heading
                                      # | subject | inverse_cloze
    ("origin", pa.string()),          # "llm:<model>", "structural" or "inverse_cloze"
    ("chunk_id", pa.string()),        # the positive
    ("doc_id", pa.string()),
    ("supporting_chunk_ids", pa.list_(pa.string())),  # every chunk the query needs (multi-hop:
                                                      # 2-3, one row per chunk; else [chunk_id])
    ("positive_text", pa.string()),   # the positive's text when it is not the chunk's (inverse
                                      # cloze: the chunk without the query sentence), else null
])

CANDIDATES = pa.schema(list(QUERIES) + [
    ("positive_score", pa.float32()),                  # the mining ranker's score of the positive
    ("candidate_chunk_ids", pa.list_(pa.string())),    # kept after margin selection, best first
    ("candidate_scores", pa.list_(pa.float32())),
    ("n_over_margin", pa.int32()),                     # candidates dropped by the margin
])

TRIPLES = pa.schema(list(CANDIDATES) + [
    ("positive_llm_score", pa.float32()),              # verify.method's score of the (lowest)
                                                       # positive, or null if unverified
    ("candidate_llm_scores", pa.list_(pa.float32())),  # aligned with candidate_chunk_ids
    ("candidate_verdicts", pa.list_(pa.string())),     # kept | false_negative | unverified
                                                       # | llm_error (could not be scored)
    ("negative_chunk_ids", pa.list_(pa.string())),     # what training uses
])

SKIPPED = pa.schema([
    ("stage", pa.string()),
    ("item", pa.string()),            # file path, record locator, chunk id or query id
    ("reason", pa.string()),          # a short machine-readable reason
    ("detail", pa.string()),          # human-readable detail (nullable)
])


class SchemaError(ValueError):
    """A stage input that does not follow its contract."""


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast ``table``'s columns to ``schema``, naming any that are missing."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise SchemaError(f"missing columns {missing}; expected {schema.names}")
    return table.select(schema.names).cast(schema)


DATA_DIR = "data"        # a stage's rows: <stage>/data/*.parquet (one or many parts)
SKIPPED_FILE = "skipped.parquet"


def read_table(path: str | Path, schema: pa.Schema) -> pa.Table:
    """Read a stage's rows (a stage folder, a folder of parts or a file) and check the contract."""
    path = Path(path)
    stage_folder = (path / DATA_DIR).is_dir()
    if stage_folder:
        path = path / DATA_DIR
    if not path.exists():
        raise SchemaError(f"{path} does not exist (did the previous stage run?)")
    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    if not files and not stage_folder:  # a stage that kept no rows still has its data/ folder
        raise SchemaError(f"{path} holds no Parquet rows: not a stage folder (expected "
                          f"{path / DATA_DIR}/*.parquet)")
    if not files:
        return schema.empty_table()
    tables = [pq.read_table(f) for f in files]
    try:
        return pa.concat_tables([conform(t, schema) for t in tables])
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None


def write_rows(folder: Path, table: pa.Table, skipped: list[dict]) -> None:
    """Write a stage's rows as ``data/part-0.parquet`` and its skips as ``skipped.parquet``."""
    (folder / DATA_DIR).mkdir(exist_ok=True)
    pq.write_table(table, folder / DATA_DIR / "part-0.parquet")
    pq.write_table(skipped_table(skipped), folder / SKIPPED_FILE)


def skipped_table(rows: list[dict]) -> pa.Table:
    """Build a SKIPPED table from dicts with stage/item/reason/detail."""
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in SKIPPED.names} for row in rows], schema=SKIPPED
    )
