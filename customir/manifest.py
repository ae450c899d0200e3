"""Per-stage ``_manifest.json``: what a stage read, with which settings, and what it counted.

Every stage writes into a temporary sibling folder and renames it into place only when all of its
files (the manifest last) are written, so a crash never leaves a half-written output that looks
finished. A rerun skips a stage whose manifest matches the stage's config hash and the
fingerprints of its inputs (see :func:`find_complete`).

Counts are kept as *balances*: for each unit a stage handles (documents, chunks, queries,
candidates) ``in == out + skipped`` must hold, or the stage fails instead of losing rows silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator

MANIFEST = "_manifest.json"
_TRACKED_PACKAGES = (
    "customir", "pyarrow", "ray", "torch", "transformers", "sentence-transformers", "bm25s",
    "llama_cpp_python", "onnx", "onnxruntime", "pytrec-eval-terrier",
)


class BalanceError(RuntimeError):
    """Rows in a stage do not add up: something was lost without being counted."""


@dataclass
class Balance:
    """``n_in`` items entered; each one is either ``n_out`` or skipped for a counted reason."""

    n_in: int
    n_out: int
    skipped: dict[str, int] = field(default_factory=dict)

    def check(self, unit: str) -> None:
        n_skipped = sum(self.skipped.values())
        if self.n_in != self.n_out + n_skipped:
            raise BalanceError(
                f"{unit}: {self.n_in} in != {self.n_out} out + {n_skipped} skipped {self.skipped}"
            )


@dataclass
class Manifest:
    stage: str
    config_hash: str
    inputs: dict[str, str]
    balances: dict[str, Balance]
    extra: dict = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    finished_at: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def read(cls, folder: str | Path) -> "Manifest":
        data = json.loads((Path(folder) / MANIFEST).read_text())
        data["balances"] = {k: Balance(**v) for k, v in data["balances"].items()}
        return cls(**data)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def fingerprint(path: str | Path) -> str:
    """Identify an input: a stage folder by its manifest; a file or folder inside one (the model
    under ``train/``) by that manifest and its place in it; anything else by names, sizes,
    mtimes. Copies of a stage folder (pulled from a run folder on object storage, with new
    mtimes) are then the same input on every machine. (A corpus is not a stage's output: ingest
    uses :func:`listing_fingerprint` of the files it reads.)"""
    path = Path(path).absolute()
    for stage_dir in (path, *path.parents):
        if (stage_dir / MANIFEST).is_file():
            digest = hashlib.sha256((stage_dir / MANIFEST).read_bytes())
            if stage_dir != path:
                digest.update(b"\n" + os.fsencode(path.relative_to(stage_dir).as_posix()))
            return digest.hexdigest()[:16]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return listing_fingerprint(path, files)


def listing_fingerprint(root: Path, files: Iterable[Path]) -> str:
    """Identify ``files`` (``root`` itself, or files below it) by names, sizes and mtimes. A
    name that is not UTF-8 is hashed as its bytes; a file gone since it was listed is left out.
    """
    digest = hashlib.sha256()
    for f in files:
        try:
            stat = f.stat()
        except FileNotFoundError:
            continue
        name = f.relative_to(root).as_posix() if f != root else f.name
        digest.update(os.fsencode(name) + f":{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def find_complete(out_dir: str | Path, config_hash: str, inputs: dict[str, str]) -> Manifest | None:
    """The manifest of a finished output made with these settings from these inputs, else None."""
    out_dir = Path(out_dir)
    if not (out_dir / MANIFEST).is_file():
        return None
    try:
        manifest = Manifest.read(out_dir)
    except (ValueError, TypeError, KeyError):
        return None
    if manifest.config_hash == config_hash and manifest.inputs == inputs:
        return manifest
    return None


@contextlib.contextmanager
def stage_output(out_dir: str | Path, stage: str, config_hash: str, inputs: dict[str, str],
                 started: float | None = None) -> Iterator[tuple[Path, Manifest]]:
    """Yield a temporary folder and a manifest to fill; publish both atomically on success.
    ``started`` (``time.monotonic()`` when the stage began) makes ``manifest.seconds`` the
    stage's whole wall time, not only the time spent writing.

    Usage::

        with stage_output(run / "chunks", "ingest", cfg.config_hash(), inputs) as (tmp, manifest):
            write_rows(tmp, table, skips)  # customir.schemas: data/*.parquet, skipped.parquet
            manifest.balances["documents"] = Balance(n_in, n_out, skipped)
    """
    out_dir = Path(out_dir)
    tmp = temp_sibling(out_dir)
    manifest = Manifest(stage=stage, config_hash=config_hash, inputs=inputs, balances={})
    started = time.monotonic() if started is None else started
    try:
        yield tmp, manifest
        for unit, balance in manifest.balances.items():
            balance.check(f"{stage}/{unit}")
        manifest.versions = package_versions()
        manifest.seconds = round(time.monotonic() - started, 2)
        manifest.finished_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (tmp / MANIFEST).write_text(manifest.to_json())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, out_dir)


def temp_sibling(out_dir: Path) -> Path:
    """A fresh folder next to ``out_dir`` to write its next version into (see replace_folder)."""
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def replace_folder(tmp: Path, out_dir: Path) -> None:
    """Put the finished ``tmp`` (from temp_sibling) in the place of ``out_dir`` by renames, so a
    reader sees the old folder or the new one, never a mix."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    # what killed runs of this stage left (never read: no manifest was published with them)
    for pattern in (f".{out_dir.name}.tmp-*", f".{out_dir.name}.old-*"):
        for leftover in out_dir.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def log(message: str) -> None:
    """Stage progress goes to stderr, so stdout stays for results (tables, JSON)."""
    print(f"[customir] {message}", file=sys.stderr, flush=True)
