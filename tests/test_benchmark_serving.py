"""benchmarks/serving.py runs end to end at toy size (both ingresses, httpx load) and reports
what it measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "serving.py"

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_both_ingresses_are_measured_against_in_process_onnxruntime():
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local clusters, not the tests' one
    done = subprocess.run([sys.executable, str(SCRIPT), "--seconds", "2", "--no-infinity",
                           "--client", "httpx", "--ingress", "haproxy,proxy"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["ingress"] == "haproxy" and figures["load_client"] == "httpx"
    assert figures["errors"] == 0 and figures["infinity"] is None
    inprocess = figures["inprocess_embeddings_per_s"]["8"]
    for mode in ("haproxy", "proxy"):
        levels = figures["customir"][mode]
        assert set(levels) == {"1", "8", "64"}
        for level in levels.values():
            assert level["requests"] > 0 and level["errors"] == 0
            assert 0 < level["p50_ms"] <= level["p99_ms"]
        assert figures["ratio_vs_inprocess_c8_by_ingress"][mode] == pytest.approx(
            levels["8"]["embeddings_per_s"] / inprocess, abs=0.002)
    assert figures["ratio_vs_inprocess_c8"] == figures["ratio_vs_inprocess_c8_by_ingress"][
        "haproxy"]
    # the readable table: a row per level and ingress
    assert sum(line.split()[:1] in (["1"], ["8"], ["64"]) for line in lines) == 6
