"""The package surface: importing customir stays light, and the CLI answers --help."""

import subprocess
import sys

import pytest

import customir

HEAVY = ("torch", "ray", "llama_cpp", "onnxruntime", "vllm", "deepspeed", "tensorrt",
         "transformers", "sentence_transformers")


def test_import_pulls_in_no_heavy_library():
    code = ("import sys, customir, customir.cli, customir.config, customir.schemas; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_surface():
    assert sorted(customir.__all__) == ["PipelineConfig", "__version__", "load_config",
                                        "run_pipeline"]
    assert customir.__version__ == "0.1.0"


@pytest.mark.parametrize("command", ["", "run", "ingest", "generate", "mine", "verify", "train",
                                     "evaluate", "export", "serve"])
def test_every_command_has_help(command):
    args = [sys.executable, "-m", "customir.cli"] + ([command] if command else []) + ["--help"]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage: customir" in out.stdout


def test_missing_config_is_a_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "customir.cli", "run", str(tmp_path / "no.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == f"customir: error: config file not found: {tmp_path / 'no.yaml'}"


def test_missing_corpus_folder_is_a_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "customir.cli", "ingest", str(tmp_path / "none"),
                          "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert out.returncode == 2
    assert "corpus folder not found" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_file_for_a_folder_and_a_folder_for_a_file_are_named_as_such(tmp_path):
    (tmp_path / "doc.md").write_text("# Title\n\ntext\n")
    out = subprocess.run([sys.executable, "-m", "customir.cli", "ingest", str(tmp_path / "doc.md"),
                          "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"customir: error: corpus {tmp_path / 'doc.md'} is a file, not "
                                  "a folder: give the folder that holds it")
    out = subprocess.run([sys.executable, "-m", "customir.cli", "run", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().startswith(f"customir: error: {tmp_path} is a folder, not a YAML "
                                         "config file")


def test_a_stage_runs_alone_from_the_cli_and_prints_its_counts(tmp_path, fixture_corpus):
    import json

    out = subprocess.run([sys.executable, "-m", "customir.cli", "ingest", str(fixture_corpus),
                          "--out", str(tmp_path / "run"), "--set", "ingest.min_chunk_tokens=3"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["stage"] == "ingest"
    assert summary["counts"]["documents"] == {"in": 10, "out": 10, "skipped": {}}
    assert (tmp_path / "run" / "chunks" / "_manifest.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["ingest", "{docs}", "--out", "s3://bucket/run"], "stage commands take local folders"),
    (["train", "s3://b/t", "--chunks", "{empty}", "--out", "{tmp}/run"], "train triples s3://"),
    (["mine", "{empty}", "--chunks", "s3://b/c", "--out", "{tmp}/run"], "mine --chunks s3://"),
    (["mine", "{empty}", "--chunks", "{empty}", "--out", "{tmp}/run"], "not a stage folder"),
    (["ingest", "{docs}", "--out", "{tmp}/run", "--set", "evaluate.beir=[5]"], "beir"),
    (["ingest", "{docs}", "--out", "{tmp}/run", "--set", "train.epochs=["], "not valid YAML"),
])
def test_wrong_folders_and_values_are_one_line_errors(tmp_path, fixture_corpus, args, message):
    """A URI given to a stage command, a folder that is not a stage's, and a malformed override
    each end in one line and exit 2, having written nothing (no ``s3:`` folder appears)."""
    (tmp_path / "empty").mkdir()
    paths = {"docs": fixture_corpus, "empty": tmp_path / "empty", "tmp": tmp_path}
    before = sorted(p.name for p in tmp_path.iterdir())
    out = subprocess.run([sys.executable, "-m", "customir.cli",
                          *[a.format(**paths) for a in args]],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.startswith("customir: error:") and out.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before
