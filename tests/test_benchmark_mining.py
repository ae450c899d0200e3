"""benchmarks/mining.py runs end to end at toy size (both modes) and reports what it measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "mining.py"
SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample_corpus" / "abstracts.jsonl"

pytestmark = pytest.mark.ray


def _run(*args: str) -> dict:
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local cluster, not the tests' one
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_default_mode_compares_the_stage_with_raw_bm25s(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(SAMPLE.read_text())
    figures = _run("--data", str(tmp_path), "--queries", "300", "--backends", "bm25s")
    assert figures["queries"] == 300 and figures["bm25s"]["candidates"] > 0
    assert figures["ratio_vs_raw_bm25s"] == pytest.approx(
        figures["bm25s"]["stage_qps"] / figures["bm25s"]["raw_qps"], abs=0.002)


def test_scale_mode_reports_phases_and_peak_memory(tmp_path):
    figures = _run("--scale", "--scale-chunks", "3000", "--scale-queries", "300",
                   "--scale-dir", str(tmp_path / "scale"))
    assert figures["documents"] == 3000 and figures["chunks"] >= 3000
    assert figures["queries"] == 300 and figures["candidates"] > 0
    assert 0 < figures["peak_rss_gib"] < 16
    assert {"ingest_s", "index_s", "mine_s"} <= set(figures)
