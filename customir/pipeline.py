"""The whole run: ingest → generate → mine → verify → train → evaluate → export → serve check.

Each stage reads the previous stage's folder under ``run_dir`` and skips itself when its output
is already complete for the same settings and inputs, so an interrupted run resumes where it
stopped. A ``run_dir`` on object storage (``s3://…``, ``gs://…``) is worked on in a local mirror
(:mod:`customir.run_store`): a stage's input folders and its own output folder are pulled before
it runs — so its resume check sees work finished anywhere — and its output is pushed after.
"""

from __future__ import annotations

import time
from pathlib import Path

from customir import storage
from customir.config import ConfigError, PipelineConfig
from customir.manifest import Manifest, log
from customir.run_store import RunStore
from customir.runtime import ray_session
from customir.serve.lifecycle import api_key, ingress_env


STAGES = ("ingest", "generate", "mine", "verify", "train", "evaluate", "export")
# the folder under run_dir that each stage writes
STAGE_FOLDERS = {"ingest": "chunks", "generate": "queries", "mine": "candidates",
                 "verify": "triples", "train": "train", "evaluate": "evaluation",
                 "export": "export"}
# the earlier stages' folders each stage reads (evaluate's report also reads their manifests);
# indexes/ is left out on purpose: a local cache that mine rebuilds from chunks/
STAGE_INPUTS = {"ingest": (), "generate": ("chunks",), "mine": ("queries", "chunks"),
                "verify": ("candidates", "chunks"), "train": ("triples", "chunks"),
                "evaluate": ("chunks", "queries", "candidates", "triples", "train"),
                "export": ("train", "chunks", "triples")}


def run_pipeline(config: PipelineConfig, *, serve_check: bool = True,
                 until: str = "export") -> dict:
    """Run every stage (or those up to ``until``); return {stage: seconds}, the serving check's
    figures and the evaluation summary."""
    if not config.corpus:
        raise ConfigError("the config names no corpus folder (corpus: PATH)")
    if until not in STAGES:
        raise ConfigError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    store = RunStore(config.run_dir, config.work_dir)
    store.check()
    if STAGES.index(until) >= STAGES.index("evaluate"):
        from customir.evaluate.evaluate import check_beir_files

        check_beir_files(config.evaluate)  # before an hour of stages, not after
    timings: dict[str, float] = {}
    manifests = {}
    serve_check = serve_check and until == "export"
    if serve_check:
        api_key(config.serve)  # an unset serve.api_key_env is said now, not after the stages
    # the serving check's ingress needs the cluster started with its settings
    cluster_env = ingress_env(config.serve) if serve_check else {}
    with ray_session(config.ray, cluster_env):
        for stage in STAGES[:STAGES.index(until) + 1]:
            started = time.monotonic()
            manifests[stage] = run_stage(config, stage)
            timings[stage] = round(time.monotonic() - started, 1)
        check = None
        if serve_check:
            started = time.monotonic()
            check = check_serving(store.require("export"), config)
            timings["serve_check"] = round(time.monotonic() - started, 1)
    log(f"run finished: {timings}")
    evaluation = manifests.get("evaluate")
    return {"timings": timings, "serve_check": check,
            "evaluation": evaluation.extra["sets"] if evaluation else None}


def run_stage(config: PipelineConfig, stage: str) -> Manifest:
    """Run one stage alone on ``config.run_dir``: it reads the earlier stages' folders there
    (ingest reads ``config.corpus``) and returns its manifest. Used by the per-stage Ray jobs.
    With a remote ``run_dir`` the folders it reads and writes are pulled first, and its output
    is pushed once it is finished."""
    from customir.corpus import ingest
    from customir.evaluate import evaluate
    from customir.export import onnx
    from customir.negatives import mine, verify
    from customir.queries import generate
    from customir.train import trainer

    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    if not config.corpus and stage == "ingest":
        raise ConfigError("the config names no corpus folder (corpus: PATH)")
    store = RunStore(config.run_dir, config.work_dir)
    store.check()
    run = store.local
    calls = {
        "ingest": lambda: ingest.run(store.fetch_corpus(config.corpus), run, config.ingest,
                                     config.train),
        "generate": lambda: generate.run(run / "chunks", run, config.generate),
        "mine": lambda: mine.run(run / "queries", run / "chunks", run, config.mine),
        "verify": lambda: verify.run(run / "candidates", run / "chunks", run, config.verify),
        "train": lambda: trainer.run(run / "triples", run / "chunks", run, config.train,
                                     config.ray, checkpoint_root=_checkpoint_root(store)),
        "evaluate": lambda: evaluate.run(run / "chunks", run / "triples", run / "train", run,
                                         config.evaluate, config.train.base_model, config.mine,
                                         config.train.trust_remote_code),
        "export": lambda: onnx.run(run / "train" / trainer.MODEL_DIR, run / "chunks", run,
                                   config.export, run / "triples", run / "train"),
    }
    for folder in (*STAGE_INPUTS[stage], STAGE_FOLDERS[stage]):
        store.pull(folder)
    with ray_session(config.ray):
        manifest = calls[stage]()
    store.push(STAGE_FOLDERS[stage])
    return manifest


def _checkpoint_root(store: RunStore) -> str | None:
    """Training checkpoints of a remote run folder go under it (``RUN_DIR/.ray``), where every
    training worker and a rerun on another machine find them; None: the trainer's default."""
    return storage.join(store.run_dir, ".ray") if store.remote else None


def check_serving(export_dir: Path, config: PipelineConfig) -> dict:
    """Start the server, embed sample texts through the real `openai` client, compare with the
    exported model run directly, and stop the server."""
    import numpy as np
    from openai import OpenAI

    from customir.serve import lifecycle
    from customir.serve.encoder import OnnxEncoder

    texts = ["What does this corpus say about treatment outcomes?", "protein folding"]
    url = lifecycle.start(export_dir, config.serve)
    try:
        client = OpenAI(base_url=url, api_key=lifecycle.api_key(config.serve) or "unused",
                        max_retries=2, timeout=60)
        reply = client.embeddings.create(model=config.serve.model_name, input=texts)
        served = np.array([d.embedding for d in reply.data], dtype=np.float32)
    finally:
        lifecycle.stop()
    direct = OnnxEncoder(export_dir).encode(texts)
    cosine = float(np.min(np.sum(served * direct, axis=1) /
                          (np.linalg.norm(served, axis=1) * np.linalg.norm(direct, axis=1))))
    result = {"url": url, "dimension": int(served.shape[1]), "min_cosine_vs_onnx": cosine,
              "prompt_tokens": reply.usage.prompt_tokens}
    log(f"serve check: {result}")
    return result
