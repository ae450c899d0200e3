"""SIGKILL during generate, mine and export, then a rerun: the same rows as an uninterrupted run
(none duplicated, none missing), and a killed run's partial folder is never read as complete.
(The train stage's kill test is in test_training.py.)

Each killed run is the `customir` CLI in a subprocess with its own process group and its own
local Ray cluster. SIGKILL to the group ends the driver, GCS and raylet at once; Ray's workers
(each in a group of its own) must then exit by themselves: no process of the run survives.
To kill the Ray stages mid-way on purpose, the driver below slows their Ray Data UDF down (a
subclass, shipped to the actors by value) and drops a marker file after each batch; to kill one
at a chosen step of publishing, it SIGKILLs its own process group from inside ``stage_output``.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import pyarrow.parquet as pq
import pytest

from customir.config import ExportConfig, GenerateConfig, IngestConfig, LLMConfig, MineConfig
from customir.corpus import ingest
from customir.export import onnx
from customir.manifest import MANIFEST, Manifest, find_complete, fingerprint
from customir.models import resolve_base_model
from customir.negatives import mine
from customir.negatives.index import index_dir
from customir.queries import generate
from customir.schemas import (CANDIDATES, DATA_DIR, QUERIES, SKIPPED_FILE, SchemaError,
                              read_table)

from conftest import PASSAGES

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# multi-hop queries give several rows each; the scripted LLM's are near-duplicates by cosine
GENERATE = GenerateConfig(llm=LLMConfig(backend="scripted"), multihop=0.5, dedup_cosine=None,
                          batch_size=2)
MINE = MineConfig(top_k=10, batch_size=4)
MINE_BEFORE = MineConfig(top_k=10, batch_size=4, num_negatives=1)  # an older, finished output
EXPORT = ExportConfig(parity_samples=8)
SLOW_BATCH_S = 1.5

DRIVER = '''
"""Run `customir ARGS...`, optionally slowed down or killed at a chosen step (see the test)."""
import os, signal, sys, time
from pathlib import Path

import customir.manifest
from customir import cli


def slow_batches(module, name, marks):
    """Replace the Ray Data UDF ``module.name`` by one that marks and sleeps after each batch."""
    udf = getattr(module, name)

    class SlowBatches(udf):
        def __call__(self, batch):
            out = super().__call__(batch)
            (marks / f"{os.getpid()}-{time.monotonic_ns()}").touch()
            time.sleep(float(os.environ["SLOW_BATCH_S"]))
            return out

    setattr(module, name, SlowBatches)


def die():
    os.killpg(os.getpgrp(), signal.SIGKILL)


if os.environ.get("SLOW_UDF"):  # "module:Class"
    import importlib

    module, name = os.environ["SLOW_UDF"].split(":")
    slow_batches(importlib.import_module(module), name, Path(os.environ["MARKS"]))
# KILL_AT: "manifest:STAGE" or "swap:FOLDER"
kill_at, _, where = os.environ.get("KILL_AT", "").partition(":")
if kill_at == "manifest":  # every data file written, the manifest not yet
    to_json = customir.manifest.Manifest.to_json

    def to_json_then_die(self):
        if self.stage == where:
            die()
        return to_json(self)

    customir.manifest.Manifest.to_json = to_json_then_die
elif kill_at == "swap":  # the old output moved aside, the new one not yet in its place
    rename = Path.rename

    def rename_then_die(self, target):
        result = rename(self, target)
        if Path(target).name.startswith(f".{where}.old-"):
            die()
        return result

    Path.rename = rename_then_die
sys.exit(cli.main(sys.argv[1:]))
'''


# ---- helpers -------------------------------------------------------------------------------

class Process(NamedTuple):
    parent: int
    group: int
    session: int
    state: str
    started: str  # clock ticks after boot: tells a reused pid apart


def _processes() -> dict[int, Process]:
    """Every process on the machine, from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(entry.name)] = Process(int(fields[1]), int(fields[2]), int(fields[3]), fields[0],
                                       fields[19])
    return out


