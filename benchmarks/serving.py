"""Serving throughput and latency: customir's Ray Serve endpoint vs in-process onnxruntime and vs
infinity-emb serving the same model on the same machine.

    python benchmarks/serving.py [--quick] [--seconds 60] [--export DIR] [--no-infinity]
        [--ingress haproxy,proxy] [--client wrk|httpx]

customir is measured once per ``serve.ingress`` mode (Serve's HAProxy ingress, and Ray Serve's
HTTP proxy actor), each on a Ray cluster of its own; the
first mode named gives the headline ratios. For each concurrency level (1, 8, 64) a closed
loop of that many clients sends one text per request for the given seconds (15 with --quick)
over loopback and records embeddings/s, p50/p99 latency and errors. Baselines, on the same
texts in the same run:

- in-process: ``OnnxEncoder.encode`` in this process with batches of min(concurrency, 32) texts
  (what the served graph does without HTTP, Ray and batching waits: the server calls
  ``encode_counted``, the same tokenization and runs, and takes ``usage`` from it), measured
  before and after the servers and averaged;
- infinity-emb 0.0.78 (torch engine, CPU) started by this script from its own virtual
  environment (it pins numpy<2 and sentence-transformers<4, so it cannot share ours), serving the
  same MiniLM weights.

The load generator is wrk (Debian's ``wrk``; ``benchmarks/wrk_post.lua`` cycles the texts) when
it is on PATH, else an httpx asyncio client (``--client httpx``). It matters on a small machine:
the clients share the CPU with the server, and wrk spends a small fraction of the CPU per request
that httpx does, which a real client on another machine would not take from the server at all.
The JSON names the client used.

The last line is one JSON object: ratio_vs_inprocess_c8, ratio_vs_infinity_c8 (first ingress),
ratio_vs_inprocess_c8_by_ingress, errors (all modes), p99s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import scratch_dir

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "sample_corpus" / "abstracts.jsonl"
LEVELS = (1, 8, 64)
INFINITY = "infinity-emb[server,torch]==0.0.78"
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"


def _texts(n: int = 512) -> list[str]:
    """Sentences of the sample corpus: realistic query/passage-length inputs."""
    out = []
    for line in SAMPLE.read_text().splitlines():
        out += [s.strip() for s in json.loads(line)["text"].split(". ") if len(s) > 30]
        if len(out) >= n:
            break
    return out[:n]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wrk(url: str, payload, concurrency: int, seconds: float) -> dict:
    """The same closed loop driven by wrk (one thread, ``concurrency`` connections)."""
    bodies = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
    with bodies:
        bodies.writelines(json.dumps(payload(text)) + "\n" for text in _texts())
    try:
        done = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "60s",
             "-s", str(WRK_SCRIPT), url], env={**os.environ, "BODIES_FILE": bodies.name},
            capture_output=True, text=True, check=True)
    finally:
        os.unlink(bodies.name)
    line = next(line for line in done.stdout.splitlines() if line.startswith("WRK_JSON "))
    figures = json.loads(line[len("WRK_JSON "):])
    errors = sum(v for k, v in figures.items() if k.startswith("errors_"))
    return {"embeddings_per_s": round((figures["requests"] - figures["errors_status"])
                                      / (figures["duration_us"] / 1e6), 2),
            "requests": figures["requests"], "errors": errors,
            "p50_ms": round(figures["p50_us"] / 1000, 1),
            "p99_ms": round(figures["p99_us"] / 1000, 1)}


def _load(url: str, payload, concurrency: int, seconds: float, client: str = "httpx") -> dict:
    """Closed-loop load: ``concurrency`` clients, one text per request, for ``seconds``."""
    if client == "wrk":
        return _wrk(url, payload, concurrency, seconds)
    return asyncio.run(_httpx_load(url, payload, concurrency, seconds))


async def _httpx_load(url: str, payload, concurrency: int, seconds: float) -> dict:
    import httpx

    texts = _texts()
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def client(worker: int, session: httpx.AsyncClient) -> None:
        nonlocal errors
        i = worker
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                response = await session.post(url, json=payload(texts[i % len(texts)]))
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok
            i += concurrency

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(w, session) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"embeddings_per_s": round((len(latencies) - errors) / elapsed, 2),
            "requests": len(latencies), "errors": errors,
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def _inprocess(export_dir: Path, concurrency: int, seconds: float) -> float:
    from customir.serve.encoder import OnnxEncoder

    encoder = OnnxEncoder(export_dir)
    texts, batch = _texts(), min(concurrency, 32)
    encoder.encode(texts[:batch])
    done, i, stop_at = 0, 0, time.perf_counter() + min(seconds, 10)
    started = time.perf_counter()
    while time.perf_counter() < stop_at:
        chunk = [texts[(i + j) % len(texts)] for j in range(batch)]
        encoder.encode(chunk, batch_size=batch)
        done += batch
        i += batch
    return round(done / (time.perf_counter() - started), 2)


def _export_base(scratch: Path) -> Path:
    from customir.config import ExportConfig, IngestConfig
    from customir.corpus import ingest
    from customir.export import onnx
    from customir.models import resolve_base_model

    corpus = scratch / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(_texts(1)[0])
    ingest.run(corpus, scratch, IngestConfig(min_chunk_tokens=1))
    onnx.run(resolve_base_model("all-MiniLM-L6-v2"), scratch / "chunks", scratch,
             ExportConfig(int8=False))
    return scratch / "export"


def _customir(export_dir: Path, seconds: float, threads: int | None, client: str,
              ingress: str) -> dict:
    from customir.config import ServeConfig
    from customir.runtime import ray_session
    from customir.serve import lifecycle

    config = ServeConfig(port=_free_port(), max_batch_size=32, batch_wait_timeout_s=0.005,
                         encoder_threads=threads, ingress=ingress)
    results = {}
    with ray_session(None, lifecycle.ingress_env(config)):  # a cluster of its own per ingress
        url = lifecycle.start(export_dir, config) + "/embeddings"
        try:
            _load(url, lambda t: {"input": t}, 4, 2, client)  # warm-up
            for c in LEVELS:
                results[c] = _load(url, lambda t: {"input": t}, c, seconds, client)
        finally:
            lifecycle.stop()
    return results


def _infinity_python() -> Path:
    """A virtual environment with infinity-emb, made once under ~/.cache/customir/bench."""
    venv = Path.home() / ".cache" / "customir" / "bench" / "infinity-venv"
    python = venv / "bin" / "python"
    if not (venv / ".installed").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)   # the CPU build, first
        subprocess.run(pip + [INFINITY], check=True)
        (venv / ".installed").write_text(INFINITY)
    return python


def _infinity(model_dir: Path, seconds: float, client: str) -> dict:
    python = _infinity_python()
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
           "DO_NOT_TRACK": "1"}
    cli = Path(python).parent / "infinity_emb"
    log = open(tempfile.mktemp(suffix="-infinity.log"), "w")
    proc = subprocess.Popen([str(cli), "v2", "--model-id", str(model_dir), "--port", str(port),
                             "--host", "127.0.0.1", "--engine", "torch", "--device", "cpu",
                             "--batch-size", "32", "--no-bettertransformer"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        import httpx

        deadline = time.time() + 300
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"infinity-emb exited; see {log.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            raise RuntimeError(f"infinity-emb did not become ready; see {log.name}")
        url = f"http://127.0.0.1:{port}/embeddings"
        def payload(text: str) -> dict:
            return {"input": [text], "model": str(model_dir)}

        _load(url, payload, 4, 2, client)
        return {c: _load(url, payload, c, seconds, client) for c in LEVELS}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="15 s per level")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--export", type=Path, help="an export folder (default: base MiniLM)")
    parser.add_argument("--no-infinity", action="store_true")
    parser.add_argument("--threads", type=int, help="onnxruntime threads in the replica")
    parser.add_argument("--client", choices=("wrk", "httpx"),
                        default="wrk" if shutil.which("wrk") else "httpx",
                        help="load generator (default: wrk when installed)")
    parser.add_argument("--ingress", default="haproxy,proxy",
                        help="serve.ingress modes to measure, comma-separated; the first "
                        "one's figures are the headline ratios")
    args = parser.parse_args()
    seconds = 15.0 if args.quick else args.seconds
    ingresses = args.ingress.split(",")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    export_dir = args.export or _export_base(scratch_dir("customir-bench-"))
    model_dir = Path(json.loads((export_dir / "customir_onnx.json").read_text())["source_model"])
    # the in-process rate before and after the servers ran, so drift of the machine shows
    before = {c: _inprocess(export_dir, c, seconds) for c in LEVELS}
    served = {mode: _customir(export_dir, seconds, args.threads, args.client, mode)
              for mode in ingresses}
    after = {c: _inprocess(export_dir, c, seconds) for c in LEVELS}
    inprocess = {c: round((before[c] + after[c]) / 2, 2) for c in LEVELS}
    infinity = None
    if not args.no_infinity:
        try:
            infinity = _infinity(model_dir, seconds, args.client)
        except Exception as exc:  # noqa: BLE001 - the baseline failing is reported, not fatal
            print(f"infinity-emb baseline failed: {exc}", file=sys.stderr)

    print(f"{'clients':>7} {'ingress':>8} {'customir emb/s':>15} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} {'in-process':>11} {'infinity':>9} {'inf p99':>8}")
    for c in LEVELS:
        inf = infinity[c] if infinity else {}
        for mode in ingresses:
            s = served[mode][c]
            print(f"{c:>7} {mode:>8} {s['embeddings_per_s']:>15} {s['p50_ms']:>8} "
                  f"{s['p99_ms']:>8} {s['errors']:>6} {inprocess[c]:>11} "
                  f"{inf.get('embeddings_per_s', '-'):>9} {inf.get('p99_ms', '-'):>8}")
    head = served[ingresses[0]]
    figures = {
        "seconds_per_level": seconds,
        "load_client": args.client,
        "ingress": ingresses[0],
        "customir": {mode: {str(c): served[mode][c] for c in LEVELS} for mode in ingresses},
        "inprocess_embeddings_per_s": {str(c): inprocess[c] for c in LEVELS},
        "inprocess_before_after": {str(c): [before[c], after[c]] for c in LEVELS},
        "infinity": {str(c): infinity[c] for c in LEVELS} if infinity else None,
        "ratio_vs_inprocess_c8": round(head[8]["embeddings_per_s"] / inprocess[8], 3),
        "ratio_vs_infinity_c8": round(head[8]["embeddings_per_s"]
                                      / infinity[8]["embeddings_per_s"], 3) if infinity else None,
        "ratio_vs_inprocess_c8_by_ingress": {
            mode: round(served[mode][8]["embeddings_per_s"] / inprocess[8], 3)
            for mode in ingresses},
        "errors": sum(served[m][c]["errors"] for m in ingresses for c in LEVELS),
        "p99_ms": {str(c): head[c]["p99_ms"] for c in LEVELS},
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
