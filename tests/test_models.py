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