def _descendants(root: int) -> dict[int, str]:
    """root and every process below it: pid → start time."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, proc in procs.items():
        children.setdefault(proc.parent, []).append(pid)
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            found[pid] = procs[pid].started
            todo += children.get(pid, [])
    return found


def _wait_until_none(which, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while left := [pid for pid, proc in _processes().items() if proc.state != "Z"
                   and which(pid, proc)]:
        if time.monotonic() > deadline:
            names = {}
            for pid in left:
                with contextlib.suppress(OSError):
                    names[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()[:100]
            pytest.fail(f"{what} still running {timeout} s after the kill: {names}")
        time.sleep(0.2)


class KilledRun:
    """`customir ARGS` in a subprocess of its own session and process group, with its own
    local Ray cluster (RAY_ADDRESS empty), stderr to a file (a pipe nobody reads would fill)."""

    def __init__(self, tmp_path: Path, driver: Path, args: list[str], **env: str):
        self.log = tmp_path / "killed-run.log"
        self.marks = tmp_path / "marks"
        self.marks.mkdir()
        env = {**os.environ, "RAY_ADDRESS": "", "MARKS": str(self.marks),
               "SLOW_BATCH_S": str(SLOW_BATCH_S), **env}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([sys.executable, str(driver), *args], env=env,
                                            start_new_session=True, stdout=log, stderr=log)
        self.seen: dict[int, str] = {}  # pid → start time of every process it started
        self.names: dict[int, str] = {}  # pid → command line

    def stderr(self) -> str:
        return self.log.read_text()[-3000:]

    def wait_for(self, ready, what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None, f"ended before {what}:\n{self.stderr()}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{self.stderr()}"
            self._snapshot()
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the process group: the driver and the Ray cluster it started (GCS, raylet,
        agents) die with it at once."""
        self._snapshot()
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._group_is_gone()

    def wait_for_death(self, timeout: float = 240) -> None:
        """For a run that SIGKILLs its own process group."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            assert time.monotonic() < deadline, f"still running after {timeout} s"
            self._snapshot()
            time.sleep(0.05)
        assert self.process.returncode == -signal.SIGKILL, self.stderr()
        self._group_is_gone()

    def _snapshot(self) -> None:
        # the driver's descendants and its process group: Ray's daemons can be reparented away
        # from the driver, but they stay in its group (the SIGKILL of the group reaches them)
        group = {pid: proc.started for pid, proc in _processes().items()
                 if proc.group == self.process.pid}
        for pid, started in {**group, **_descendants(self.process.pid)}.items():
            # read again each time: a process caught between fork and exec still shows its
            # parent's command line (a raylet once looked like the Python driver that way)
            with contextlib.suppress(OSError):
                self.names[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()[:200].decode(
                    errors="replace")
            self.seen[pid] = started

    def saw(self, program: str) -> bool:
        return any(program in name for name in self.names.values())

    def _group_is_gone(self) -> None:
        _wait_until_none(lambda pid, proc: proc.group == self.process.pid,
                         "its process group (driver, GCS, raylet)", 10)

    def nothing_left(self, timeout: float = 90) -> None:
        """Ray starts each worker in a process group of its own, so the group kill misses
        them; they must exit by themselves once the raylet is gone (measured: within ~25 s on
        2 busy cores, a worker still importing Ray being the last)."""
        _wait_until_none(lambda pid, proc: proc.session == self.process.pid
                         or self.seen.get(pid) == proc.started,
                         "a process the killed run had started", timeout)


def _rows(folder: Path, schema, key: str) -> list[dict]:
    """The stage's rows sorted by ``key``, which must be unique (no row written twice)."""
    rows = read_table(folder, schema).to_pylist()
    keys = [r[key] for r in rows]
    assert len(keys) == len(set(keys)), "duplicate rows"
    return sorted(rows, key=lambda r: r[key])


