"""Models load offline from local folders, from safetensors only."""

import shutil

import pytest

from customir.models import load_sentence_transformer, resolve_base_model


def test_base_model_comes_from_its_package():
    model = load_sentence_transformer("all-MiniLM-L6-v2")
    assert model.get_embedding_dimension() == 384


def test_pickled_weights_are_refused(tmp_path):
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(resolve_base_model("all-MiniLM-L6-v2"), pickled)
    weights = load_file(str(pickled / "model.safetensors"))
    (pickled / "model.safetensors").unlink()
    torch.save(weights, pickled / "pytorch_model.bin")  # the same weights, as a pickle
    with pytest.raises(OSError, match="safetensors"):
        load_sentence_transformer(pickled)


def test_unknown_model_is_never_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="models are never downloaded"):
        resolve_base_model("sentence-transformers/all-mpnet-base-v2")
    shutil.rmtree(tmp_path)


def _model_with_code(tmp_path):
    """A copy of MiniLM whose config points AutoModel at Python code shipped in the folder;
    the code leaves a file behind when it runs."""
    import json

    folder = tmp_path / "with-code"
    shutil.copytree(resolve_base_model("all-MiniLM-L6-v2"), folder)
    ran = tmp_path / "code-ran"
    (folder / "modeling_planted.py").write_text(
        "from pathlib import Path\n"
        "from transformers import BertModel\n"
        f"Path({str(ran)!r}).write_text('ran')\n"
        "class PlantedModel(BertModel):\n"
        "    pass\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_planted.PlantedModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, ran


def test_code_shipped_with_a_model_runs_only_when_the_config_allows_it(tmp_path):
    folder, ran = _model_with_code(tmp_path)
    try:
        load_sentence_transformer(folder)
    except ValueError as exc:  # transformers may refuse outright instead of ignoring the code
        assert "trust_remote_code" in str(exc)
    assert not ran.exists()
    model = load_sentence_transformer(folder, trust_remote_code=True)
    assert ran.exists() and type(model[0].auto_model).__name__ == "PlantedModel"


def test_trust_remote_code_is_off_unless_configured():
    from customir.config import PipelineConfig

    assert PipelineConfig().train.trust_remote_code is False


def test_a_model_folder_without_a_usable_tokenizer_is_named(tmp_path):
    from customir.models import load_tokenizer

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json is not a readable tokenizer"):
        load_tokenizer(str(tmp_path))
