"""benchmarks/beir.py end to end at toy size: a BEIR folder built from the sample corpus, the
scripted LLM, two training steps, one ablation variant. Checks what it writes and prints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "beir.py"

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_beir_benchmark_runs_the_pipeline_and_scores_every_system(tmp_path):
    dataset = tmp_path / "toyfact"
    (dataset / "qrels").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "sample_corpus" / "abstracts.jsonl", dataset / "corpus.jsonl")
    shutil.copy(ROOT / "examples" / "sample_eval" / "queries.jsonl", dataset / "queries.jsonl")
    shutil.copy(ROOT / "examples" / "sample_eval" / "qrels.tsv", dataset / "qrels" / "test.tsv")
    config = tmp_path / "beir.yaml"
    config.write_text("generate: {llm: {backend: scripted}, multihop: 0.0, max_llm_chunks: 20}\n"
                      "verify: {llm: {backend: scripted}, max_queries: 5}\n"
                      "train: {max_steps: 2, batch_size: 8}\n")
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local cluster, not the tests' one
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(dataset), "--config", str(config),
         "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
         "--ablation", "structural_only"],
        capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])

    n_queries = len((dataset / "queries.jsonl").read_text().splitlines())
    assert figures["dataset"] == "toyfact" and figures["n_queries"] == n_queries
    assert figures["ratio_vs_base"] == pytest.approx(
        figures["ndcg10_tuned"] / figures["ndcg10_base"], abs=1e-3)
    result = json.loads(Path(figures["results_file"]).read_text())
    systems = result["main"]["results"]
    assert set(systems) == {"bm25", "base", "tuned", "hybrid-base", "hybrid", "base-chunks",
                            "tuned-chunks", "hybrid-base-chunks", "hybrid-chunks"}
    assert all(0 < s["nDCG@10"] <= 1 for s in systems.values())
    # the corpus alone went in: ingest saw one file, and no stage read the queries
    run = tmp_path / "runs" / "toyfact" / "run"
    ingested = json.loads((run / "chunks" / "_manifest.json").read_text())
    assert ingested["balances"]["documents"]["n_in"] == 240
    # the chunked systems read every chunk the run made
    assert result["chunks"] == ingested["balances"]["chunks"]["n_out"] > 0
    tested = {(c["a"], c["b"]) for c in result["main"]["comparisons"]}
    assert {("tuned-chunks", "base-chunks"), ("hybrid-chunks", "hybrid-base-chunks")} <= tested
    assert set(result["stage_seconds"]) == {"ingest", "generate", "mine", "verify", "train",
                                            "evaluate"}
    assert (run / "evaluation" / "report.html").is_file()
    variant = result["ablation"]["structural_only"]
    assert variant["timings"]["ingest"]["ran_now"] is False  # upstream stages were reused
    assert variant["timings"]["train"]["ran_now"] is True
    # the variant is tested against zero-shot and against the main run's tuned model
    versus = {(c["a"], c["b"]): c for c in variant["comparisons"]}
    assert {("tuned", "base"), ("tuned", "main"), ("tuned-chunks", "main-chunks")} <= set(versus)
    assert 0 < versus["tuned", "main"]["p_value"] <= 1
    assert versus["tuned", "main"]["delta"] == pytest.approx(
        variant["results"]["tuned"]["nDCG@10"] - systems["tuned"]["nDCG@10"], abs=2e-4)
    trained = json.loads((tmp_path / "runs" / "toyfact" / "ablation" / "structural_only" /
                          "train" / "_manifest.json").read_text())
    assert trained["balances"]["queries"]["skipped"]["kind_not_trained"] > 0
    table = Path(figures["results_file"]).with_suffix(".md").read_text()
    assert "| hybrid-base |" in table and "| hybrid-chunks |" in table
    assert "| structural_only |" in table
    assert "| Δ vs main (p) |" in table
    assert "| stage | seconds | this invocation |" in done.stdout


def test_a_folder_that_is_not_beir_is_one_clear_line(tmp_path):
    (tmp_path / "notbeir").mkdir()
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "notbeir"),
                           "--runs", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].endswith("notbeir: no corpus.jsonl (not a BEIR "
                                                         "folder)")
    assert "Traceback" not in done.stderr


def test_chunks_of_another_corpus_are_one_clear_error(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    from beir_scoring import Evaluator

    with pytest.raises(SystemExit, match=r"1 chunked documents are not in corpus.jsonl "
                                         r"\(e.g. 'other'\)"):
        Evaluator({"d1": "a document"}, (["d1", "other"], ["a chunk", "another chunk"]),
                  {"q": "a query"}, {"q": {"d1": 1}}, "all-MiniLM-L6-v2", tmp_path)


def test_re_chunked_texts_are_encoded_again_not_read_from_the_cache(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    from beir_scoring import Evaluator

    documents = {"d1": "kidney function", "d2": "heart disease"}
    query, qrels = {"q": "heart attack"}, {"q": {"d1": 1}}
    first = Evaluator(documents, (["d1", "d2"], ["kidney function", "heart disease"]), query,
                      qrels, "all-MiniLM-L6-v2", tmp_path)
    assert max(first.runs["base-chunks"]["q"], key=first.runs["base-chunks"]["q"].get) == "d2"
    # Same number of chunks, other texts, same cache folder: d1 now holds the heart attack.
    again = Evaluator(documents, (["d1", "d2"], ["heart attack", "kidney"]), query, qrels,
                      "all-MiniLM-L6-v2", tmp_path)
    assert max(again.runs["base-chunks"]["q"], key=again.runs["base-chunks"]["q"].get) == "d1"
    assert len(list(tmp_path.glob("base-*-chunks-2-*.npy"))) == 2


def test_another_base_model_is_encoded_again_not_read_from_the_cache(tmp_path):
    """The base model's vectors were cached under the texts alone: a rerun with another
    train.base_model scored its queries against the previous model's documents."""
    import torch

    from customir.models import load_sentence_transformer

    sys.path.insert(0, str(SCRIPT.parent))
    from beir_scoring import Evaluator, model_key

    other = tmp_path / "other-model"
    model = load_sentence_transformer("all-MiniLM-L6-v2")
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save(str(other))
    assert model_key(other) != model_key("all-MiniLM-L6-v2")

    documents = {"d1": "kidney function", "d2": "heart disease", "d3": "lung cancer"}
    chunks = (["d1", "d2", "d3"], ["kidney", "heart disease", "lung cancer"])
    query, qrels = {"q": "heart attack"}, {"q": {"d2": 1}}
    Evaluator(documents, chunks, query, qrels, "all-MiniLM-L6-v2", tmp_path / "cache")
    reused = Evaluator(documents, chunks, query, qrels, str(other), tmp_path / "cache")
    fresh = Evaluator(documents, chunks, query, qrels, str(other), tmp_path / "empty")
    for system in ("base", "base-chunks"):
        assert reused.runs[system]["q"] == pytest.approx(fresh.runs[system]["q"])
    assert len(list((tmp_path / "cache").glob("base-*-chunks-3-*.npy"))) == 2
