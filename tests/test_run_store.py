"""A run folder on object storage, against a real S3 API (moto's server on 127.0.0.1): push and
pull of stage folders, the manifest-last protocol when a push dies midway, the pipeline on an
s3:// run_dir resuming from the bucket alone in a fresh work folder, and the one-line error for
a run_dir that cannot be used."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from customir import storage
from customir.config import ConfigError, load_config
from customir.manifest import MANIFEST, Manifest, fingerprint, stage_output
from customir.pipeline import STAGE_FOLDERS, STAGES, run_pipeline
from customir.run_store import RunStore

from conftest import free_port, s3_uri

REPO = Path(__file__).resolve().parent.parent


def write_stage_folder(run: Path, version: str, extra_file: str | None = None) -> dict[str, bytes]:
    """A finished ``chunks`` folder (a parquet file, a nested file, the manifest) whose contents
    depend on ``version``; returns {relative path: bytes}."""
    with stage_output(run / "chunks", "ingest", f"hash-{version}", {}) as (tmp, _):
        pq.write_table(pa.table({"chunk_id": [f"{version}#0", f"{version}#1"],
                                 "text": ["aspirin", "heart"]}), tmp / "chunks.parquet")
        (tmp / "model").mkdir()
        (tmp / "model" / "config.json").write_text(json.dumps({"version": version}))
        if extra_file:
            (tmp / extra_file).write_text(version)
    return folder_bytes(run / "chunks")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def remote_bytes(location: str) -> dict[str, bytes]:
    fs, root = storage.resolve(location)
    out = {}
    for relative in storage.list_files(location):
        with fs.open_input_stream(f"{root}/{relative}") as stream:
            out[relative] = stream.read()
    return out


@pytest.fixture
def count_uploads(monkeypatch):
    """Count the files RunStore uploads (the real upload still happens)."""
    uploads = []
    real = RunStore._upload

    def counting(self, local_file, remote_path):
        uploads.append(remote_path)
        real(self, local_file, remote_path)

    monkeypatch.setattr(RunStore, "_upload", counting)
    return uploads


def test_push_then_pull_round_trips_a_stage_folder_byte_for_byte(s3_bucket, tmp_path):
    writer = RunStore(s3_bucket, tmp_path / "writer")
    written = write_stage_folder(writer.local, "v1")
    assert writer.push("chunks") == len(written) == 3
    assert remote_bytes(storage.join(s3_bucket, "chunks")) == written
    fs, root = storage.resolve(s3_bucket)  # the parquet reads back from S3 itself
    assert pq.read_table(f"{root}/chunks/chunks.parquet", filesystem=fs).num_rows == 2

    reader = RunStore(s3_bucket, tmp_path / "reader")
    assert reader.pull("chunks")
    assert folder_bytes(reader.local / "chunks") == written
    assert not reader.pull("chunks")  # the same manifest: nothing to download
    assert not list(reader.local.glob(".chunks.*"))  # no temp folder left behind


def test_a_pulled_stage_folder_is_the_same_input_as_the_pushed_one(s3_bucket, tmp_path):
    """Its files have new mtimes, yet the next stage's resume check must see the same input —
    also for a folder inside it (export reads train/model)."""
    writer, reader = RunStore(s3_bucket, tmp_path / "w"), RunStore(s3_bucket, tmp_path / "r")
    write_stage_folder(writer.local, "v1")
    writer.push("chunks")
    reader.pull("chunks")
    pushed, pulled = (s.local / "chunks" / "model" / "config.json" for s in (writer, reader))
    assert pushed.stat().st_mtime_ns != pulled.stat().st_mtime_ns
    for inside in ("", "model", "model/config.json"):
        assert (fingerprint(writer.local / "chunks" / inside)
                == fingerprint(reader.local / "chunks" / inside)), inside
    assert fingerprint(reader.local / "chunks" / "model") != fingerprint(reader.local / "chunks")


def test_pushing_an_unchanged_folder_uploads_nothing(s3_bucket, tmp_path, count_uploads):
    assert storage.list_files(s3_bucket) == {}  # an empty bucket: the first push uploads
    store = RunStore(s3_bucket, tmp_path / "work")
    write_stage_folder(store.local, "v1")
    store.push("chunks")
    assert len(count_uploads) == 2  # the manifest is written separately, last
    assert store.push("chunks") == 0
    assert len(count_uploads) == 2


def test_a_push_that_dies_midway_leaves_an_unfinished_folder_the_next_push_completes(
        s3_bucket, tmp_path, monkeypatch):
    writer = RunStore(s3_bucket, tmp_path / "writer")
    write_stage_folder(writer.local, "v1", extra_file="only-in-v1.txt")
    writer.push("chunks")
    reader = RunStore(s3_bucket, tmp_path / "reader")
    reader.pull("chunks")
    v2 = write_stage_folder(writer.local, "v2")

    real, calls = RunStore._upload, []

    def dies_on_the_second_file(self, local_file, remote_path):
        calls.append(remote_path)
        if len(calls) == 2:
            raise ConnectionError("network gone")
        real(self, local_file, remote_path)

    monkeypatch.setattr(RunStore, "_upload", dies_on_the_second_file)
    with pytest.raises(ConnectionError):
        writer.push("chunks")
    remote = storage.list_files(storage.join(s3_bucket, "chunks"))
    assert MANIFEST not in remote and "only-in-v1.txt" not in remote  # deleted before uploads
    # nobody takes the half-updated folder for finished: a reader keeps its finished copy,
    # a fresh one gets nothing
    assert not reader.pull("chunks")
    assert Manifest.read(reader.local / "chunks").config_hash == "hash-v1"
    fresh = RunStore(s3_bucket, tmp_path / "fresh")
    assert not fresh.pull("chunks") and not (fresh.local / "chunks").exists()

    monkeypatch.setattr(RunStore, "_upload", real)
    assert writer.push("chunks") == 3
    assert remote_bytes(storage.join(s3_bucket, "chunks")) == v2
    assert reader.pull("chunks")
    assert folder_bytes(reader.local / "chunks") == v2


def test_pull_replaces_a_stale_local_copy(s3_bucket, tmp_path):
    writer, reader = RunStore(s3_bucket, tmp_path / "w"), RunStore(s3_bucket, tmp_path / "r")
    write_stage_folder(writer.local, "v1", extra_file="only-in-v1.txt")
    writer.push("chunks")
    reader.pull("chunks")
    v2 = write_stage_folder(writer.local, "v2")
    writer.push("chunks")
    assert reader.pull("chunks")
    assert folder_bytes(reader.local / "chunks") == v2  # only-in-v1.txt is gone too
    assert not list(reader.local.glob(".chunks.*"))


def test_a_local_run_dir_is_its_own_mirror_and_never_syncs(tmp_path, count_uploads):
    for run_dir in (tmp_path / "run", f"file://{tmp_path / 'run'}"):
        store = RunStore(run_dir, tmp_path / "unused")
        assert store.local == tmp_path / "run" and not store.remote
        write_stage_folder(store.local, "v1")
        store.check()
        assert store.push("chunks") == 0 and not store.pull("chunks")
    assert count_uploads == [] and not (tmp_path / "unused").exists()


def test_a_remote_run_dir_has_a_default_work_dir_per_uri(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.delenv("CUSTOMIR_CACHE", raising=False)
    a, b = RunStore(s3_bucket), RunStore(storage.join(s3_bucket, "other"))
    assert a.local.parent == Path("~/.cache/customir/runs").expanduser()
    assert a.local != b.local and a.local == RunStore(s3_bucket).local
    monkeypatch.setenv("CUSTOMIR_CACHE", str(tmp_path / "cache"))  # the machine's cache folder
    assert RunStore(s3_bucket).local == tmp_path / "cache" / "runs" / a.local.name


def test_uris_in_a_config_file_are_not_taken_for_relative_paths(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("corpus: gs://b/docs\nrun_dir: s3://b/run?scheme=http\nwork_dir: mirror\n")
    cfg = load_config(path)
    assert (cfg.corpus, cfg.run_dir) == ("gs://b/docs", "s3://b/run?scheme=http")
    assert cfg.work_dir == str(tmp_path / "mirror")


def test_serve_pulls_the_export_folder_of_a_remote_run(s3_bucket, tmp_path):
    from customir.cli import _local_model

    writer = RunStore(s3_bucket, tmp_path / "w")
    with stage_output(writer.local / "export", "export", "h", {}) as (tmp, _):
        (tmp / "customir_onnx.json").write_text("{}")
    writer.push("export")
    served = _local_model(s3_bucket, str(tmp_path / "mirror"))
    assert served == tmp_path / "mirror" / "export"
    assert (served / "customir_onnx.json").read_text() == "{}"
    with pytest.raises(FileNotFoundError, match=r"has no finished export/"):
        _local_model(storage.join(s3_bucket, "empty"), str(tmp_path / "m2"))


@pytest.mark.ray
def test_the_pipeline_on_an_s3_run_dir_resumes_from_the_bucket_alone(
        s3_bucket, fixture_corpus, tmp_path, ray_cluster, capsys):
    fs, root = storage.resolve(s3_bucket)
    pafs.copy_files(str(fixture_corpus), f"{root}/corpus", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    run_dir, corpus = storage.join(s3_bucket, "run"), storage.join(s3_bucket, "corpus")
    overrides = [f"corpus={corpus}", f"run_dir={run_dir}", "ingest.min_chunk_tokens=3",
                 "generate.llm.backend=scripted", "generate.multihop=0.0",
                 "mine.num_negatives=2"]
    stages = STAGES[:STAGES.index("mine") + 1]
    folders = [STAGE_FOLDERS[s] for s in stages]

    first = load_config(None, [*overrides, f"work_dir={tmp_path / 'first'}"])
    run_pipeline(first, serve_check=False, until="mine")
    remote = {f: remote_bytes(storage.join(run_dir, f)) for f in folders}
    for folder in folders:  # every finished stage is in the bucket, the same as the mirror
        assert remote[folder] == folder_bytes(tmp_path / "first" / folder)
        parquet = [name for name in remote[folder] if name.endswith(".parquet")]
        assert MANIFEST in remote[folder] and parquet, folder
        for name in parquet:  # and reads back from S3 itself, with the mirror's rows
            rows = pq.read_table(f"{root}/run/{folder}/{name}", filesystem=fs).num_rows
            assert rows == pq.read_table(tmp_path / "first" / folder / name).num_rows, name
    assert pq.read_table(f"{root}/run/chunks/data/part-0.parquet",
                         filesystem=fs).num_rows == 10
    assert storage.list_dirs(run_dir) == sorted(folders)  # indexes/ stays local
    assert (tmp_path / "first" / "indexes").is_dir()
    capsys.readouterr()

    second = load_config(None, [*overrides, f"work_dir={tmp_path / 'second'}"])
    run_pipeline(second, serve_check=False, until="mine")
    log = capsys.readouterr().err
    for stage in stages:
        assert f"{stage}: up to date" in log, log
    assert {f: remote_bytes(storage.join(run_dir, f)) for f in folders} == remote
    for folder in folders:  # pulled, not redone: the same manifests, finished_at included
        assert (folder_bytes(tmp_path / "second" / folder)[MANIFEST]
                == remote[folder][MANIFEST])
    assert not (tmp_path / "second" / "indexes").exists()  # mining built no index


@pytest.mark.parametrize("case", ["unknown scheme", "no endpoint", "no bucket"])
def test_an_unusable_run_dir_is_one_clear_line_and_exit_2(s3_endpoint, tmp_path, case):
    run_dir = {"unknown scheme": "nosuchfs://bucket/run",
               "no endpoint": s3_uri(f"127.0.0.1:{free_port()}", "customir/run"),
               "no bucket": s3_uri(s3_endpoint, "nosuchbucket/run")}[case]
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"corpus": str(tmp_path), "run_dir": run_dir,
                                  "work_dir": str(tmp_path / "work")}))
    for command in (["-m", "customir.cli", "run", str(config)],
                    ["jobs/stage.py", "ingest", str(config)],
                    ["-m", "customir.cli", "serve", run_dir, "--config", str(config)]):
        out = subprocess.run([sys.executable, *command], capture_output=True, text=True,
                             cwd=REPO, timeout=120)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith(f"customir: error: run_dir {run_dir!r} is not a usable "
                                     "location: ")
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        if case == "no bucket":
            assert "bucket 'nosuchbucket' does not exist" in out.stderr
    assert not (tmp_path / "work").exists()  # failed before any work


@pytest.mark.parametrize("run_dir", ["foo://bucket/run", "abfs://c@acct.dfs.core.windows.net/run"])
def test_an_unusable_run_dir_uri_is_one_config_error(run_dir):
    """pyarrow refuses locations with ValueError, OSError or (a failed Azure login, no network
    here) its bare ArrowException: each is the same one-line error, before any stage runs."""
    with pytest.raises(ConfigError, match=f"run_dir {run_dir!r} is not a usable location: "):
        RunStore(run_dir).check()
