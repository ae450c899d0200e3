"""generate → mine → verify on a real local Ray cluster with the scripted LLM double."""

import json

import pyarrow.parquet as pq
import pytest

from customir.config import GenerateConfig, IngestConfig, LLMConfig, MineConfig, VerifyConfig
from customir.corpus import ingest
from customir.manifest import Manifest
from customir.negatives import mine, verify
from customir.negatives.index import index_dir
from customir.queries import generate
from customir.schemas import CANDIDATES, QUERIES, TRIPLES, SchemaError, read_table

pytestmark = pytest.mark.ray
SCRIPTED = LLMConfig(backend="scripted")


@pytest.fixture
def run_dir(tmp_path, fixture_corpus, ray_cluster):
    # One passage whose LLM reply is garbage, to exercise the counted error path.
    with open(fixture_corpus / "passages.jsonl", "a") as fh:
        fh.write(json.dumps({"_id": "bad", "title": "Garbage",
                             "text": "[[garbage]] this passage makes the scripted LLM fail."})
                 + "\n")
    ingest.run(fixture_corpus, tmp_path / "run", IngestConfig(min_chunk_tokens=3))
    return tmp_path / "run"


def test_generate_counts_queries_and_reply_errors(run_dir):
    manifest = generate.run(run_dir / "chunks", run_dir,
                            GenerateConfig(llm=SCRIPTED, batch_size=3, multihop=0.0))
    balances = manifest.balances
    llm_chunks, queries = balances["llm_chunks"], balances["queries"]
    assert (llm_chunks.n_in, llm_chunks.n_out, llm_chunks.skipped) == (11, 10,
                                                                       {"no_usable_reply": 1})
    # 11 chunks x 3 kinds asked; the garbage chunk's 3 fail after every attempt
    assert (balances["llm_queries"].n_in, balances["llm_queries"].n_out,
            balances["llm_queries"].skipped) == (33, 30, {"reply_not_json": 3})
    assert manifest.extra["llm_usage"]["queries"]["rounds"] == 3  # bounded re-asks
    assert manifest.extra["llm_usage"]["queries"]["requests"] == 11 + 2
    table = read_table(run_dir / "queries", QUERIES)
    assert table.num_rows == queries.n_out
    kinds = table.column("kind").to_pylist()
    assert kinds.count("title") == 11  # one-word titles ("Statins") are kept
    assert {"keyword", "question", "claim"} <= set(kinds)
    skipped = pq.read_table(run_dir / "queries" / "skipped.parquet").to_pylist()
    reasons = [s["reason"] for s in skipped]
    assert reasons.count("reply_not_json") == 3
    assert sum(queries.skipped.values()) == len(reasons) - 3
    assert {s["item"] for s in skipped if s["reason"] == "reply_not_json"} == {
        "q:bad#0 [keyword]", "q:bad#0 [question]", "q:bad#0 [claim]"}
    per_kind = manifest.extra["per_kind"]
    assert per_kind["keyword"]["asked"] == 11 and per_kind["keyword"]["reply_failures"] == {
        "not_json": 1}
    for counts in per_kind.values():  # every candidate is kept or dropped for a reason
        assert counts["candidates"] == counts["kept"] + sum(counts["dropped"].values())