def _skips(folder: Path) -> list[dict]:
    return sorted(pq.read_table(folder / SKIPPED_FILE).to_pylist(),
                  key=lambda r: json.dumps(r, sort_keys=True))


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "seconds"}
    return value


def _same_manifest(folder: Path, reference: Path) -> None:
    got, want = Manifest.read(folder), Manifest.read(reference)
    assert (got.stage, got.config_hash, got.inputs) == (want.stage, want.config_hash, want.inputs)
    assert {k: asdict(b) for k, b in got.balances.items()} == \
        {k: asdict(b) for k, b in want.balances.items()}
    assert _without_timings(got.extra) == _without_timings(want.extra)


def _link(run: Path, reference: Path, *names: str) -> None:
    run.mkdir(parents=True, exist_ok=True)
    for name in names:
        (run / name).symlink_to(reference / name)


def _leftovers(run: Path, folder: str) -> list[str]:
    return sorted(p.name.split("-")[0] for p in run.glob(f".{folder}.*"))


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory, ray_cluster) -> Path:
    """ingest → generate → mine → export, uninterrupted, in this process."""
    root = tmp_path_factory.mktemp("reference")
    (root / "corpus").mkdir()
    with open(root / "corpus" / "passages.jsonl", "w") as fh:
        for doc_id, (title, text) in PASSAGES.items():
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    run = root / "run"
    ingest.run(root / "corpus", run, IngestConfig(min_chunk_tokens=3))
    generate.run(run / "chunks", run, GENERATE)
    mine.run(run / "queries", run / "chunks", run, MINE)
    onnx.run(resolve_base_model("all-MiniLM-L6-v2"), run / "chunks", run, EXPORT)
    return run


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> tuple[Path, Path]:
    """The driver script and a config file holding the stages' settings."""
    root = tmp_path_factory.mktemp("driver")
    (root / "driver.py").write_text(DRIVER)
    (root / "config.yaml").write_text(json.dumps({  # JSON is YAML
        "generate": GENERATE.model_dump(mode="json"), "mine": MINE.model_dump(mode="json"),
        "export": EXPORT.model_dump(mode="json"), "ray": {"num_cpus": 2}}))
    return root / "driver.py", root / "config.yaml"


# ---- generate ------------------------------------------------------------------------------

def test_generate_killed_while_the_llm_answers_reruns_to_the_same_queries(reference, driver,
                                                                          tmp_path):
    script, config = driver
    run = tmp_path / "run"
    _link(run, reference, "chunks")
    requests = Manifest.read(reference / "queries").extra["llm_usage"]["queries"]["requests"]
    killed = KilledRun(tmp_path, script, ["generate", str(run / "chunks"), "--out", str(run),
                                          "--config", str(config)],
                       SLOW_UDF="customir.llm.batch:ChatAnswerer")
    killed.wait_for(lambda: any(killed.marks.iterdir()), "LLM batch answered")
    killed.kill()
    assert killed.saw("raylet") and killed.saw("gcs_server")  # its own Ray cluster, now dead
    assert 0 < len(list(killed.marks.iterdir())) < requests / GENERATE.batch_size  # mid-way
    assert not (run / "queries").exists()
    assert _leftovers(run, "queries") == []  # it had not begun to write
    # the index finished before: the rerun reuses it
    assert (index_dir(run, MineConfig(backend=GENERATE.related_by)) / MANIFEST).is_file()
    inputs = {"chunks": fingerprint(run / "chunks")}
    assert find_complete(run / "queries", GENERATE.config_hash(), inputs) is None
    with pytest.raises(SchemaError, match="does not exist"):
        read_table(run / "queries", QUERIES)

    manifest = generate.run(run / "chunks", run, GENERATE)
    rows = _rows(run / "queries", QUERIES, "query_id")
    assert rows == _rows(reference / "queries", QUERIES, "query_id")
    assert _skips(run / "queries") == _skips(reference / "queries")
    assert json.loads((run / "queries" / "profile.json").read_text()) == \
        json.loads((reference / "queries" / "profile.json").read_text())
    _same_manifest(run / "queries", reference / "queries")
    # the counts add up to the rows: one per supporting chunk of each kept query
    kinds = {r["kind"] for r in rows}
    assert {"title", "question", "multihop"} <= kinds, kinds
    assert manifest.extra["rows"] == len(rows)
    firsts = [r for r in rows if r["chunk_id"] == r["supporting_chunk_ids"][0]]
    assert manifest.balances["queries"].n_out == len(firsts)
    assert len(rows) == sum(len(r["supporting_chunk_ids"]) for r in firsts)
    skipped = sum(sum(b.skipped.values()) for name, b in manifest.balances.items()
                  if name in ("queries", "llm_queries"))
    assert len(_skips(run / "queries")) == skipped
    killed.nothing_left()


