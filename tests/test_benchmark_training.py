"""benchmarks/training.py runs end to end at toy size and reports what it measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "training.py"
SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample_corpus" / "abstracts.jsonl"

pytestmark = pytest.mark.ray


def test_alternated_rounds_give_the_ratio_of_total_times(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(SAMPLE.read_text())
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local cluster, not the tests' one
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path), "--rows", "24",
                           "--batch-size", "8", "--max-seq-length", "32", "--rounds", "2"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["rows"] == 24 and figures["rounds"] == 2
    for kind in ("train", "wall"):
        plain, ray = figures[f"plain_{kind}_seconds"], figures[f"ray_{kind}_seconds"]
        assert len(plain) == len(ray) == 2 and min(plain + ray) > 0
        ratio = figures["ratio_vs_plain_trainer" + ("_wall" if kind == "wall" else "")]
        assert ratio == pytest.approx(sum(plain) / sum(ray), rel=0.03)  # seconds are rounded
    for phases, train_s, wall_s in zip(figures["ray_phases_s"], figures["ray_train_seconds"],
                                       figures["ray_wall_seconds"]):
        assert set(phases) == {"ray_start_s", "worker_setup_s", "train_s", "save_report_copy_s"}
        assert phases["train_s"] == train_s < wall_s
        assert sum(phases.values()) == pytest.approx(wall_s, abs=0.5)
    # the readable table comes first: one line per run, then the totals
    assert sum(line.split()[:1] in (["1"], ["2"]) for line in lines) == 4
    assert "ray parallel mode not_parallel" in done.stderr
