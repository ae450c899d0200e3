"""Query-generation throughput: customir's generate stage vs raw llama-cpp on the same prompts.

    python benchmarks/generation.py [--chunks 200] [--blocks 4] [--multihop 0.25]
        [--model qwen2.5-coder-1.5b-instruct] [--no-baseline] [--out DIR] [--data DIR]

SciFact abstracts are ingested into chunks and the first ``--chunks`` of them are split into
``--blocks`` blocks. For each block, one after the other (so both sides see the same load on a
shared machine):

- stage: ``customir.queries.generate.run`` on the block (a running local Ray cluster, one
  llama.cpp actor, corpus profile, structural queries, the BM25 index for multi-hop neighbours
  and round-trip checks, validation with re-asks, embedding dedup, typed Parquet + manifest),
  timed from call to return; its tokens are the completion tokens of all its LLM calls;
- raw: ``llama_cpp.Llama.create_chat_completion`` in this process on the stage's first-round
  prompts (the same messages and JSON schemas, rebuilt with the stage's own functions from its
  profile), one after the other, nothing else.

Tokens/s is completion tokens over wall time; the stage's time includes everything it does
besides the LLM. Up to 20 generated queries per kind are written to ``OUT/samples.json``;
``--out`` must be a new or empty folder (a finished block found there would be reused and
timed at ~0 s).
The last line is one JSON object with ``ratio_vs_raw_llamacpp`` (stage tokens/s / raw tokens/s).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from common import SCIFACT, logger, scratch_dir  # noqa: E402  (sets up sys.path and env)

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before llama_cpp is imported
say = logger("generation-bench")


def scifact_chunks(work: Path, n_chunks: int, data: Path = SCIFACT):
    """Ingest enough abstracts of ``data/corpus.jsonl`` (BEIR format, corpus order) for
    ``n_chunks`` chunks; return them."""
    from customir.config import IngestConfig, TrainConfig
    from customir.corpus import ingest
    from customir.schemas import CHUNKS, read_table

    corpus = work / "corpus"
    corpus.mkdir()
    with open(data / "corpus.jsonl", encoding="utf-8") as src, \
            open(corpus / "scifact.jsonl", "w", encoding="utf-8") as dst:
        for number, line in enumerate(src):
            if number == n_chunks:  # an abstract gives one chunk or more
                break
            dst.write(line.strip() + "\n")
    ingest.run(corpus, work / "ingested", IngestConfig(), TrainConfig())
    return read_table(work / "ingested" / "chunks", CHUNKS).slice(0, n_chunks)


def write_block(table, folder: Path) -> Path:
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True)
    pq.write_table(table, folder / "data" / "part-0.parquet")
    return folder


def first_round_prompts(chunks_dir: Path, run_dir: Path, config) -> list[tuple[list, dict, int]]:
    """The stage's first-round (messages, schema, max_tokens), rebuilt by its own functions."""
    from customir.queries import generate
    from customir.queries.candidates import Chunks
    from customir.queries.filtering import chosen, choose_llm_chunks
    from customir.schemas import CHUNKS, read_table

    chunks = Chunks(read_table(chunks_dir, CHUNKS))
    profile = json.loads((run_dir / "queries" / generate.PROFILE_FILE).read_text())
    llm_rows = sorted(chunks.row[c] for c in
                      choose_llm_chunks(chunks.ids, config.max_llm_chunks, config.seed))
    anchors = [r for r in llm_rows if chosen(chunks.ids[r], config.multihop, config.seed, "mh")]
    groups = generate.multihop_groups(chunks, anchors, config, chunks_dir, run_dir)
    asks = generate.query_asks(chunks, config, profile, llm_rows, groups)
    return [(a.messages, a.schema(list(a.kinds)), a.max_tokens) for a in asks]


