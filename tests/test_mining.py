"""The mining UDF on small hand-made corpora, called directly on a batch (no Ray): the search
budget, inverse-cloze positives, and what selection counts over the margin."""

import numpy as np
import pyarrow as pa
import pytest

from customir.config import MineConfig, MiningBackend
from customir.negatives.index import build_index
from customir.negatives.mine import CandidateMiner, mining_counts
from customir.negatives.selection import select_under_margin
from customir.schemas import QUERIES

# An inverse-cloze pair: the query is the first sentence of a#0, the training positive the rest.
# b#0 paraphrases the query sentence; it scores well below a#0 (which holds the query word for
# word) but far above the training positive, which shares no term with the query.
ICT_QUERY = "Aspirin irreversibly inhibits platelet cyclooxygenase."
ICT_POSITIVE = "Low doses thin the blood for days."
ICT_CHUNKS = {"a#0": f"{ICT_QUERY} {ICT_POSITIVE}",
              "b#0": "Aspirin blocks cyclooxygenase, so platelets cannot make thromboxane.",
              "c#0": "Statins lower cholesterol.", "d#0": "Weather report for Monday.",
              "e#0": "Low doses of vitamin D.", "f#0": "Platelet counts in anemia."}


def _miner(tmp_path, chunks: dict[str, str], queries: list[dict], **options) -> CandidateMiner:
    config = MineConfig(**options)
    build_index(list(chunks.values()), tmp_path, config)
    table = pa.table({"chunk_id": list(chunks), "doc_id": [c.split("#")[0] for c in chunks]})
    return CandidateMiner(table, pa.Table.from_pylist(queries, schema=QUERIES), tmp_path, config)


def _query(query: str, chunk_id: str, positive_text: str | None = None) -> dict:
    kind = "inverse_cloze" if positive_text else "keyword"
    return {"query_id": f"{kind}:{chunk_id}", "query": query, "kind": kind, "origin": kind,
            "chunk_id": chunk_id, "doc_id": chunk_id.split("#")[0],
            "supporting_chunk_ids": [chunk_id], "positive_text": positive_text}


def _mine(miner: CandidateMiner, queries: list[dict]) -> list[dict]:
    return miner(pa.Table.from_pylist(queries, schema=QUERIES)).to_pylist()


def test_a_long_positive_document_does_not_use_up_the_search(tmp_path):
    """Selection drops every chunk of the positive's document; the search asks for that many
    more than top_k, so candidates from other documents are still found."""
    chunks = {f"long#{i}": f"aspirin heart dose number {i}" for i in range(5)}
    chunks.update({"other#0": "aspirin stomach bleeding", "tea#0": "green tea antioxidants"})
    query = _query("aspirin heart", "long#0")
    (row,) = _mine(_miner(tmp_path, chunks, [query], top_k=2), [query])
    assert row["candidate_chunk_ids"] == ["other#0"]


def test_a_book_length_document_widens_the_search_by_at_most_twice_top_k(tmp_path):
    """The search width is the batch's largest: one 40-chunk document must not make every
    query of the batch fetch 40 more results."""
    chunks = {f"book#{i}": f"aspirin heart page {i}" for i in range(40)}
    chunks["short#0"] = "aspirin stomach"
    book, short = _query("aspirin heart", "book#0"), _query("aspirin stomach", "short#0")
    miner = _miner(tmp_path, chunks, [book, short], top_k=3)
    assert miner._excluded(miner._positives(book)) == 1 + 2 * 3
    assert miner._excluded(miner._positives(short)) == 1


def test_without_the_same_document_rule_only_the_positives_widen_the_search(tmp_path):
    chunks = {f"long#{i}": "aspirin heart" + " dose" * i for i in range(5)}  # longer, lower
    query = _query("aspirin heart", "long#0")
    miner = _miner(tmp_path, chunks, [query], top_k=2, exclude_same_document=False,
                   relative_margin=None)
    (row,) = _mine(miner, [query])
    assert row["candidate_chunk_ids"] == ["long#1", "long#2"]


def test_inverse_cloze_margin_on_bm25_uses_the_training_positive(tmp_path):
    """The indexed chunk holds the query sentence word for word, so its BM25 score says nothing
    about the training positive (the chunk without that sentence): the margin is the positive
    text's own score, here 0 (no term in common), so every lexical candidate is over it."""
    ict, plain = _query(ICT_QUERY, "a#0", ICT_POSITIVE), _query("cyclooxygenase", "b#0")
    miner = _miner(tmp_path, ICT_CHUNKS, [ict, plain])
    ict_row, plain_row = _mine(miner, [ict, plain])
    chunk_score = float(miner.index.score([ICT_QUERY], [0])[0])
    assert ict_row["positive_score"] == 0.0 < chunk_score
    assert ict_row["candidate_chunk_ids"] == [] and ict_row["n_over_margin"] >= 1  # b#0 at least
    assert ict_row["skip_reason"] is None  # still a training row (in-batch negatives)
    assert plain_row["positive_score"] > 0 and plain_row["candidate_chunk_ids"] == ["a#0"]
    counts = mining_counts(pa.Table.from_pylist([ict_row, plain_row]), miner.config)
    assert counts["inverse_cloze_not_mined"] == 0


