"""benchmarks/generation.py runs end to end at toy size with the real embedded LLM and reports
the stage's and raw llama.cpp's throughput on the same prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "generation.py"
SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample_corpus" / "abstracts.jsonl"

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_stage_and_raw_llamacpp_side_by_side(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corpus.jsonl").write_text(
        "\n".join(SAMPLE.read_text().splitlines()[:2]) + "\n")
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local cluster, not the tests' one
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "data"),
                           "--chunks", "2", "--blocks", "1", "--multihop", "0",
                           "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["chunks"] == 2 and figures["raw_requests"] == 2
    assert figures["stage_completion_tokens"] > 0 and figures["raw_completion_tokens"] > 0
    assert figures["ratio_vs_raw_llamacpp"] == pytest.approx(
        figures["stage_tokens_per_s"] / figures["raw_tokens_per_s"], rel=0.01)
    samples = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert set(samples) & {"keyword", "question", "claim"}
