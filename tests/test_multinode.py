"""Stages sharded over a local 3-node Ray cluster (``ray.cluster_utils.Cluster``: a head without
CPUs and two 1-CPU worker nodes, so every task runs on a worker node): generation and mining
process every chunk exactly once, and a worker node killed mid-generation does not change that.
Actors on the worker nodes get their inputs through Ray, not from the driver's run folder: the
miners open a copy of the index unpacked on their node (:mod:`customir.node_files`).

Each scenario runs in a subprocess (the test session's own Ray cluster is already up in this
process). Generation uses the scripted LLM with a UDF that records, per batch, the node it ran
on and sleeps a little, so the kill lands mid-way; the stage's output is compared with a run of
the same stage without Ray trouble (in this process, on the session cluster).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from customir.config import GenerateConfig, IngestConfig, LLMConfig, MineConfig
from customir.corpus import ingest
from customir.negatives import mine
from customir.negatives.index import index_dir
from customir.queries import generate
from customir.manifest import Manifest
from customir.schemas import CANDIDATES, QUERIES, read_table

pytestmark = [pytest.mark.ray, pytest.mark.slow]
SAMPLE = Path(__file__).parent.parent / "examples" / "sample_corpus" / "abstracts.jsonl"
GENERATE = GenerateConfig(llm=LLMConfig(backend="scripted"), multihop=0.0, dedup_cosine=None,
                          batch_size=2, num_workers=2)
MINE = MineConfig(top_k=10, batch_size=4, num_workers=2)

DRIVER = '''
import json, os, sys, threading, time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

import customir.llm.batch as batch
from customir.config import GenerateConfig, MineConfig
from customir.negatives import mine
from customir.queries import generate

run, marks, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
kill = mode == "kill"
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
if mode == "placement":  # a node with a (declared) GPU and a CPU node with a custom resource
    workers = [cluster.add_node(num_cpus=2, num_gpus=1),
               cluster.add_node(num_cpus=2, resources={"cpu_node": 2})]
else:
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)


class NodeMarkingAnswerer(batch.ChatAnswerer):
    """The stage's own UDF, marking each batch with its node and slowed down a little."""

    def __call__(self, table):
        out = super().__call__(table)
        node = ray.get_runtime_context().get_node_id()
        (marks / f"{node}-{os.getpid()}-{time.monotonic_ns()}").write_text(
            "\\n".join(table.column("request_id").to_pylist()))
        time.sleep(0.3)
        return out


class NodeMarkingMiner(mine.CandidateMiner):
    def __call__(self, table):
        out = super().__call__(table)
        node = ray.get_runtime_context().get_node_id()
        (marks / f"mine_{node}_{time.monotonic_ns()}").write_text(str(self.index_dir))
        return out


batch.ChatAnswerer = NodeMarkingAnswerer
mine.CandidateMiner = NodeMarkingMiner
killed = []
if kill:
    def kill_a_node():
        while len(list(marks.iterdir())) < 3:  # some batches done
            time.sleep(0.05)
        # the victim is a node that has done work: the other node's actor may still be starting
        busy = {p.name.split("-")[0] for p in marks.iterdir()}
        victim = next(w for w in workers if w.node_id in busy)
        killed.extend([victim.node_id, time.monotonic_ns()])
        cluster.remove_node(victim, allow_graceful=False)  # SIGKILLs the node's processes
        cluster.add_node(num_cpus=1)  # the autoscaler's replacement
    threading.Thread(target=kill_a_node, daemon=True).start()
config = json.loads(os.environ["CONFIGS"])
generate.run(run / "chunks", run, GenerateConfig.model_validate(config["generate"]))
if not kill:
    mine.run(run / "queries", run / "chunks", run, MineConfig.model_validate(config["mine"]))