# ---- mine ----------------------------------------------------------------------------------

def _mine_run_with_an_older_output(reference: Path, tmp_path: Path) -> tuple[Path, list[dict]]:
    """A run folder whose candidates/ is a finished output of other settings."""
    run = tmp_path / "run"
    _link(run, reference, "chunks", "queries")
    mine.run(run / "queries", run / "chunks", run, MINE_BEFORE)
    return run, _rows(run / "candidates", CANDIDATES, "query_id")


def _assert_mined_like_the_reference(run: Path, reference: Path) -> None:
    manifest = mine.run(run / "queries", run / "chunks", run, MINE)
    rows = _rows(run / "candidates", CANDIDATES, "query_id")
    assert rows == _rows(reference / "candidates", CANDIDATES, "query_id")
    assert _skips(run / "candidates") == _skips(reference / "candidates")
    _same_manifest(run / "candidates", reference / "candidates")
    balance = manifest.balances["queries"]
    assert balance.n_in == read_table(run / "queries", QUERIES).num_rows
    assert balance.n_out == len(rows) and sum(len(r["candidate_chunk_ids"]) for r in rows) > 0
    assert sum(balance.skipped.values()) == len(_skips(run / "candidates"))
    assert manifest.extra["candidates"] == sum(len(r["candidate_chunk_ids"]) for r in rows)


