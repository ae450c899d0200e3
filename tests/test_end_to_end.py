"""Corpus → served embeddings: every stage on a local Ray cluster with the real embedded LLM,
then the real openai client against the server on 127.0.0.1."""

import json
from pathlib import Path

import numpy as np
import openai
import pytest

from customir import load_config, run_pipeline
from customir.evaluate.report import SECTIONS
from customir.manifest import Manifest
from customir.serve import lifecycle
from customir.serve.encoder import OnnxEncoder

from conftest import free_port
from test_report import embedded_images

pytestmark = [pytest.mark.slow, pytest.mark.ray]
SAMPLE = Path(__file__).parent.parent / "examples" / "sample_corpus"


@pytest.fixture
def tiny_corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "notes").mkdir(parents=True)
    lines = (SAMPLE / "abstracts.jsonl").read_text().splitlines()[:14]
    records = [json.loads(line) for line in lines]
    with open(root / "abstracts.jsonl", "w") as fh:
        for rec in records[:12]:
            fh.write(json.dumps(rec) + "\n")
    for rec in records[12:]:
        (root / "notes" / f"{rec['_id']}.md").write_text(f"# {rec['title']}\n\n{rec['text']}\n")
    return root


def test_corpus_to_served_embeddings(tiny_corpus, tmp_path, ray_cluster):
    config = load_config(None, [
        f"corpus={tiny_corpus}", f"run_dir={tmp_path / 'run'}",
        "generate.max_llm_chunks=2", "generate.multihop=0.5", "verify.max_queries=2",
        "train.max_steps=2", "train.batch_size=8", "train.split=[0.5, 0.2, 0.3]",
        f"serve.port={free_port()}",
    ])
    summary = run_pipeline(config, serve_check=False)
    run = Path(config.run_dir)

    generated = Manifest.read(run / "queries")
    assert generated.balances["llm_chunks"].n_in == 2
    assert generated.balances["llm_chunks"].n_out >= 1  # the real LLM answered in JSON
    assert {"keyword", "question", "claim"} & set(generated.extra["kinds"])
    verified = Manifest.read(run / "triples")
    assert verified.extra["verified_queries"] == 2
    assert sum(verified.extra["verdicts"].get(v, 0) for v in ("kept", "false_negative")) >= 1
    assert Manifest.read(run / "train").extra["metrics"]["steps"] == 2
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert set(report["synthetic-test"]["results"]) == {"bm25", "base", "tuned", "hybrid",
                                                        "hybrid-base"}
    assert (run / "evaluation" / "report.png").stat().st_size > 1000
    html = (run / "evaluation" / "report.html").read_text()
    for section, _ in SECTIONS:  # every section of the report has content for this run
        body = html.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
        assert "Not available" not in body, section
    assert len(embedded_images(html)) == 6  # metrics, curves, scores, funnel, queries, timing
    details = report["details"]
    assert [label for label, _ in details["funnel"]][:3] == ["documents read",
                                                            "documents ingested", "chunks"]
    assert set(details["stage_seconds"]) == {"ingest", "generate", "mine", "verify", "train",
                                             "evaluate"}
    assert details["stage_seconds"]["train"] > 1  # the whole stage, not only its write
    assert 1 <= len(details["examples"]) <= 10
    data = report["training_data"]  # every report accounts for what was trained on
    assert data["verify"]["verified_queries"] == 2
    assert data["verify"]["dropped_share_of_checked"] is not None
    assert data["mine"]["backend"] == "bm25s" and data["generate"]["kinds"]
    markdown = (run / "evaluation" / "report.md").read_text()
    assert "dropped as false negatives" in markdown
    assert "| kind | asked | written | reply failures |" in markdown  # generation per kind
    assert data["generate"]["per_kind"]["title"]["kept"] >= 1
    exported = Manifest.read(run / "export").extra
    assert exported["parity"]["min_cosine"] >= 0.9999
    int8 = exported["int8"]
    assert "ndcg10_int8" in int8 and int8["test_queries"] == report["synthetic-test"]["n_queries"]
    assert int8["accepted"] == (run / "export" / "model.int8.onnx").is_file()

    url = lifecycle.start(run / "export", config.serve)
    try:
        client = openai.OpenAI(base_url=url, api_key="unused")
        texts = ["what is this corpus about?", "cell biology"]
        reply = client.embeddings.create(model=config.serve.model_name, input=texts)
    finally:
        lifecycle.stop()
    served = np.array([d.embedding for d in reply.data])
    direct = OnnxEncoder(run / "export").encode(texts)
    assert served.shape == (2, 384)
    cosine = np.sum(served * direct, axis=1) / (np.linalg.norm(served, axis=1)
                                               * np.linalg.norm(direct, axis=1))
    assert cosine.min() >= 0.9999

    # A rerun finds every stage complete and redoes nothing.
    before = {stage: Manifest.read(run / stage).finished_at for stage in
              ("chunks", "queries", "candidates", "triples", "train", "evaluation", "export")}
    rerun = run_pipeline(config, serve_check=False)
    assert {stage: Manifest.read(run / stage).finished_at for stage in before} == before
    assert sum(rerun["timings"].values()) < sum(summary["timings"].values()) / 3

    # No pickle between stages: every file of the run is Parquet, JSON, safetensors, ONNX,
    # tokenizer text, images or HTML — none is a pickle (protocol 2+ starts with 0x80).
    files = [p for p in run.rglob("*") if p.is_file() and ".ray" not in p.parts]
    pickled = [str(p) for p in files if p.suffix in {".pkl", ".pickle", ".bin", ".pt"}
               or p.read_bytes()[:1] == b"\x80"]
    assert files and pickled == []
