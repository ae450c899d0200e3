from pathlib import Path

import pytest

from customir.config import ConfigError, LLMBackend, ServeConfig, load_config


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


@pytest.mark.parametrize("section, runs_differently, writes_differently", [
    ("train", ["train.max_failures=0", "train.cpus_per_worker=1"], "train.max_steps=7"),
    ("generate", ["generate.num_workers=3", "generate.batch_size=16", "generate.llm.qps=2",
                  "generate.llm.concurrency=2", "generate.llm.timeout_s=9",
                  "generate.llm.n_threads=1", "generate.llm.worker_restarts=0"],
     "generate.llm.max_tokens=50"),
    ("verify", ["verify.batch_size=2", "verify.llm.max_retries=0", "verify.llm.worker_restarts=-1"],
     "verify.llm.model=x"),
    ("mine", ["mine.num_workers=4", "mine.batch_size=8", "mine.threads=1",
              "mine.worker_restarts=9"], "mine.top_k=9"),
    ("evaluate", ["evaluate.batch_size=8"], "evaluate.k_values=[10]"),
])
def test_settings_of_how_a_stage_runs_are_not_part_of_its_hash(section, runs_differently,
                                                                writes_differently):
    """Workers, batch sizes, threads, retries change how a stage runs, not what it writes:
    changing one must neither rerun a finished stage (and everything after it) nor orphan
    training checkpoints (one folder per settings hash)."""
    def digest(overrides):
        return getattr(load_config(None, overrides), section).config_hash()

    assert digest(runs_differently) == digest([]) != digest([writes_differently])


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


def test_a_yaml_or_encoding_error_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("corpus: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value) and "line 2" in str(info.value)
    path.write_bytes(b"corpus: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not UTF-8 text \(byte 11"):
        load_config(path)


def test_where_the_beir_files_lie_is_not_part_of_the_evaluate_hash(tmp_path):
    """Their contents are the stage's inputs; a moved checkout must not rerun evaluate."""
    hashes = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "c.yaml").write_text(
            "evaluate:\n  beir: [{queries: q.jsonl, qrels: t.tsv, name: set}]\n")
        config = load_config(tmp_path / folder / "c.yaml")
        assert config.evaluate.beir[0].queries == str(tmp_path / folder / "q.jsonl")
        hashes.append(config.evaluate.config_hash())
    renamed = load_config(tmp_path / "a" / "c.yaml", ["evaluate.k_values=[1,10]"])
    assert hashes[0] == hashes[1] != renamed.evaluate.config_hash()


def test_bad_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.epochs"])