def test_score_texts_of_the_bm25_index_matches_its_indexed_scores(tmp_path):
    """A chunk's text scored as a text gets the score the index holds for that chunk."""
    index = _miner(tmp_path, ICT_CHUNKS, []).index
    rows = list(range(len(ICT_CHUNKS)))
    for query in (ICT_QUERY, "aspirin platelet platelet", "doses"):
        queries = [query] * len(rows)
        np.testing.assert_allclose(index.score_texts(queries, list(ICT_CHUNKS.values())),
                                   index.score(queries, rows), rtol=1e-5)


def test_inverse_cloze_on_an_index_without_its_average_length_is_not_mined(tmp_path):
    """An index saved before it kept the average chunk length cannot score a text: with a
    margin, such a row gets no hard negatives, and is counted."""
    config = MineConfig()
    build_index(list(ICT_CHUNKS.values()), tmp_path, config)
    (tmp_path / "bm25s" / "customir.json").unlink()
    table = pa.table({"chunk_id": list(ICT_CHUNKS),
                      "doc_id": [c.split("#")[0] for c in ICT_CHUNKS]})
    ict = _query(ICT_QUERY, "a#0", ICT_POSITIVE)
    miner = CandidateMiner(table, pa.Table.from_pylist([ict], schema=QUERIES), tmp_path, config)
    (row,) = _mine(miner, [ict])
    assert row["candidate_chunk_ids"] == [] and row["positive_score"] is None
    counts = mining_counts(pa.Table.from_pylist([row]), miner.config)
    assert counts["inverse_cloze_not_mined"] == counts["queries_without_candidates"] == 1


def test_inverse_cloze_without_a_margin_is_mined_on_bm25(tmp_path):
    ict = _query(ICT_QUERY, "a#0", ICT_POSITIVE)
    miner = _miner(tmp_path, ICT_CHUNKS, [ict], relative_margin=None)
    (row,) = _mine(miner, [ict])
    assert row["candidate_chunk_ids"][0] == "b#0" and row["positive_score"] == 0.0
    assert mining_counts(pa.Table.from_pylist([row]), miner.config)[
        "inverse_cloze_not_mined"] == 0


def test_inverse_cloze_margin_on_the_dense_backend_uses_the_training_positive(tmp_path):
    ict = _query(ICT_QUERY, "a#0", ICT_POSITIVE)
    miner = _miner(tmp_path, ICT_CHUNKS, [ict], backend=MiningBackend.dense)
    (row,) = _mine(miner, [ict])
    vectors = miner.index.encode_queries([ICT_QUERY, ICT_POSITIVE, ICT_CHUNKS["a#0"]])
    wanted, chunk = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert row["positive_score"] == pytest.approx(wanted, abs=1e-5)
    assert abs(wanted - chunk) > 0.1  # the chunk's own score would be another margin
    assert row["candidate_scores"]  # else the margin check below holds for nothing
    assert all(s <= 0.95 * wanted for s in row["candidate_scores"])
    assert mining_counts(pa.Table.from_pylist([row]), miner.config)[
        "inverse_cloze_not_mined"] == 0


def test_score_texts_of_the_dense_index_is_the_cosine(tmp_path):
    miner = _miner(tmp_path, ICT_CHUNKS, [], backend=MiningBackend.dense)
    index = miner.index
    rows = list(range(len(ICT_CHUNKS)))
    queries = ["aspirin"] * len(rows)
    np.testing.assert_allclose(index.score_texts(queries, list(ICT_CHUNKS.values())),
                               index.score(queries, rows), atol=1e-5)


def test_over_margin_candidates_are_counted_past_the_kept_ones():
    """Hybrid candidates come in fusion order, not by score: one over the margin may follow
    the kept ones, and is counted all the same."""
    ranked = [("a", "b", 5.0), ("x", "c", 9.9), ("b", "d", 4.0), ("y", "e", 9.8)]
    chosen = select_under_margin(ranked, {"p"}, {"z"}, 10.0, MineConfig(num_negatives=1))
    assert chosen.chunk_ids == ["a"] and chosen.n_over_margin == 2
