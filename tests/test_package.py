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
