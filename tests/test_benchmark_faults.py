"""benchmarks/faults.py runs end to end at toy size and reports what it measured."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "faults.py"

pytestmark = pytest.mark.ray


def test_the_fault_table_accounts_for_every_input_and_request():
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local cluster, not the tests' one
    done = subprocess.run([sys.executable, str(SCRIPT), "--big-mb", "1", "--rate", "0.3"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    corpus = figures["corpus"]
    assert figures["lost"] == 0 and corpus["tried"] == corpus["ingested"] + corpus["skipped"]
    assert figures["categories"] == 20 and corpus["ingested"] > 0 and corpus["skipped"] > 0
    llm = figures["llm"]
    assert llm["attempts_match_server"] and llm["injected_queries_kept"] == 0
    assert sum(llm["server"]["faults"].values()) > 0
    for stage in ("generate", "verify"):
        f = llm["stages"][stage]
        assert f["reconciled"] and f["attempts"] == f["requests"] + f["retried"]
    assert sum(f["retried"] for f in llm["stages"].values()) > 0
    server = figures["server"]
    assert server["answered_5xx"] == 0 and server["other"] == 0
    assert server["answered_4xx"] == server["bad_requests"] == server["good_after_bad_ok"] > 15
    assert server["openai_error_shape"] == server["answered_4xx"]  # {"error": ...}, every one
    assert server["token_ids_says_what_to_send"]
    # half an emoji is repaired, and the requests that may share its batch are answered
    assert server["lone_surrogate_200"] == 1 and server["batched_with_it_200"] == 6
    assert any(line.startswith("all ") for line in lines)  # the readable table came first
