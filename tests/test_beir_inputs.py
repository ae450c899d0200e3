import pytest

from customir.evaluate.evaluate import EvalDataError, read_beir_qrels, read_beir_queries


def test_qrels_with_header_and_crlf(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_bytes(b"query-id\tcorpus-id\tscore\r\n1\td1\t1\r\n1\td2\t0\r\n2\td3\t2\r\n\r\n")
    assert read_beir_qrels(path) == {"1": {"d1": 1}, "2": {"d3": 2}}


@pytest.mark.parametrize("line", [b"1\td1\n", b"1\td1\thigh\n"])
def test_malformed_qrels_name_the_line(tmp_path, line):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"query-id\tcorpus-id\tscore\n1\td1\t1\n" + line)
    with pytest.raises(EvalDataError, match=r"bad.tsv:3: expected query-id, corpus-id, score"):
        read_beir_qrels(path)


def test_queries_file(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "1", "text": "what is x?"}\n\n{"_id": 2, "text": "y"}\n')
    assert read_beir_queries(path) == {"1": "what is x?", "2": "y"}
    path.write_text('{"_id": "1", "text": "ok"}\n{"id": "2"}\n')
    with pytest.raises(EvalDataError, match=r"queries.jsonl:2: not a BEIR query record"):
        read_beir_queries(path)


def test_files_starting_with_a_byte_order_mark(tmp_path):
    """A file saved with a BOM (Windows editors) was rejected at line 1."""
    queries, qrels = tmp_path / "queries.jsonl", tmp_path / "test.tsv"
    queries.write_bytes(b'\xef\xbb\xbf{"_id": "1", "text": "what is x?"}\n')
    qrels.write_bytes(b"\xef\xbb\xbfquery-id\tcorpus-id\tscore\n1\td1\t1\n")
    assert read_beir_queries(queries) == {"1": "what is x?"}
    assert read_beir_qrels(qrels) == {"1": {"d1": 1}}


@pytest.mark.parametrize("qrels_text, error, message", [
    (None, FileNotFoundError, "typo.tsv not found"),
    ("query-id\tcorpus-id\tscore\n1\td1\tmany\n", EvalDataError, "typo.tsv:2"),
])
def test_a_bad_beir_file_stops_the_pipeline_before_any_stage(tmp_path, qrels_text, error,
                                                             message):
    """A wrong evaluate.beir path or a malformed qrels line is said when the run starts, not
    after an hour of stages, and nothing is written."""
    from customir.config import load_config
    from customir.pipeline import run_pipeline

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("tides follow the moon")
    queries, qrels = tmp_path / "q.jsonl", tmp_path / "typo.tsv"
    queries.write_text('{"_id": "1", "text": "what moves tides"}\n')
    if qrels_text is not None:
        qrels.write_text(qrels_text)
    config = load_config(None, [f"corpus={tmp_path / 'docs'}", f"run_dir={tmp_path / 'run'}",
                                f"evaluate.beir=[{{queries: {queries}, qrels: {qrels}}}]"])
    with pytest.raises(error, match=message):
        run_pipeline(config)
    assert not (tmp_path / "run" / "chunks").exists()
