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