def raw_llamacpp(llm, prompts: list, temperature: float) -> tuple[int, int, float]:
    """(completion tokens, prompt tokens, seconds) for the prompts answered one by one."""
    completion = prompt = 0
    started = time.monotonic()
    for messages, schema, max_tokens in prompts:
        reply = llm.create_chat_completion(
            messages=messages, response_format={"type": "json_object", "schema": schema},
            temperature=temperature, max_tokens=max_tokens)
        completion += reply["usage"]["completion_tokens"]
        prompt += reply["usage"]["prompt_tokens"]
    return completion, prompt, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--multihop", type=float, default=0.25)
    parser.add_argument("--no-baseline", action="store_true", help="stage only (for samples)")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep runs and samples here (a new or empty folder)")
    parser.add_argument("--data", type=Path, default=SCIFACT,
                        help="folder with a BEIR corpus.jsonl (default: SciFact)")
    args = parser.parse_args()
    if args.out is not None and args.out.is_dir() and any(args.out.iterdir()):
        # a second run there would fail on its corpus folder or reuse finished blocks, timed
        # at ~0 s: the stage's tokens/s and the ratio would be inflated
        parser.error(f"--out {args.out} is not empty; give a new or empty folder")

    import pyarrow as pa
    import ray

    from customir.config import GenerateConfig, LLMConfig
    from customir.llm.gguf import resolve_gguf
    from customir.queries import generate
    from customir.runtime import WORKER_ENV
    from customir.schemas import QUERIES, read_table

    work = args.out or scratch_dir("generation-bench-")
    work.mkdir(parents=True, exist_ok=True)
    chunks = scifact_chunks(work, args.chunks, args.data)
    config = GenerateConfig(llm=LLMConfig(backend="llamacpp", model=args.model),
                            multihop=args.multihop)
    llm = None
    if not args.no_baseline:
        from llama_cpp import Llama

        llm = Llama(model_path=str(resolve_gguf(args.model)), n_ctx=config.llm.n_ctx,
                    n_threads=os.cpu_count(), verbose=False, seed=0)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": dict(WORKER_ENV)})
    size = -(-chunks.num_rows // args.blocks)
    stage = {"tokens": 0, "prompt_tokens": 0, "seconds": 0.0, "requests": 0}
    raw = {"tokens": 0, "prompt_tokens": 0, "seconds": 0.0, "requests": 0}
    tables, per_kind = [], []
    for block in range(args.blocks):
        part = chunks.slice(block * size, size)
        if part.num_rows == 0:
            break
        chunks_dir = write_block(part, work / f"block-{block}" / "chunks")
        run_dir = work / f"block-{block}"
        started = time.monotonic()
        manifest = generate.run(chunks_dir, run_dir, config)
        stage["seconds"] += time.monotonic() - started
        for usage in manifest.extra["llm_usage"].values():
            if usage:
                stage["tokens"] += usage["completion_tokens"]
                stage["prompt_tokens"] += usage["prompt_tokens"]
                stage["requests"] += usage["requests"]
        per_kind.append(manifest.extra["per_kind"])
        tables.append(read_table(run_dir / "queries", QUERIES))
        say(f"block {block}: stage {manifest.extra['seconds']} s, {manifest.extra['kinds']}")
        if llm is not None:
            prompts = first_round_prompts(chunks_dir, run_dir, config)
            tokens, prompt_tokens, seconds = raw_llamacpp(llm, prompts, config.llm.temperature)
            raw["tokens"] += tokens
            raw["prompt_tokens"] += prompt_tokens
            raw["seconds"] += seconds
            raw["requests"] += len(prompts)
            say(f"block {block}: raw {seconds:.1f} s for {len(prompts)} prompts")
    ray.shutdown()

    queries = pa.concat_tables(tables)
    samples: dict[str, list] = {}
    texts = dict(zip(chunks.column("chunk_id").to_pylist(), chunks.column("text").to_pylist()))
    for row in queries.to_pylist():
        kind_samples = samples.setdefault(row["kind"], [])
        if len(kind_samples) < 20 and all(s["query"] != row["query"] for s in kind_samples):
            shown = {c: texts[c][:160] for c in row["supporting_chunk_ids"]}
            kind_samples.append({"query": row["query"], "chunks": shown})
    (work / "samples.json").write_text(json.dumps(samples, indent=2))

    def rate(side):
        return side["tokens"] / side["seconds"] if side["seconds"] else None

    figures = {
        "chunks": chunks.num_rows, "model": args.model, "multihop_share": args.multihop,
        "stage_completion_tokens": stage["tokens"], "stage_requests": stage["requests"],
        "stage_seconds": round(stage["seconds"], 1),
        "stage_tokens_per_s": round(rate(stage), 2),
        "stage_chunks_per_s": round(chunks.num_rows / stage["seconds"], 4),
        "query_rows_by_kind": {k: int(n) for k, n in zip(*[
            c.to_pylist() for c in queries.group_by("kind").aggregate([("kind", "count")])
            .select(["kind", "kind_count"]).columns])},
    }
    if llm is not None:
        figures.update({
            "raw_completion_tokens": raw["tokens"], "raw_requests": raw["requests"],
            "raw_seconds": round(raw["seconds"], 1),
            "raw_tokens_per_s": round(rate(raw), 2),
            "raw_chunks_per_s": round(chunks.num_rows / raw["seconds"], 4),
            "ratio_vs_raw_llamacpp": round(rate(stage) / rate(raw), 3),
        })
    print(f"{'side':<8}{'requests':>10}{'tokens':>10}{'seconds':>10}{'tok/s':>8}{'chunks/s':>10}")
    for name, side in (("stage", stage), ("raw", raw)):
        if side["seconds"]:
            print(f"{name:<8}{side['requests']:>10}{side['tokens']:>10}{side['seconds']:>10.1f}"
                  f"{rate(side):>8.2f}{chunks.num_rows / side['seconds']:>10.3f}")
    for kind, kind_samples in sorted(samples.items()):
        print(f"\n{kind}:")
        for s in kind_samples[:5]:
            print(f"  - {s['query']}")
    print(f"\nsamples: {work / 'samples.json'}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
