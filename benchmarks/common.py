"""What every benchmark script sets up first: the repository on sys.path, an offline and
token-auth-free local environment, the SciFact data folder and a stderr logger; and the small
helpers several scripts share."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = ROOT.parent / "shared" / "data" / "beir" / "scifact"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def logger(name: str):
    """A function printing ``[name] message`` to stderr (stdout keeps the table and JSON)."""

    def say(message: str) -> None:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)

    return say


def scratch_dir(prefix: str) -> Path:
    """A new temporary folder, removed when the script exits (normally or by an exception): the
    benchmarks write models, exports and indexes of ~100 MB each into theirs."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def finished_at(folder: Path) -> str | None:
    """When the stage output in ``folder`` was finished (its manifest), None if it is not: the
    same value before and after a call means the call reused it instead of running."""
    from customir.manifest import Manifest

    try:
        return Manifest.read(folder).finished_at
    except (OSError, ValueError, KeyError, TypeError):
        return None
