"""The evaluate stage's checks and report inputs, on stage folders built by hand (no model is
loaded): nothing to evaluate is said before loading models, the report reads the folders it was
given, and the funnel counts queries, not rows."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from customir.config import load_config
from customir.evaluate import details, evaluate
from customir.evaluate.evaluate import EvalDataError, Manifest
from customir.manifest import MANIFEST, Balance, fingerprint
from customir.schemas import CHUNKS, TRIPLES
from customir.train.trainer import SPLIT_FILE

DOCS = {"a": "train", "b": "train", "c": "test"}
TRIPLE_ROWS = [  # a multi-hop question has a row (and a query id) per supporting chunk
    {"query_id": "q1", "query": "a and b", "kind": "multihop", "chunk_id": "a#0",
     "negative_chunk_ids": ["c#0"]},
    {"query_id": "q2", "query": "a and b", "kind": "multihop", "chunk_id": "b#0",
     "negative_chunk_ids": ["c#0"]},
    {"query_id": "q3", "query": "only a", "kind": "question", "chunk_id": "a#0",
     "negative_chunk_ids": ["b#0", "c#0"]},
    {"query_id": "q4", "query": "about b", "kind": "title", "chunk_id": "b#0",
     "negative_chunk_ids": []},
]


def _write(folder, rows, schema):
    (folder / "data").mkdir(parents=True)
    full = [{name: row.get(name) for name in schema.names} for row in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=schema), folder / "data" / "part-0.parquet")
    return folder


def _manifest(folder, stage, balances, inputs=None, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(Manifest(stage, "h", inputs or {}, balances, extra).to_json())


@pytest.fixture
def folders(tmp_path):
    """Chunks, triples and train folders under names of their own, outside one run folder."""
    chunks = _write(tmp_path / "my-chunks", [
        {"chunk_id": f"{d}#0", "doc_id": d, "chunk_index": 0, "text": f"text {d}"}
        for d in DOCS], CHUNKS)
    triples = _write(tmp_path / "my-triples", TRIPLE_ROWS, TRIPLES)
    (tmp_path / "my-train").mkdir()
    pq.write_table(pa.table({"doc_id": list(DOCS), "split": list(DOCS.values())}),
                   tmp_path / "my-train" / SPLIT_FILE)
    return chunks, triples, tmp_path / "my-train", tmp_path / "run"


def _no_model(*args, **kwargs):
    raise AssertionError("a model was loaded before the inputs were checked")


def test_nothing_to_evaluate_is_said_before_any_model_is_loaded(folders, monkeypatch):
    """No generated query lies in the test document and no BEIR set is configured: the report
    would have no query set at all (it crashed in matplotlib after encoding everything)."""
    chunks, triples, train, run = folders
    monkeypatch.setattr(evaluate, "load_sentence_transformer", _no_model)
    with pytest.raises(EvalDataError, match=r"no query to evaluate on: none of the generated "
                       r"queries lies wholly in the 1 test documents of .*evaluate.beir names "
                       r"no set"):
        evaluate.run(chunks, triples, train, run, load_config().evaluate, "all-MiniLM-L6-v2")
    assert not (run / "evaluation").exists()


def test_a_beir_set_without_judged_queries_is_said_before_any_model_is_loaded(
        folders, monkeypatch, tmp_path):
    chunks, triples, train, run = folders
    (tmp_path / "q.jsonl").write_text('{"_id": "1", "text": "tides"}\n')
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n1\tnot-here\t1\n")
    config = load_config(None, [f"evaluate.beir=[{{queries: {tmp_path / 'q.jsonl'}, "
                                f"qrels: {tmp_path / 'qrels.tsv'}}}]"]).evaluate
    monkeypatch.setattr(evaluate, "load_sentence_transformer", _no_model)
    with pytest.raises(EvalDataError, match=r"qrels.tsv: none of its 1 queries has both text"):
        evaluate.run(chunks, triples, train, run, config, "all-MiniLM-L6-v2")


def test_triples_of_another_chunks_folder_are_one_clear_line(folders, tmp_path):
    chunks, _, train, _ = folders
    other = _write(tmp_path / "other-triples", [
        *TRIPLE_ROWS, {"query_id": "q9", "query": "elsewhere", "kind": "question",
                       "chunk_id": "z#0", "negative_chunk_ids": ["y#0"]}], TRIPLES)
    with pytest.raises(EvalDataError, match=r"evaluate: 2 chunk ids of the triples are not in "
                       r".*my-chunks \(e.g. 'y#0'\); give the chunks folder the triples"):
        evaluate.synthetic_test_set(chunks, other, train)


def test_manifests_come_from_the_folders_given_and_the_run_folder(folders):
    """--chunks, --triples and the train folder need not sit in one run folder: their own
    manifests are read, and generate's and mine's from the run folder (those that made the
    triples: see tests/test_report_details.py)."""
    chunks, triples, train, run = folders
    _manifest(chunks, "ingest", {"documents": Balance(3, 3, {}), "chunks": Balance(3, 3, {})})
    _manifest(run / "queries", "generate", {"queries": Balance(4, 4, {})}, kinds={"title": 1})
    _manifest(run / "candidates", "mine", {"queries": Balance(4, 4, {})},
              {"queries": fingerprint(run / "queries")})
    _manifest(triples, "verify", {"queries": Balance(4, 4, {})},
              {"candidates": fingerprint(run / "candidates")}, method="likelihood")
    _manifest(train, "train", {"queries": Balance(4, 4, {})})
    _manifest(run / "triples", "verify", {"queries": Balance(99, 99, {})}, method="wrong")
    manifests = evaluate.stage_manifests(run, chunks, triples, train)
    assert set(manifests) == {"ingest", "generate", "mine", "verify", "train"}
    summary = evaluate.training_data_summary(manifests)
    assert summary["verify"]["method"] == "likelihood"
    assert summary["generate"]["kinds"] == {"title": 1} and "ingest" not in summary


def test_report_details_read_the_triples_folder_given(folders):
    chunks, triples, train, run = folders
    test = evaluate.synthetic_test_set(chunks, triples, train)
    details = evaluate.report_details(triples, {}, test, {}, {}, batch_size=8)
    assert {e["query"] for e in details["examples"]} == {"a and b", "only a"}


def test_the_funnel_counts_queries_with_hard_negatives_not_rows():
    funnel = dict(details.funnel_counts({}, TRIPLE_ROWS))
    assert funnel["queries with hard negatives"] == 2  # "a and b" (two rows) and "only a"
    assert funnel["hard negatives kept"] == 4


def test_test_set_counts_its_test_documents(folders):
    chunks, triples, train, _ = folders
    test = evaluate.synthetic_test_set(chunks, triples, train)
    assert (test.test_docs, test.queries, len(test.corpus)) == (1, {}, 3)


def test_the_bm25_baseline_ranks_with_minings_settings(folders, monkeypatch):
    """BM25 in the report is the ranker mining used: stemmer, k1 and b all come from ``mine``."""
    chunks, triples, train, run = folders
    rows = TRIPLE_ROWS + [{"query_id": "q5", "query": "about c", "kind": "title",
                           "chunk_id": "c#0", "negative_chunk_ids": []}]
    triples = _write(triples.parent / "triples-with-test-query", rows, TRIPLES)
    built = []

    class Stop(Exception):
        pass

    def bm25(texts, *settings):
        built.append(settings)
        raise Stop

    monkeypatch.setattr(evaluate, "load_sentence_transformer", lambda *a, **k: None)
    monkeypatch.setattr(evaluate, "BM25Index", bm25)
    config = load_config(overrides=["mine.k1=0.9", "mine.b=0.4", "mine.stemmer=null"])
    with pytest.raises(Stop):
        evaluate.run(chunks, triples, train, run, config.evaluate, "all-MiniLM-L6-v2",
                     config.mine)
    assert built == [(None, 0.9, 0.4)]
