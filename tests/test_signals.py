"""Stopping a run: SIGTERM (a scheduler, Kubernetes) and Ctrl-C end the CLI with one line and
the shell's exit code, also while Ray is running — never a C++ stack dump or a silent exit."""

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.ray

# `customir ...` whose command blocks inside a local Ray session on a task that never ends
BLOCKED_IN_RAY = '''
import sys, time
from customir import cli
from customir.config import RayConfig
from customir.runtime import ray_session


def blocked(args):
    import ray

    with ray_session(RayConfig(num_cpus=1)):
        @ray.remote(num_cpus=0)
        def forever():
            time.sleep(600)

        ref = forever.remote()
        print("ready", flush=True)
        ray.get(ref)
    return 0


cli._dispatch = blocked
sys.exit(cli.main(["serve", "unused"]))  # any command: _dispatch is replaced
'''


def _run_until_ready(script: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.strip() == "ready" or (not line and proc.poll() is not None):
            break
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    return proc


@pytest.mark.parametrize("sent, code, line", [
    (signal.SIGTERM, 143, "customir: terminated (SIGTERM)"),
    (signal.SIGINT, 130, "customir: interrupted"),
])
def test_a_signal_while_ray_runs_ends_the_cli_with_one_line(sent, code, line):
    """Before, SIGTERM here met the Ray core's handler: '*** SIGTERM received ***', a C++ stack
    dump and exit 134."""
    proc = _run_until_ready(BLOCKED_IN_RAY)
    try:
        proc.send_signal(sent)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, err[-2000:]
    assert err.strip().splitlines()[-1] == line
    assert "SIGTERM received" not in err and "Traceback" not in err
