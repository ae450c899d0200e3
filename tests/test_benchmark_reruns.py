"""Benchmarks rerun on a kept folder: what was reused is said, never timed as work done."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from customir.manifest import MANIFEST, Manifest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import mining  # noqa: E402


def test_generation_refuses_an_output_folder_in_use(tmp_path):
    (tmp_path / "out" / "corpus").mkdir(parents=True)
    done = subprocess.run([sys.executable, str(BENCHMARKS / "generation.py"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(
        f"--out {tmp_path / 'out'} is not empty; give a new or empty folder")


def _finish(folder: Path, when: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(Manifest("ingest", "h", {}, {}, finished_at=when).to_json())


def test_a_phase_that_found_its_output_finished_is_reported_as_reused(tmp_path):
    phases = mining.Phases()
    _finish(tmp_path / "chunks", "earlier")
    with phases.phase("ingest", tmp_path / "chunks"):
        pass  # the stage found its output up to date
    with phases.phase("index", tmp_path / "index"):
        _finish(tmp_path / "index", "now")  # built now
    _finish(tmp_path / "candidates", "earlier")
    with phases.phase("mine", tmp_path / "candidates"):
        _finish(tmp_path / "candidates", "now")  # ran again over an old output
    assert phases.reused == ["ingest"]
    assert set(phases.seconds) == {"ingest_s", "index_s", "mine_s"}
    rows = phases.table().splitlines()
    assert rows[1].split()[::2] == ["ingest_s", "reused"] and rows[2].endswith("ran")


def test_a_kept_corpus_of_another_size_is_refused(tmp_path):
    phases = mining.Phases()
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "part-000.jsonl").write_text('{"_id": "s0", "text": "x"}\n')
    (tmp_path / "corpus_documents.txt").write_text("3000\n")
    assert mining.scale_corpus(tmp_path, 3000, phases) == tmp_path / "corpus"
    assert phases.reused == ["generate_corpus"]
    with pytest.raises(SystemExit, match=r"holds 3000 documents, not --scale-chunks 500"):
        mining.scale_corpus(tmp_path, 500, phases)
