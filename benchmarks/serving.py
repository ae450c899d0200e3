"""Serving speed: the ONNX encoder (what the server runs) vs the sentence-transformers model, on
the same texts in the same process; then the served endpoint over loopback.

    python benchmarks/serving.py [EXPORT_DIR] [--texts 256] [--requests 64]

Without EXPORT_DIR the base MiniLM is exported to a temporary folder first. The last line is one
JSON object with the figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).parent.parent / "examples" / "sample_corpus" / "abstracts.jsonl"


def _texts(n: int) -> list[str]:
    lines = SAMPLE.read_text().splitlines()
    return [json.loads(lines[i % len(lines)])["text"][:1000] for i in range(n)]


def _rate(fn, n: int, repeats: int = 2) -> float:
    fn()  # warm-up
    best = min(_timed(fn) for _ in range(repeats))
    return n / best


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("export_dir", nargs="?")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--requests", type=int, default=64)
    args = parser.parse_args()

    import httpx

    from customir.config import ExportConfig, IngestConfig, ServeConfig
    from customir.corpus import ingest
    from customir.export import onnx
    from customir.models import load_sentence_transformer, resolve_base_model
    from customir.runtime import ray_session
    from customir.serve import app
    from customir.serve.encoder import EXPORT_CONFIG, OnnxEncoder

    scratch = Path(tempfile.mkdtemp(prefix="customir-bench-"))
    export_dir = Path(args.export_dir) if args.export_dir else None
    if export_dir is None:
        corpus = scratch / "corpus"
        corpus.mkdir()
        (corpus / "a.txt").write_text(_texts(1)[0])
        ingest.run(corpus, scratch, IngestConfig())
        onnx.run(resolve_base_model("all-MiniLM-L6-v2"), scratch / "chunks", scratch,
                 ExportConfig())
        export_dir = scratch / "export"
    source = json.loads((export_dir / EXPORT_CONFIG).read_text())["source_model"]
    texts = _texts(args.texts)
    encoder = OnnxEncoder(export_dir)
    torch_model = load_sentence_transformer(source)
    onnx_rate = _rate(lambda: encoder.encode(texts), len(texts))
    torch_rate = _rate(lambda: torch_model.encode(texts, batch_size=32), len(texts))

    config = ServeConfig(port=8799)
    with ray_session():
        url = app.start(export_dir, config)
        try:
            def one(i: int) -> int:
                return httpx.post(f"{url}/embeddings", json={"input": texts[i % len(texts)]},
                                  timeout=60).status_code
            list(map(one, range(4)))  # warm-up
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(one, range(args.requests)))
            served_rate = args.requests / (time.perf_counter() - started)
        finally:
            app.stop()
    ok = sum(c == 200 for c in codes)
    rows = [("onnx encoder (served)", onnx_rate), ("sentence-transformers (torch)", torch_rate),
            ("HTTP /v1/embeddings, 8 clients", served_rate)]
    print(f"{'what':34s} {'texts/s':>10s}")
    for name, rate in rows:
        print(f"{name:34s} {rate:10.1f}")
    print(f"served requests ok: {ok}/{len(codes)}")
    print(json.dumps({"texts": len(texts), "onnx_texts_per_s": round(onnx_rate, 2),
                      "torch_texts_per_s": round(torch_rate, 2),
                      "ratio_vs_torch": round(onnx_rate / torch_rate, 3),
                      "served_requests_per_s": round(served_rate, 2),
                      "served_ok": ok, "served_requests": len(codes)}))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