def test_mine_killed_between_batches_reruns_to_the_same_candidates(reference, driver,
                                                                   tmp_path):
    script, config = driver
    run, before = _mine_run_with_an_older_output(reference, tmp_path)
    killed = KilledRun(tmp_path, script, ["mine", str(run / "queries"), "--chunks",
                                          str(run / "chunks"), "--out", str(run),
                                          "--config", str(config)],
                       SLOW_UDF="customir.negatives.mine:CandidateMiner")
    killed.wait_for(lambda: any(killed.marks.iterdir()), "mined batch")
    killed.kill()
    assert killed.saw("raylet") and killed.saw("gcs_server")
    batches = -(-read_table(run / "queries", QUERIES).num_rows // MINE.batch_size)
    assert 0 < len(list(killed.marks.iterdir())) < batches  # mid-way
    # the older output is still the published one, whole; it does not pass for the new settings
    assert Manifest.read(run / "candidates").config_hash == MINE_BEFORE.config_hash()
    assert _rows(run / "candidates", CANDIDATES, "query_id") == before
    inputs = {"queries": fingerprint(run / "queries"), "chunks": fingerprint(run / "chunks")}
    assert find_complete(run / "candidates", MINE.config_hash(), inputs) is None
    assert _leftovers(run, "candidates") == []

    _assert_mined_like_the_reference(run, reference)
    killed.nothing_left()


@pytest.mark.parametrize("step", ["manifest", "swap"])
def test_a_run_killed_while_publishing_leaves_nothing_that_passes_for_done(reference, driver,
                                                                           tmp_path, step):
    """Killed after the data files but before the manifest, or between moving the old output
    aside and moving the new one in: the temporary folders are never read as the output."""
    script, config = driver
    run, before = _mine_run_with_an_older_output(reference, tmp_path)
    killed = KilledRun(tmp_path, script, ["mine", str(run / "queries"), "--chunks",
                                          str(run / "chunks"), "--out", str(run),
                                          "--config", str(config)],
                       KILL_AT=f"{step}:{'mine' if step == 'manifest' else 'candidates'}")
    killed.wait_for_death()
    # it ran on a Ray cluster of its own (its log says so; the raylet is not always among the
    # processes the polling caught here: CI missed it twice, on 2026-11-30)
    assert "starting a local Ray cluster" in killed.log.read_text()
    inputs = {"queries": fingerprint(run / "queries"), "chunks": fingerprint(run / "chunks")}
    assert find_complete(run / "candidates", MINE.config_hash(), inputs) is None
    (partial,) = run.glob(".candidates.tmp-*")
    assert (partial / DATA_DIR / "part-0.parquet").is_file()  # the new rows were written ...
    if step == "manifest":
        assert not (partial / MANIFEST).exists()
        assert _leftovers(run, "candidates") == [".candidates.tmp"]
        # ... but the published output is still the older one, whole
        assert Manifest.read(run / "candidates").config_hash == MINE_BEFORE.config_hash()
        assert _rows(run / "candidates", CANDIDATES, "query_id") == before
    else:
        assert (partial / MANIFEST).is_file()  # ... complete, yet not in place: not used
        assert _leftovers(run, "candidates") == [".candidates.old", ".candidates.tmp"]
        assert not (run / "candidates").exists()
        with pytest.raises(SchemaError, match="does not exist"):
            read_table(run / "candidates", CANDIDATES)
        from customir.config import VerifyConfig
        from customir.negatives import verify

        with pytest.raises(SchemaError, match="does not exist"):  # the next stage
            verify.run(run / "candidates", run / "chunks", run, VerifyConfig(enabled=False))
    _assert_mined_like_the_reference(run, reference)
    assert _leftovers(run, "candidates") == []  # publishing cleared what the kill left
    killed.nothing_left()


# ---- export --------------------------------------------------------------------------------

def _export_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != MANIFEST}


def test_export_killed_while_writing_the_model_reruns_to_the_same_files(reference, driver,
                                                                        tmp_path):
    from customir.config import EncoderBackend
    from customir.serve.app import resolve_model_dir

    script, config = driver
    run = tmp_path / "run"
    _link(run, reference, "chunks")
    model = resolve_base_model("all-MiniLM-L6-v2")
    killed = KilledRun(tmp_path, script, ["export", str(model), "--chunks", str(run / "chunks"),
                                          "--out", str(run), "--config", str(config)])
    killed.wait_for(lambda: any(run.glob(".export.tmp-*/model.onnx")), "model.onnx written")
    killed.kill()
    (partial,) = run.glob(".export.tmp-*")
    assert not (partial / MANIFEST).exists() and not (run / "export").exists()
    inputs = {"model": fingerprint(model), "chunks": fingerprint(run / "chunks")}
    assert find_complete(run / "export", EXPORT.config_hash(), inputs) is None
    with pytest.raises(FileNotFoundError):  # the server does not pick the partial folder up
        resolve_model_dir(run, EncoderBackend.onnx)

    manifest = onnx.run(model, run / "chunks", run, EXPORT)
    files = _export_files(run / "export")
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json"} <= set(files)
    assert files == _export_files(reference / "export")  # byte for byte
    _same_manifest(run / "export", reference / "export")
    assert manifest.balances["parity_texts"].n_out == EXPORT.parity_samples + 2
    assert resolve_model_dir(run, EncoderBackend.onnx) == run / "export"
    assert not partial.exists()  # the killed run's 120 MB folder went when the rerun published
    killed.nothing_left()
