"""Which files of a corpus folder ingest reads: a stable walk and its filters, each file left
out becoming a :class:`Skip` with a reason.

Ingest reads the files this walk yields, and its resume fingerprint covers those same files
(:func:`customir.corpus.readers.corpus_fingerprint`), so touching a file ingest never reads
(``.DS_Store``, ``.git/``, an editor's swap file) does not rerun the pipeline. Standard library
only: cheap to import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterator


@dataclass
class Skip:
    item: str
    reason: str
    detail: str | None = None


class SkipFile(Exception):
    """Raised by a reader: the whole file becomes a Skip with this reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def printable_name(rel: str) -> str:
    r"""``rel`` as text any writer accepts: the bytes of a name that is not UTF-8 (which
    ``os.walk`` hands over as lone surrogates) written as ``\xNN``.

    >>> printable_name(os.fsdecode(b"caf\xe9.txt"))
    'caf\\xe9.txt'
    """
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def corpus_entries(root: Path, suffixes: Collection[str]) -> Iterator[tuple[Path, str] | Skip]:
    """(path, relative name) of each file below ``root`` a reader for one of ``suffixes``
    would read, in a stable order; a Skip for every other entry."""
    for path in _walk(root):
        if isinstance(path, Skip):
            yield path
            continue
        rel = path.relative_to(root).as_posix()
        if problem := _not_a_document(path, rel, root, suffixes):
            yield problem
        else:
            yield path, rel


def _not_a_document(path: Path, rel: str, root: Path, suffixes: Collection[str]) -> Skip | None:
    if printable_name(rel) != rel:  # the name is not UTF-8: no column or id can hold it
        return Skip(printable_name(rel), "undecodable_file_name",
                    "the file name is not UTF-8; rename the file to have it read")
    if any(part.startswith(".") for part in path.relative_to(root).parts):
        return Skip(rel, "hidden_file")
    if path.is_symlink() and (problem := _link_problem(path, rel, root)):
        return problem
    if not path.is_file():
        return Skip(rel, "not_a_regular_file", "a socket, device or pipe")
    if path.suffix.lower() not in suffixes:
        return Skip(rel, "unsupported_format", f"extension {path.suffix or '(none)'!r}; "
                    f"supported: {', '.join(suffixes)}")
    return None


def _walk(root: Path) -> Iterator[Path | Skip]:
    """Every entry below ``root`` in a stable order, without following directory links (so a
    symlink loop cannot recurse); a folder that cannot be listed is a Skip, not a silent gap."""
    unlistable: list[OSError] = []
    walker = os.walk(root, followlinks=False, onerror=unlistable.append)
    for folder, dirs, files in walker:
        while unlistable:
            yield _unlistable(unlistable.pop(0), root)
        dirs.sort()
        here = Path(folder)
        links = [d for d in dirs if (here / d).is_symlink()]
        dirs[:] = [d for d in dirs if d not in links]
        yield from (here / name for name in sorted(files + links))
    while unlistable:
        yield _unlistable(unlistable.pop(0), root)


def _unlistable(error: OSError, root: Path) -> Skip:
    folder = Path(error.filename) if error.filename else root
    rel = folder.relative_to(root).as_posix() if folder.is_relative_to(root) else str(folder)
    return Skip(printable_name(rel), "unreadable_folder", error.strerror or str(error))


def _link_problem(path: Path, rel: str, root: Path) -> Skip | None:
    """Why a symlink cannot be read as a document (None for a link to a file inside the root)."""
    try:
        target = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        return Skip(rel, "broken_symlink", "the link's target does not exist (or loops)")
    if not target.is_relative_to(root.resolve()):
        return Skip(rel, "outside_corpus", "symlink to a path outside the corpus folder")
    if target.is_dir():
        return Skip(rel, "symlinked_directory", "directory links are not followed (no loops)")
    return None