def test_mine_then_verify(run_dir):
    generate.run(run_dir / "chunks", run_dir, GenerateConfig(llm=SCRIPTED, kinds=["keyword"]))
    n_queries = read_table(run_dir / "queries", QUERIES).num_rows
    mined = mine.run(run_dir / "queries", run_dir / "chunks", run_dir,
                     MineConfig(num_negatives=2, top_k=10))
    assert mined.balances["queries"].n_in == mined.balances["queries"].n_out == n_queries
    rows = read_table(run_dir / "candidates", CANDIDATES).to_pylist()
    aspirin = next(r for r in rows if r["query"] == "Aspirin and the heart")
    assert aspirin["chunk_id"] == "d1#0"
    assert "d1#0" not in aspirin["candidate_chunk_ids"]
    assert aspirin["candidate_chunk_ids"][0] == "d5#0"  # the other aspirin passage
    assert all(s <= 0.95 * aspirin["positive_score"] for s in aspirin["candidate_scores"])
    statins = next(r for r in rows if r["query"] == "Statins")
    assert statins["candidate_chunk_ids"] == []  # no other passage shares its only term
    with_candidates = sum(1 for r in rows if r["candidate_chunk_ids"])
    assert with_candidates >= 2

    verified = verify.run(run_dir / "candidates", run_dir / "chunks", run_dir,
                          VerifyConfig(llm=SCRIPTED, max_queries=2))
    triples = read_table(run_dir / "triples", TRIPLES).to_pylist()
    checked = [r for r in triples if r["positive_llm_score"] is not None]
    assert len({r["query"] for r in checked}) == 2 == verified.extra["verified_queries"]
    for row in checked:
        for score, verdict in zip(row["candidate_llm_scores"], row["candidate_verdicts"]):
            assert verdict == ("false_negative" if score >= row["positive_llm_score"] else "kept")
    unchecked = [r for r in triples if r["positive_llm_score"] is None]
    assert all(set(r["candidate_verdicts"]) <= {"unverified"} for r in unchecked)
    balance = verified.balances["candidates"]
    assert balance.n_in == mined.extra["candidates"]
    assert balance.n_out == sum(len(r["negative_chunk_ids"]) for r in triples)
    assert balance.n_in == balance.n_out + balance.skipped.get("false_negative", 0)


    judged = verify.run(run_dir / "candidates", run_dir / "chunks", run_dir / "judged",
                        VerifyConfig(llm=SCRIPTED, method="judge_yes_no"))
    assert judged.extra["method"] == "judge_yes_no"
    judged_rows = read_table(run_dir / "judged" / "triples", TRIPLES).to_pylist()
    scores = [s for r in judged_rows for s in r["candidate_llm_scores"] if s is not None]
    assert scores and all(0.0 <= s <= 1.0 for s in scores)


def test_verification_that_scores_nothing_fails_and_writes_nothing(run_dir):
    """An endpoint that is down (or a model it does not serve) fails every pair: that is one
    clear error, not a finished stage that verified nothing and would be reused on a rerun."""
    from conftest import free_port

    generate.run(run_dir / "chunks", run_dir, GenerateConfig(llm=SCRIPTED, kinds=["keyword"]))
    mine.run(run_dir / "queries", run_dir / "chunks", run_dir, MineConfig(top_k=10))
    down = LLMConfig(backend="openai", base_url=f"http://127.0.0.1:{free_port()}/v1",
                     model="m", max_retries=0, timeout_s=5)
    with pytest.raises(ValueError, match=r"verify: the LLM could score none of the \d+ "
                                         r"candidates .*first error: .*Connection"):
        verify.run(run_dir / "candidates", run_dir / "chunks", run_dir,
                   VerifyConfig(llm=down, max_queries=2))
    assert not (run_dir / "triples").exists()


@pytest.mark.parametrize("backend", ["pyserini", "hybrid"])
def test_mining_backends_share_one_index_per_run(run_dir, backend):
    generate.run(run_dir / "chunks", run_dir, GenerateConfig(llm=SCRIPTED, kinds=["keyword"]))
    config = MineConfig(backend=backend, num_negatives=2, top_k=10, num_workers=2,
                        batch_size=4)
    mined = mine.run(run_dir / "queries", run_dir / "chunks", run_dir, config)
    folder = index_dir(run_dir, config)
    built = Manifest.read(folder).finished_at
    rows = read_table(run_dir / "candidates", CANDIDATES).to_pylist()
    aspirin = next(r for r in rows if r["query"] == "Aspirin and the heart")
    assert "d1#0" not in aspirin["candidate_chunk_ids"]
    if backend == "pyserini":  # Lucene ranks like bm25s: the other aspirin passage first
        assert aspirin["candidate_chunk_ids"][0] == "d5#0"
    assert any(r["candidate_scores"] for r in rows)  # the margin check below is not vacuous
    assert all(s <= 0.95 * r["positive_score"] for r in rows for s in r["candidate_scores"])
    assert mined.balances["queries"].n_in == mined.balances["queries"].n_out
    # new selection rules re-mine but reuse the index built for these chunks
    again = mine.run(run_dir / "queries", run_dir / "chunks", run_dir,
                     config.model_copy(update={"num_negatives": 1}))
    assert Manifest.read(folder).finished_at == built
    assert again.extra["candidates"] <= mined.extra["candidates"]


