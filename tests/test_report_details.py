"""The report's details beside the metrics, on hand-built stage folders and a stand-in encoder
(no model is loaded): the earlier stages' manifests are those that made the triples, held-out
scores come from held-out queries only, and a multi-hop question is one example."""

from __future__ import annotations

import numpy as np

from conftest import write_stage
from customir.evaluate.details import example_queries, funnel_counts, report_details, \
    stage_manifests
from customir.evaluate import evaluate
from customir.manifest import MANIFEST, Balance, Manifest, fingerprint
from customir.schemas import TRIPLES


def _manifest(folder, stage, inputs=None, seconds=1.0, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    balances = {"queries": Balance(50, 50, {})}
    if stage == "ingest":
        balances = {"documents": Balance(10, 10, {}), "chunks": Balance(10, 40, {})}
    manifest = Manifest(stage, "h", inputs or {}, balances, extra, {}, seconds)
    (folder / MANIFEST).write_text(manifest.to_json())


def _chained_run(run):
    """A run folder whose generate → mine → verify manifests record each other as inputs."""
    _manifest(run / "chunks", "ingest")
    _manifest(run / "queries", "generate", seconds=60.0, rows=55)
    _manifest(run / "candidates", "mine", {"queries": fingerprint(run / "queries")},
              candidates=300)
    _manifest(run / "triples", "verify", {"candidates": fingerprint(run / "candidates")})
    _manifest(run / "train", "train")


def test_generate_and_mine_of_another_run_folder_are_left_out(tmp_path):
    """``customir evaluate runB/train --triples runB/triples --out runA``: runA's generate and
    mine manifests did not make runB's triples, so their counts and times are not reported."""
    run_a, run_b = tmp_path / "runA", tmp_path / "runB"
    _chained_run(run_b)
    _manifest(run_a / "queries", "generate", seconds=5000.0, rows=777)
    _manifest(run_a / "candidates", "mine", candidates=55555)
    given = (run_b / "chunks", run_b / "triples", run_b / "train")

    manifests = stage_manifests(run_a, *given)
    assert list(manifests) == ["ingest", "verify", "train"]
    details = report_details(_triples(tmp_path, []), manifests, _test_set({}), {}, {}, 8)
    assert "generate" not in details["stage_seconds"]
    assert details["funnel_note"].startswith("Not counted: generate, mine")
    assert list(stage_manifests(run_b, *given)) == ["ingest", "generate", "mine", "verify",
                                                    "train"]


def test_a_regenerated_queries_folder_drops_generate_but_keeps_mine(tmp_path):
    run = tmp_path / "run"
    _chained_run(run)
    _manifest(run / "queries", "generate", seconds=9.0)  # rewritten after mine read it
    manifests = stage_manifests(run, run / "chunks", run / "triples", run / "train")
    assert "mine" in manifests and "generate" not in manifests


def test_the_funnel_counts_queries_kept_and_their_rows(tmp_path):
    run = tmp_path / "run"
    _chained_run(run)
    manifests = stage_manifests(run, run / "chunks", run / "triples", run / "train")
    funnel = dict(funnel_counts(manifests, []))
    assert funnel["queries kept"] == 50
    assert funnel["query rows (one per supporting chunk)"] == 55
    assert not any("(rows)" in label for label in funnel)


# a0 lies in the training document A; b0..b30 in the test document B
CORPUS = {"a0": "alpha text", **{f"b{i}": f"beta text {i}" for i in range(31)}}


def _row(qid, query, kind, chunk, negatives, positive_text=None):
    return {"query_id": qid, "query": query, "kind": kind, "chunk_id": chunk, "doc_id": chunk[0],
            "negative_chunk_ids": negatives, "positive_text": positive_text}


def _triples(tmp_path, rows):
    return write_stage(tmp_path / "triples-rows", TRIPLES, rows)


def _test_set(queries: dict[str, str], corpus=None) -> evaluate.TestSet:
    corpus = corpus or CORPUS
    chunk_doc = {c: "A" if c == "a0" else "B" for c in corpus}
    return evaluate.TestSet(corpus, chunk_doc, queries, {q: {} for q in queries}, 1)


class TextEncoder:
    """A stand-in for a sentence-transformers model: one fixed unit vector per known text."""

    def __init__(self, vectors: dict[str, np.ndarray], default: np.ndarray):
        self.vectors, self.default = vectors, default

    def encode(self, texts, **kwargs):
        return np.stack([self.vectors.get(t, self.default) for t in texts])


E1, E2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])


def test_held_out_scores_leave_out_a_multi_hop_question_trained_on(tmp_path):
    """Its b0 row's chunk is a test positive, but its a0 row was trained on: not held out."""
    rows = [_row("m_a", "which links alpha and beta?", "multihop", "a0", ["b30"]),
            _row("m_b", "which links alpha and beta?", "multihop", "b0", ["b30"])]
    rows += [_row(f"q{i:02d}", f"question {i}", "question", f"b{i}", ["b30"]) for i in range(20)]
    test = _test_set({f"q{i:02d}": f"question {i}" for i in range(20)})
    model = TextEncoder({}, E1)
    details = report_details(_triples(tmp_path, rows), {}, test, {"base": model},
                             {"base": np.stack([E1] * len(CORPUS))}, 8)
    assert len(details["scores"]["base"]["positive"]) == 20
    assert "held-out test queries (20 queries, 20 rows)" in details["scores_note"]


def test_an_inverse_cloze_row_is_scored_and_shown_with_its_positive_text(tmp_path):
    """The query sentence is part of its chunk; training used the chunk without it."""
    query, rest = "It lowers blood glucose.", "Insulin is a hormone. Its lack causes diabetes."
    corpus = {**CORPUS, "b1": f"Insulin is a hormone. {query} Its lack causes diabetes."}
    rows = [_row("i1", query, "inverse_cloze", "b1", ["b2"], positive_text=rest)]
    model = TextEncoder({query: E1, rest: E1}, E2)
    details = report_details(_triples(tmp_path, rows), {}, _test_set({}, corpus),
                             {"base": model}, {"base": np.stack([E2] * len(corpus))}, 8)
    assert details["scores"]["base"]["positive"] == [1.0]  # the chunk's vector would give 0
    assert "1 queries, 1 rows; 0 < 20 held out" in details["scores_note"]
    assert details["examples"][0]["positive"] == rest


def test_query_lengths_count_cjk_words(tmp_path):
    rows = [_row("q0", "胰岛素如何降低餐后血糖水平", "question", "b0", ["b1"])]
    details = report_details(_triples(tmp_path, rows), {}, _test_set({}), {}, {}, 8)
    assert details["query_lengths"] == {"question": [13]}


def test_a_multi_hop_question_is_one_example_with_every_passage():
    rows = [_row(f"m{j}{h}", f"multi-hop question {j}?", "multihop", f"b{2 * j + h}",
                 [f"b{20 + h}", "b29"]) for j in range(3) for h in range(2)]
    rows.append(_row("q1", "single question", "question", "b10", ["b21"]))
    examples = example_queries(rows, CORPUS, seed=13)
    assert sorted(e["query"] for e in examples) == [
        "multi-hop question 0?", "multi-hop question 1?", "multi-hop question 2?",
        "single question"]
    first = next(e for e in examples if e["query"] == "multi-hop question 0?")
    assert first["positive"] == "beta text 0 ‖ beta text 1"
    assert first["negatives"] == ["beta text 20", "beta text 29", "beta text 21"]
    assert examples == example_queries(rows, CORPUS, seed=13)  # the draw is deterministic
