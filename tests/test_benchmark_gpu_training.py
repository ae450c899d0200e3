"""benchmarks/gpu_training.py where there is no GPU: a training run stops with one clear line,
and the rankings its GPU side writes score the same as beir.py's own chunk scoring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_stage

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_training.py"
DOCUMENTS = {
    "d1": ("Insulin", "Insulin lowers blood glucose. The pancreas secretes it after meals."),
    "d2": ("Tides", "The moon's gravity raises the tides twice a day on most coasts."),
    "d3": ("Photosynthesis", "Plants turn light, water and carbon dioxide into sugar."),
    "d4": ("Volcanoes", "Magma rises through the crust and erupts as lava and ash."),
}
QUERIES = {"q1": "what does insulin do to blood sugar", "q2": "why are there tides",
           "q3": "how do plants make sugar from light"}


def _beir_and_run(root: Path) -> tuple[Path, Path]:
    from customir.schemas import CHUNKS

    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": d, "title": title, "text": text}) + "\n"
        for d, (title, text) in DOCUMENTS.items()))
    (beir / "queries.jsonl").write_text("".join(
        json.dumps({"_id": q, "text": text}) + "\n" for q, text in QUERIES.items()))
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq2\td2\t1\r\nq3\td3\t1\r\n")
    chunks = []
    for d, (title, text) in DOCUMENTS.items():
        for i, sentence in enumerate(s for s in text.split(". ") if s):
            chunks.append({"chunk_id": f"{d}#{i}", "doc_id": d, "chunk_index": i,
                           "source": "corpus.jsonl", "title": title, "heading": None,
                           "text": sentence, "n_tokens": len(sentence.split())})
    run = root / "run"
    write_stage(run / "chunks", CHUNKS, chunks)
    return beir, run


def test_a_training_run_without_a_gpu_stops_with_one_clear_line(tmp_path):
    beir, run = _beir_and_run(tmp_path)
    (run / "triples").mkdir()
    done = subprocess.run([sys.executable, str(SCRIPT), str(run), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == ("needs a CUDA GPU "
                                                     "(torch.cuda.is_available() is False)")
    assert "Traceback" not in done.stderr
    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nowhere"), "--out",
                              str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "no triples/ stage folder" in missing.stderr


def test_rankings_of_the_gpu_side_score_like_beir_chunk_scoring(tmp_path, monkeypatch):
    from customir.models import resolve_base_model

    beir, run = _beir_and_run(tmp_path)
    # the "CPU-trained" model of the run is the base model itself: every comparison is then
    # between two rankings of one model, made by rank() here and by beir.py's Evaluator
    (run / "train").mkdir()
    (run / "train" / "model").symlink_to(resolve_base_model("all-MiniLM-L6-v2"))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_training

    rankings = gpu_training.rank({"base": "all-MiniLM-L6-v2"}, run, beir, "cpu")
    assert set(rankings["base"]) == set(QUERIES)
    assert all(len(docs) == len(DOCUMENTS) for docs in rankings["base"].values())
    (tmp_path / "rankings.json").write_text(json.dumps(rankings))
    done = subprocess.run([sys.executable, str(SCRIPT), str(run), "--score",
                           str(tmp_path / "rankings.json"), "--rank", str(beir)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["benchmark"] == "gpu-training-score"
    assert set(figures) == {"benchmark", "base", "cpu-base", "cpu-tuned"}
    # the easy queries find their document first with either code path, and both agree
    assert figures["base"]["ndcg10"] == figures["cpu-base"]["ndcg10"] == 1.0
    assert figures["base"]["vs_cpu_tuned"] == {"delta": 0.0, "p_value": 1.0}
    assert lines[0].startswith("| model (chunks, MaxP) |") and len(lines) == 2 + 3 + 1


def test_rankings_of_a_run_from_another_corpus_stop_with_one_line(tmp_path, monkeypatch):
    beir, run = _beir_and_run(tmp_path)
    (beir / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "t", "text": "x"}) + "\n")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_training

    with pytest.raises(SystemExit) as stop:
        gpu_training.rank({"base": "all-MiniLM-L6-v2"}, run, beir, "cpu")
    assert str(stop.value) == ("3 chunked documents are not in corpus.jsonl (e.g. 'd2'): the "
                               "run was made from another corpus")