llm_marks = [p for p in marks.iterdir() if not p.name.startswith("mine_")]
nodes = sorted({p.name.split("-")[0] for p in llm_marks})
mine_marks = [p for p in marks.iterdir() if p.name.startswith("mine_")]
mine_nodes = sorted({p.name.split("_")[1] for p in mine_marks})
index_paths = sorted({p.read_text() for p in mine_marks})
answered = [line for p in llm_marks for line in p.read_text().splitlines()]
after_kill = sum(int(p.name.split("-")[-1]) > killed[1] for p in llm_marks) if kill else 0
print(json.dumps({"nodes": nodes, "killed": killed, "head": cluster.head_node.node_id,
                  "workers": [w.node_id for w in workers], "mine_nodes": mine_nodes,
                  "batches": len(llm_marks), "answered": answered,
                  "batches_after_kill": after_kill, "index_paths": index_paths}))
ray.shutdown()
cluster.shutdown()
'''


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ray_cluster):
    """40 sample abstracts ingested, with generate and mine run once on the session cluster."""
    root = tmp_path_factory.mktemp("multinode")
    (root / "corpus").mkdir()
    lines = SAMPLE.read_text().splitlines()[:40]
    (root / "corpus" / "abstracts.jsonl").write_text("\n".join(lines) + "\n")
    run = root / "reference"
    ingest.run(root / "corpus", run, IngestConfig())
    generate.run(run / "chunks", run, GENERATE)
    mine.run(run / "queries", run / "chunks", run, MINE)
    return run


def _on_three_nodes(reference, tmp_path, mode, generate_config=GENERATE, mine_config=MINE):
    run, marks = tmp_path / "run", tmp_path / "marks"
    run.mkdir()
    marks.mkdir()
    (run / "chunks").symlink_to(reference / "chunks")
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "RAY_ADDRESS": "", "CUSTOMIR_CACHE": str(tmp_path / "cache"),
           "CONFIGS": json.dumps(
        {"generate": generate_config.model_dump(mode="json"),
         "mine": mine_config.model_dump(mode="json")})}
    done = subprocess.run([sys.executable, str(script), str(run), str(marks), mode],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    # the driver's summary line; Ray may print its own lines after it (a raylet's retry notice
    # about the killed node's workers came out on stdout during shutdown once)
    summary = [line for line in done.stdout.splitlines() if line.startswith('{"nodes"')]
    assert len(summary) == 1, done.stdout[-3000:]
    return run, json.loads(summary[0])


def _rows(folder, schema, key):
    rows = read_table(folder, schema).to_pylist()
    ids = [r[key] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate rows"
    return sorted(rows, key=lambda r: r[key])


def test_generation_and_mining_sharded_over_nodes_touch_every_chunk_once(reference, tmp_path):
    run, seen = _on_three_nodes(reference, tmp_path, "plain")
    # the work ran on both worker nodes, never on the CPU-less head
    assert len(seen["nodes"]) == 2 and seen["head"] not in seen["nodes"]
    assert _rows(run / "queries", QUERIES, "query_id") == _rows(reference / "queries", QUERIES,
                                                               "query_id")
    # every LLM request (one per chunk asked) was answered exactly once, across the nodes
    asked = Manifest.read(reference / "queries").extra["llm_usage"]["queries"]["requests"]
    assert len(seen["answered"]) == len(set(seen["answered"])) == asked > 0
    assert Manifest.read(run / "queries").balances == Manifest.read(
        reference / "queries").balances
    assert _rows(run / "candidates", CANDIDATES, "query_id") == _rows(
        reference / "candidates", CANDIDATES, "query_id")
    # the miners (on the worker nodes) opened a node-local copy of the index, not the driver's
    # folder: unpacked once (both nodes share this machine's cache folder), byte for byte
    driver_index = index_dir(run, MINE)
    [copy] = [Path(p) for p in seen["index_paths"]]
    assert copy.parent == tmp_path / "cache" / "node-files"
    assert _files(copy) == _files(driver_index) != {}


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}


def test_a_worker_node_killed_mid_generation_loses_and_repeats_nothing(reference, tmp_path):
    run, seen = _on_three_nodes(reference, tmp_path, "kill")
    assert seen["killed"] and seen["killed"][0] in seen["nodes"]  # it had done some work ...
    assert seen["batches_after_kill"] > 0  # ... and the stage went on without it
    assert len(seen["nodes"]) >= 2
    # requests the dead node was answering were answered again elsewhere; the output holds
    # each chunk's queries once
    asked = Manifest.read(reference / "queries").extra["llm_usage"]["queries"]["requests"]
    assert set(seen["answered"]) and len(set(seen["answered"])) == asked
    assert _rows(run / "queries", QUERIES, "query_id") == _rows(reference / "queries", QUERIES,
                                                               "query_id")
    assert Manifest.read(run / "queries").balances == Manifest.read(
        reference / "queries").balances


def test_llm_stages_go_to_gpu_nodes_and_mining_to_cpu_nodes(reference, tmp_path):
    llm = LLMConfig(backend="scripted", gpus_per_worker=1)
    run, seen = _on_three_nodes(
        reference, tmp_path, "placement",
        GENERATE.model_copy(update={"llm": llm, "num_workers": 1}),
        MINE.model_copy(update={"resources_per_worker": {"cpu_node": 1}}))
    gpu_node, cpu_node = seen["workers"]
    assert seen["nodes"] == [gpu_node] and seen["mine_nodes"] == [cpu_node]
    assert _rows(run / "queries", QUERIES, "query_id") == _rows(reference / "queries", QUERIES,
                                                               "query_id")
    assert _rows(run / "candidates", CANDIDATES, "query_id") == _rows(
        reference / "candidates", CANDIDATES, "query_id")


SERVE_DRIVER = '''
import json, sys
from pathlib import Path

