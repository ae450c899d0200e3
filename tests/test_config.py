from pathlib import Path

import pytest

from customir.config import ConfigError, LLMBackend, load_config


def test_yaml_paths_resolve_against_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("corpus: docs\nrun_dir: out\ngenerate:\n  max_llm_chunks: 5\n")
    cfg = load_config(path)
    assert cfg.corpus == str(tmp_path / "docs")
    assert cfg.run_dir == str(tmp_path / "out")
    assert cfg.generate.max_llm_chunks == 5
    assert cfg.generate.llm.backend == LLMBackend.llamacpp


def test_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(None, ["train.epochs=2.5", "generate.llm.backend=scripted",
                             "mine.stemmer=null"])
    assert cfg.train.epochs == 2.5
    assert cfg.generate.llm.backend == LLMBackend.scripted
    assert cfg.mine.stemmer is None


def test_config_hash_changes_with_settings():
    a, b = load_config(), load_config(None, ["mine.top_k=5"])
    assert a.mine.config_hash() != b.mine.config_hash()
    assert a.train.config_hash() == b.train.config_hash()


def test_how_often_training_may_fail_is_not_part_of_its_hash():
    """``train.max_failures`` changes how the stage runs, not what it writes: changing it must
    neither rerun a finished stage nor orphan its checkpoints (one folder per settings hash)."""
    a = load_config()
    b = load_config(None, ["train.max_failures=0"])
    c = load_config(None, ["train.max_steps=7"])
    assert b.train.max_failures == 0 != a.train.max_failures
    assert a.train.config_hash() == b.train.config_hash() != c.train.config_hash()


@pytest.mark.parametrize("text, message", [
    ("corpus: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("mine:\n  top_kk: 3\n", "top_kk"),
    ("train:\n  epochs: many\n", "epochs"),
    ("train:\n  max_failures: -1\n", "max_failures"),
])
def test_bad_config_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_bad_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.epochs"])


@pytest.mark.parametrize("override, message", [
    ("train.epochs=[", "not valid YAML"),
    ("evaluate=5", "evaluate"),
    ("evaluate.beir=5", "beir"),
    ("evaluate.beir=[5]", "beir"),
    ("evaluate.beir=[{queries: q.jsonl}]", "qrels"),
])
def test_bad_override_values_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_overrides_resolve_against_the_current_folder_and_the_file_against_its_own(
        tmp_path, monkeypatch):
    folder, elsewhere = tmp_path / "configs", tmp_path / "work"
    folder.mkdir()
    elsewhere.mkdir()
    path = folder / "c.yaml"
    path.write_text("corpus: docs\nevaluate:\n  beir:\n    - {queries: q.jsonl, qrels: q.tsv}\n")
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(path, ["run_dir=out", "work_dir=~/mirror"])
    assert cfg.corpus == str(folder / "docs")
    assert cfg.evaluate.beir[0].queries == str(folder / "q.jsonl")
    assert cfg.run_dir == str(elsewhere / "out")
    assert cfg.work_dir == str(tmp_path / "home" / "mirror")
    cfg = load_config(path, ["corpus=./mine", "evaluate.beir=[{queries: ~/q, qrels: t/q.tsv}]"])
    assert cfg.corpus == str(elsewhere / "mine")
    assert cfg.evaluate.beir[0].queries == str(tmp_path / "home" / "q")
    assert cfg.evaluate.beir[0].qrels == str(elsewhere / "t" / "q.tsv")


def test_a_model_path_in_the_file_resolves_against_its_folder_and_names_stay_names(
        tmp_path, monkeypatch):
    folder, elsewhere = tmp_path / "configs", tmp_path / "work"
    (folder / "models" / "mine").mkdir(parents=True)
    (folder / "llm.gguf").write_bytes(b"GGUF")
    elsewhere.mkdir()
    path = folder / "c.yaml"
    path.write_text("train: {base_model: models/mine}\nmine: {dense_model: ./models/mine}\n"
                    "generate: {llm: {model: llm.gguf}, dedup_model: all-MiniLM-L6-v2}\n"
                    "verify: {llm: {backend: openai, model: Qwen/Qwen2.5-7B-Instruct}}\n")
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path)
    assert cfg.train.base_model == cfg.mine.dense_model == str(folder / "models" / "mine")
    assert cfg.generate.llm.model == str(folder / "llm.gguf")
    # a packaged model's name and an endpoint's model name are not paths
    assert cfg.generate.dedup_model == "all-MiniLM-L6-v2"
    assert cfg.verify.llm.model == "Qwen/Qwen2.5-7B-Instruct"
    # an override names a path from the current folder; one that is nowhere is left as given
    (elsewhere / "other").mkdir()
    cfg = load_config(path, ["train.base_model=other", "mine.dense_model=missing/model"])
    assert cfg.train.base_model == str(elsewhere / "other")
    assert cfg.mine.dense_model == "missing/model"


def test_an_unknown_stage_is_one_clear_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "run.yaml"
    config.write_text(f"corpus: {tmp_path}\nrun_dir: {tmp_path / 'run'}\n")
    for command in (["-m", "customir.cli", "run", str(config), "--only", "nosuch"],
                    ["jobs/stage.py", "nosuch", str(config)]):
        out = subprocess.run([sys.executable, *command], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent.parent, timeout=120)
        assert out.returncode == 2, out.stderr
        # one line naming the valid stages, no traceback
        assert out.stderr.count("\n") == 1 and "ingest" in out.stderr and "export" in out.stderr
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()
