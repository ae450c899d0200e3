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
    # {kind: up to 20 distinct queries, each with the (first 160 characters of the) chunks it
    # was written from}: one entry per kind that has query rows, LLM-written kinds among them
    assert set(samples) == set(figures["query_rows_by_kind"])
    assert set(samples) & {"keyword", "question", "claim"}
    shown_chunks = set()
    for kind, kind_samples in samples.items():
        assert 1 <= len(kind_samples) <= min(20, figures["query_rows_by_kind"][kind]), kind
        queries = [s["query"] for s in kind_samples]
        assert len(set(queries)) == len(queries), kind
        for sample in kind_samples:
            assert isinstance(sample["query"], str), sample
            assert sample["chunks"], sample
            assert all(0 < len(text) <= 160 for text in sample["chunks"].values()), sample
            shown_chunks |= set(sample["chunks"])
    assert 1 <= len(shown_chunks) <= 2  # --chunks 2