import httpx
import numpy as np
import ray
from ray import serve
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from customir.config import ServeConfig
from customir.serve import lifecycle
from customir.serve.encoder import OnnxEncoder

export, port = Path(sys.argv[1]), int(sys.argv[2])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
worker = cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
# one HTTP proxy, on the head: every node of this one-machine cluster has the same address
serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
url = lifecycle.start(export, ServeConfig(port=port, min_replicas=1, max_replicas=1))
texts = ["what secretes insulin?", "glucose regulation"]
reply = httpx.post(f"{url}/embeddings", json={"input": texts}, timeout=120)
reply.raise_for_status()
served = np.array([d["embedding"] for d in reply.json()["data"]])
direct = OnnxEncoder(export).encode(texts)
replicas = [a for a in list_actors(filters=[("state", "=", "ALIVE")])
            if "EmbeddingServer" in a.class_name]
print(json.dumps({"min_cosine": float(np.min(np.sum(served * direct, axis=1))),
                  "replica_nodes": [a.node_id for a in replicas], "worker": worker.node_id}))
lifecycle.stop()
ray.shutdown()
cluster.shutdown()
'''


def test_a_replica_on_another_node_serves_a_copy_of_the_export(tmp_path, ray_cluster):
    """`customir serve`'s replicas may land on a node that does not see the export folder: the
    one replica here runs on the worker node (the head has no CPU) and loads its own copy."""
    from conftest import free_port
    from customir.config import ExportConfig
    from customir.export import onnx
    from customir.models import resolve_base_model

    run, corpus = tmp_path / "run", tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Insulin regulates blood glucose. The pancreas secretes it.")
    ingest.run(corpus, run, IngestConfig(min_chunk_tokens=1))
    onnx.run(resolve_base_model("all-MiniLM-L6-v2"), run / "chunks", run,
             ExportConfig(int8=False))
    script = tmp_path / "serve_driver.py"
    script.write_text(SERVE_DRIVER)
    env = {**os.environ, "RAY_ADDRESS": "", "CUSTOMIR_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script), str(run / "export"), str(free_port())],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    [summary] = [json.loads(line) for line in done.stdout.splitlines()
                 if line.startswith('{"min_cosine"')]
    assert summary["replica_nodes"] == [summary["worker"]]
    assert summary["min_cosine"] >= 0.9999
    [copy] = [p for p in (tmp_path / "cache" / "node-files").iterdir() if p.is_dir()]
    assert copy.name.startswith("export-") and (copy / "model.onnx").is_file()
    assert _files(copy) == _files(run / "export")