@pytest.mark.parametrize("override, message", [
    ("train.epochs=[", "not valid YAML"),
    ("evaluate=5", "evaluate"),
    ("evaluate.beir=5", "beir"),
    ("evaluate.beir=[5]", "beir"),
    ("evaluate.beir=[{queries: q.jsonl}]", "qrels"),
    # serving limits that would make every request fail (a zero batch: 500s behind a green
    # /health; a negative body limit: 413s)
    ("serve.max_batch_size=0", "serve.max_batch_size"),
    ("serve.max_input_items=0", "serve.max_input_items"),
    ("serve.max_body_bytes=-1", "serve.max_body_bytes"),
    ("serve.port=99999999", "serve.port"),
    ("serve.min_replicas=3", "min_replicas .3. is above max_replicas"),
    # -1 would send every chunk but one to the LLM
    ("generate.max_llm_chunks=-1", "max_llm_chunks"),
    ("generate.profile_sample=-1", "profile_sample"),
    # found by black-box runs: 0 hung ingest at 100 % CPU; the others failed deep in a stage
    # with a traceback, or ran and silently wrote less
    ("ingest.chunk_tokens=0", "ingest.chunk_tokens"),
    ("ingest.chunk_tokens=4", "chunk_tokens .4. is below min_chunk_tokens .8."),
    ("ingest.max_file_mb=-1", "ingest.max_file_mb"),
    ("train.epochs=0", "train.epochs"),
    ("train.learning_rate=-1", "train.learning_rate"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.split=[0.5, 0.6, 0.1]", "sum to 1 .they sum to 1.2."),
    ("train.split=[0, 0.5, 0.5]", "train > 0"),
    ("mine.num_negatives=-2", "mine.num_negatives"),
    ("mine.top_k=0", "mine.top_k"),
    ("generate.min_query_words=50", "min_query_words .50. is above max_query_words"),
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


def test_run_only_one_stage_refuses_serve():
    """`run --only STAGE --serve` used to run the stage and silently not serve."""
    from customir.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["run", "x.yaml", "--only", "export", "--serve"])
    assert exit_.value.code == 2
    assert parser.parse_args(["run", "x.yaml", "--only", "export"]).only == "export"
    assert parser.parse_args(["run", "x.yaml", "--serve"]).serve


@pytest.mark.parametrize("override, message", [
    ("generate.llm.max_retries=-1", "generate.llm.max_retries: Input should be greater than or "
     "equal to 0"),
    ("generate.llm.timeout_s=0", "generate.llm.timeout_s: Input should be greater than 0"),
    ("verify.llm.timeout_s=-5", "verify.llm.timeout_s: Input should be greater than 0"),
    ("generate.llm.max_tokens=0", "generate.llm.max_tokens: Input should be greater than or "
     "equal to 1"),
    ("generate.llm.temperature=-1", "generate.llm.temperature: Input should be greater than or "
     "equal to 0"),
    ("verify.llm.n_ctx=0", "verify.llm.n_ctx: Input should be greater than or equal to 1"),
    ("generate.llm.n_threads=0", "generate.llm.n_threads: Input should be greater than or "
     "equal to 1"),
    ("generate.llm.worker_restarts=-2", "generate.llm.worker_restarts: Input should be greater "
     "than or equal to -1"),
])
def test_llm_settings_out_of_range_are_a_config_error_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_an_api_key_given_as_the_variable_name_is_refused_without_echoing_it():
    with pytest.raises(ConfigError, match="generate.llm.api_key_env: must name an environment "
                       "variable") as error:
        load_config(None, ["generate.llm.api_key_env=sk-live-abc123"])
    assert "abc123" not in str(error.value)
    assert load_config(None, ["generate.llm.api_key_env=MY_KEY_2"]).generate.llm.api_key_env == \
        "MY_KEY_2"
    # a section-level check (here min above max) must not print the section with the key
    with pytest.raises(ConfigError, match="min_query_words .50. is above") as error:
        load_config(None, ["generate.llm.api_key_env=gsk_8fQ2xLmN0pastedSecret",
                           "generate.min_query_words=50"])
    assert "pastedSecret" not in str(error.value)
    with pytest.raises(ConfigError, match="serve.api_key_env: must name") as error:
        load_config(None, ["serve.api_key_env=sk-live-abc123"])
    assert "abc123" not in str(error.value)


def test_an_unset_serve_key_variable_is_named_only_when_it_looks_like_one(monkeypatch):
    from customir.serve.lifecycle import api_key

    monkeypatch.delenv("CUSTOMIR_TEST_UNSET_KEY", raising=False)
    with pytest.raises(ValueError, match="serve.api_key_env: CUSTOMIR_TEST_UNSET_KEY is not set"):
        api_key(ServeConfig(api_key_env="CUSTOMIR_TEST_UNSET_KEY"))
    monkeypatch.delenv("hf_pastedKey123", raising=False)
    with pytest.raises(ValueError) as error:
        api_key(ServeConfig(api_key_env="hf_pastedKey123"))
    assert "pastedKey" not in str(error.value)
    monkeypatch.setenv("CUSTOMIR_TEST_SET_KEY", "s3cret")
    assert api_key(ServeConfig(api_key_env="CUSTOMIR_TEST_SET_KEY")) == "s3cret"