def test_a_stage_run_on_the_wrong_folder_names_the_missing_columns(run_dir):
    with pytest.raises(SchemaError, match="missing columns"):
        mine.run(run_dir / "chunks", run_dir / "chunks", run_dir, MineConfig())


def test_local_cluster_workers_are_not_deprioritised(ray_cluster):
    import os

    import ray

    @ray.remote
    def niceness() -> int:
        return os.nice(0)

    # Ray's own default is 15; the cluster customir starts runs its workers at RayConfig's 0
    assert ray.get(niceness.remote()) == 0


def _map_in_thread(table, udf, marker, restarts, wait_s=180):
    """map_table in a daemon thread, so a worker restarted without end fails the test (after
    ``wait_s``) instead of hanging the session."""
    import threading

    from customir.runtime import map_table

    outcome: dict = {}

    def target():
        try:
            outcome["table"] = map_table(table, udf, constructor_kwargs={"marker": str(marker)},
                                         batch_size=2, restarts=restarts)
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(wait_s)
    assert not thread.is_alive(), f"map_table still running after {wait_s} s"
    return outcome


def test_a_worker_that_dies_on_every_batch_stops_the_stage_with_one_message(ray_cluster,
                                                                           tmp_path):
    import os

    import pyarrow as pa

    from customir.runtime import WorkerCrashed

    class Segfaulting:  # defined here: cloudpickle ships it to the workers by value
        def __init__(self, marker):
            self.marker = marker

        def __call__(self, batch):
            with open(self.marker, "a") as fh:
                fh.write(f"{os.getpid()}\n")
            os._exit(139)  # how llama.cpp's crash on AMX looked from outside

    marker = tmp_path / "deaths"
    outcome = _map_in_thread(pa.table({"x": list(range(6))}), Segfaulting, marker, restarts=1)
    error = outcome.get("error")
    assert isinstance(error, WorkerCrashed), outcome
    deaths = marker.read_text().split()
    last = deaths[-1]
    assert str(error).startswith("Segfaulting: its worker process kept dying (restarted 1 time)")
    assert f"the last was pid {last} on " in str(error) and f"worker-*-{last}.err" in str(error)
    # the first process and its one restart died (a further batch may have reached a third)
    assert 2 <= len(set(deaths)) <= 3, deaths


def test_a_worker_that_dies_once_is_restarted_and_no_row_is_lost(ray_cluster, tmp_path):
    import os

    import pyarrow as pa

    class DiesOnce:
        def __init__(self, marker):
            self.marker = marker

        def __call__(self, batch):
            if not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(139)
            return batch.append_column("pid", pa.array([os.getpid()] * batch.num_rows))

    marker = tmp_path / "died"
    outcome = _map_in_thread(pa.table({"x": list(range(6))}), DiesOnce, marker, restarts=1)
    assert "error" not in outcome, outcome
    assert marker.exists()  # it did die once
    assert sorted(outcome["table"]["x"].to_pylist()) == list(range(6))


def test_an_llm_that_crashes_its_worker_on_every_prompt_is_a_one_line_cli_error(tmp_path,
                                                                               fixture_corpus):
    import subprocess
    import sys

    with open(fixture_corpus / "passages.jsonl", "a") as fh:
        fh.write(json.dumps({"_id": "boom", "title": "Crash",
                             "text": "[[crash]] this passage kills the scripted LLM's process."})
                 + "\n")
    ingest.run(fixture_corpus, tmp_path / "run", IngestConfig(min_chunk_tokens=3))
    out = subprocess.run(
        [sys.executable, "-m", "customir.cli", "generate", str(tmp_path / "run" / "chunks"),
         "--out", str(tmp_path / "run"), "--set", "generate.llm.backend=scripted",
         "--set", "generate.llm.worker_restarts=1", "--set", "generate.multihop=0",
         "--set", "ray.num_cpus=2"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("customir: error: ChatAnswerer: its worker process kept dying "
                           "(restarted 1 time). The stage stopped."), out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]  # Ray's is in its log file only
    assert not (tmp_path / "run" / "queries" / "_manifest.json").exists()
