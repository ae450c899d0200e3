"""benchmarks/beir.py's command line and results file, without a pipeline run: a misspelt
variant stops before any work, and the main results are on disk before a variant runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from customir.manifest import MANIFEST, Balance, Manifest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "beir.py"
sys.path.insert(0, str(SCRIPT.parent))
import beir  # noqa: E402


def test_a_misspelt_variant_stops_before_the_main_run(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n')
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "toy"), "--runs",
                           str(tmp_path / "runs"), "--ablation", "no_verfy"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "argument --ablation: invalid choice: 'no_verfy'" in done.stderr
    assert not (tmp_path / "runs").exists()


class FakeEvaluator:
    """Stands in for beir_scoring.Evaluator (patched where beir.main looks it up): every system
    scores 0.5, no model is loaded."""

    def __init__(self, *args, **kwargs):
        pass

    def score(self, *args, **kwargs) -> dict:
        metrics = {m: 0.5 for m in ("nDCG@10", "Recall@10", "Recall@100", "MRR@10", "MAP@10",
                                    "P@1")}
        return {"n_queries": 1, "results": {s: metrics for s in beir.SYSTEMS},
                "comparisons": [{"a": "tuned", "b": "base", "metric": "nDCG@10",
                                 "n_queries": 1, "delta": 0.0, "p_value": 1.0}]}

    def dense(self, *args, **kwargs):
        return {}, {}


def _toy_run(tmp_path: Path, monkeypatch, run_variant) -> None:
    """A BEIR folder, a finished train manifest and fakes for everything that would run."""
    dataset = tmp_path / "toy"
    (dataset / "qrels").mkdir(parents=True)
    (dataset / "corpus.jsonl").write_text('{"_id": "d1", "text": "tides"}\n')
    (dataset / "queries.jsonl").write_text('{"_id": "1", "text": "what moves tides"}\n')
    (dataset / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n")
    train = tmp_path / "runs" / "toy" / "run" / "train"
    train.mkdir(parents=True)
    (train / MANIFEST).write_text(Manifest("train", "h", {}, {"queries": Balance(3, 3, {})},
                                           finished_at="now").to_json())
    timings = {s: {"seconds": 1.0, "ran_now": True} for s in beir.STAGES}
    monkeypatch.setattr(beir, "run_stages", lambda config: timings)
    monkeypatch.setattr(beir, "read_chunks", lambda run: (["d1"], ["tides"]))
    monkeypatch.setattr(beir, "Evaluator", FakeEvaluator)
    monkeypatch.setattr(beir, "run_variant", run_variant)
    monkeypatch.setattr(sys, "argv", ["beir.py", str(dataset), "--runs", str(tmp_path / "runs"),
                                      "--results", str(tmp_path / "results"),
                                      "--ablation", "llm_only"])


def test_main_results_are_written_before_the_variants_run(tmp_path, monkeypatch):
    def stopped(variant, *args):  # the machine goes down during the first variant
        raise KeyboardInterrupt

    _toy_run(tmp_path, monkeypatch, stopped)
    with pytest.raises(KeyboardInterrupt):
        beir.main()
    written = list((tmp_path / "results").glob("toy-*.json"))
    assert len(written) == 1
    result = json.loads(written[0].read_text())
    assert result["main"]["results"]["tuned"]["nDCG@10"] == 0.5 and result["ablation"] == {}
    assert "| tuned |" in written[0].with_suffix(".md").read_text()


def test_each_variant_is_added_to_the_results_and_the_last_line_is_json(tmp_path, monkeypatch,
                                                                        capsys):
    _toy_run(tmp_path, monkeypatch, lambda variant, *args: {"overrides": ["x=1"],
                                                             "error": "ValueError: boom"})
    beir.main()
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["ratio_vs_base"] == 1.0 and figures["ablation_ndcg10"] == {}
    result = json.loads(Path(figures["results_file"]).read_text())
    assert result["ablation"] == {"llm_only": {"overrides": ["x=1"], "error": "ValueError: boom"}}
    assert "| llm_only | x=1 | failed: ValueError: boom" in Path(
        figures["results_file"]).with_suffix(".md").read_text()


@pytest.mark.parametrize("variant", sorted(beir.VARIANTS))
def test_every_variant_changes_what_it_names(variant):
    """A variant's overrides load against the benchmark config (a misspelt key or value fails
    here, not after an hour-long main run) and change the config."""
    from customir.config import load_config

    main = load_config(beir.ROOT / "benchmarks/configs/beir.yaml", [])
    overrides = beir.variant_overrides(variant, main)
    changed = load_config(beir.ROOT / "benchmarks/configs/beir.yaml", overrides)
    assert overrides and changed.model_dump() != main.model_dump()
