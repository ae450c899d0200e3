"""The generate stage's working data: candidate queries and the chunks they point into.

Every step of :mod:`customir.queries.generate` adds :class:`Candidate` rows (free signals, LLM
replies) or drops them (:mod:`customir.queries.candidate_filters` sets ``reason``); a candidate
names its supporting chunks by their row in :class:`Chunks`. Multi-hop neighbours and round-trip
checks search the chunks with :func:`chunk_index`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from customir.config import MineConfig


@dataclass
class Candidate:
    kind: str
    query: str
    origin: str
    rows: list[int]                   # supporting chunks (rows of the chunks table)
    positive_text: str | None = None
    reason: str | None = None         # why it was dropped; None while kept

    @property
    def from_llm(self) -> bool:
        return self.origin.startswith("llm:")


class Chunks:
    """The chunk table as columns, with the row of each chunk id."""

    def __init__(self, table: pa.Table):
        cols = table.to_pydict()
        self.ids, self.docs, self.texts = cols["chunk_id"], cols["doc_id"], cols["text"]
        self.titles, self.headings = cols["title"], cols["heading"]
        self.sources, self.index = cols["source"], cols["chunk_index"]
        self.row = {cid: i for i, cid in enumerate(self.ids)}

    def record(self, row: int) -> dict:
        return {"title": self.titles[row], "heading": self.headings[row],
                "chunk_index": self.index[row], "source": self.sources[row]}


def chunk_index(chunks_dir: Path, run_dir: Path, backend, cache: dict | None = None):
    """The chunk index of ``backend`` with the default index settings (the mine stage's too
    when it keeps them; other settings get a folder of their own), opened once per run."""
    from customir.negatives.index import ensure_index, open_index

    cache = {} if cache is None else cache
    if backend not in cache:
        mine = MineConfig(backend=backend)
        cache[backend] = open_index(ensure_index(chunks_dir, run_dir, mine), mine)
    return cache[backend]
