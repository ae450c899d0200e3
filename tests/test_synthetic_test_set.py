"""The held-out synthetic queries: positives all in test documents, no inverse-cloze sentences,
one query per text."""

import pyarrow as pa
import pyarrow.parquet as pq

from customir.evaluate.evaluate import synthetic_test_set
from customir.schemas import CHUNKS, TRIPLES
from customir.train.trainer import SPLIT_FILE


def _write(folder, rows, schema):
    (folder / "data").mkdir(parents=True)
    full = [{name: row.get(name) for name in schema.names} for row in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=schema), folder / "data" / "part-0.parquet")


def test_only_queries_whose_every_positive_is_held_out(tmp_path):
    docs = {"a": "train", "b": "test", "c": "test"}
    _write(tmp_path / "chunks", [{"chunk_id": f"{d}#0", "doc_id": d, "chunk_index": 0,
                                  "text": f"text {d}"} for d in docs], CHUNKS)
    pq.write_table(pa.table({"doc_id": list(docs), "split": list(docs.values())}),
                   tmp_path / SPLIT_FILE)
    triples = [
        {"query_id": "q1", "query": "only b", "kind": "question", "chunk_id": "b#0"},
        {"query_id": "q2", "query": "a and b", "kind": "multihop", "chunk_id": "a#0"},
        {"query_id": "q3", "query": "a and b", "kind": "multihop", "chunk_id": "b#0"},
        {"query_id": "q4", "query": "b and c", "kind": "multihop", "chunk_id": "b#0"},
        {"query_id": "q5", "query": "b and c", "kind": "multihop", "chunk_id": "c#0"},
        {"query_id": "q6", "query": "a sentence of c", "kind": "inverse_cloze",
         "chunk_id": "c#0"},
    ]
    _write(tmp_path / "triples", triples, TRIPLES)
    test = synthetic_test_set(tmp_path / "chunks", tmp_path / "triples", tmp_path)
    assert sorted(test.queries.values()) == ["b and c", "only b"]
    multihop = next(q for q, text in test.queries.items() if text == "b and c")
    assert test.qrels[multihop] == {"b#0": 1, "c#0": 1}
    # the inverse-cloze sentence is left out, and counted
    assert test.left_out == {"inverse_cloze": 1}
    balance = test.balance()
    assert (balance.n_in, balance.n_out, balance.skipped) == (3, 2, {"inverse_cloze": 1})


def test_a_test_split_of_inverse_cloze_queries_only_says_they_were_left_out(tmp_path):
    import pytest

    from customir.evaluate.evaluate import EvalDataError, TestSet, check_something_to_evaluate

    test = TestSet({}, {}, {}, {}, test_docs=2, left_out={"inverse_cloze": 3}, on_test_docs=3)
    with pytest.raises(EvalDataError, match=r"the 3 generated queries on the test documents are "
                                            r"all left out .{'inverse_cloze': 3}"):
        check_something_to_evaluate(test, [], tmp_path)
