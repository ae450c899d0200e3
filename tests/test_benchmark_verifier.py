"""benchmarks/verifier.py end to end on a tiny BEIR folder (CRLF lines) with the scripted LLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PASSAGES

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "verifier.py"

# query id -> (text, relevant doc ids); every query shares words with more than its own docs,
# so BM25 finds a near-miss for each.
TRAIN = {
    "1": ("aspirin heart attack risk", ["d1"]),
    "2": ("statins cholesterol heart disease", ["d2"]),
    "3": ("exercise heart health", ["d3", "d9"]),
    "4": ("aspirin stomach bleeding", ["d5"]),
    "5": ("sleep memory attention adults", ["d6"]),
    "6": ("coffee alertness stress", ["d7"]),
}
TEST_ONLY = {"99": ("green tea antioxidants", ["d8"])}


def _write_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    crlf = "\r\n"
    corpus = [json.dumps({"_id": d, "title": t, "text": x}) for d, (t, x) in PASSAGES.items()]
    (root / "corpus.jsonl").write_bytes((crlf.join(corpus) + crlf).encode())
    queries = [json.dumps({"_id": q, "text": t}) for q, (t, _) in {**TRAIN, **TEST_ONLY}.items()]
    (root / "queries.jsonl").write_bytes((crlf.join(queries) + crlf).encode())
    for name, qrels in (("train", TRAIN), ("test", TEST_ONLY)):
        lines = ["query-id\tcorpus-id\tscore"]
        lines += [f"{q}\t{d}\t1" for q, (_, docs) in qrels.items() for d in docs]
        (root / "qrels" / f"{name}.tsv").write_bytes((crlf.join(lines) + crlf).encode())
    return root


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)


def test_verifier_benchmark_scripted(tmp_path):
    data = _write_beir(tmp_path / "scifact")
    done = _run("--llm-backend", "scripted", "--queries", "5", "--data", str(data))
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["benchmark"] == "verifier"
    assert figures["qrels"] == "train"
    assert figures["queries"] == 5
    assert set(figures["methods"]) == {"likelihood", "judge_yes_no", "judge_scale"}
    for name, result in figures["methods"].items():
        # Exact on this fixture: the scripted LLM scores (likelihood) or grades (both judges) by
        # the share of the query's words found in the passage, and each query here shares more
        # of its words with its relevant passage than with BM25's near-miss — so every method
        # ranks the true passage strictly higher in all 5 pairs, without a tie.
        assert result["pairwise_accuracy"] == 1.0, (name, result)
        assert result["ties"] == 0, (name, result)
        assert result["ci95"] == [0.5655, 1.0]  # Wilson 95% for 5 successes of 5
        assert result["mean_true_score"] > result["mean_near_miss_score"]
        low, high = result["ci95"]
        assert 0.0 <= low <= result["pairwise_accuracy"] <= high <= 1.0
        assert 0.0 <= result["near_miss_dropped_share"] <= 1.0
        assert result["s_per_pair"] >= 0
        if name == "likelihood":
            assert result["threshold_accuracy"] is None
        else:
            assert 0.0 <= result["threshold_accuracy"] <= 1.0
    assert "verifier on SciFact train qrels" in done.stdout   # the table comes first
    # the ratio to the baseline: each method's pairwise accuracy over BM25's on the same pairs
    bm25 = figures["bm25_reference"]["pairwise_accuracy"]
    # measured on this fixture: BM25 too scores each query's relevant passage above its
    # near-miss (the best-ranked non-relevant document), so every ratio is exactly 1
    assert bm25 == 1.0
    for result in figures["methods"].values():
        assert result["ratio_vs_bm25"] == (
            None if bm25 == 0 else pytest.approx(result["pairwise_accuracy"] / bm25, abs=1e-3))
    assert figures["ratio_method"] == "judge_yes_no"  # the verify stage's default
    assert figures["ratio_vs_bm25"] == figures["methods"]["judge_yes_no"]["ratio_vs_bm25"]
    assert "vs bm25" in done.stdout


def test_verifier_benchmark_missing_data(tmp_path):
    done = _run("--llm-backend", "scripted", "--data", str(tmp_path / "absent"))
    assert done.returncode != 0
    assert "BEIR data not found" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_pairwise_counts_wins_and_half_ties():
    sys.path.insert(0, str(SCRIPT.parent))
    from verifier import pairwise, wilson

    # pairs 1 and 4: true > near-miss, wins; pair 2: true < near-miss, a loss; pair 3: a tie
    # (half). Not symmetric, so a flipped comparison gives 1.5, not 2.5.
    assert pairwise([2.0, 1.0, 1.0, 3.0], [1.0, 2.0, 1.0, 0.0]) == (2.5, 4)
    assert pairwise([0.9, 0.8], [0.1, 0.2]) == (2.0, 2)
    assert pairwise([0.1], [0.9]) == (0.0, 1)
    assert pairwise([], []) == (0, 0)
    assert wilson(5, 5) == [0.5655, 1.0]
    assert wilson(0, 0) == [0.0, 1.0]
