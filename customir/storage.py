"""Local paths and cloud URIs behind one small API, on pyarrow filesystems.

A location is either a local path or a URI that ``pyarrow.fs.FileSystem.from_uri`` understands:
``s3://bucket/prefix``, ``gs://bucket/prefix``, ``hdfs://…``, ``file:///…``. S3 options ride in
the query string (``s3://bucket/p?endpoint_override=host:9000&scheme=http&region=us-east-1``, for
MinIO or any S3-compatible store); credentials come from the environment (``AWS_*``, the
instance role, ``GOOGLE_APPLICATION_CREDENTIALS``), never from the config.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit


def is_uri(location: str | Path) -> bool:
    """
    >>> is_uri("s3://bucket/x"), is_uri("/tmp/x"), is_uri(Path("runs"))
    (True, False, False)
    """
    return "://" in str(location)


def local_path(location: str | Path) -> Path | None:
    """The local folder a location names (a path or a ``file://`` URI); None for object storage.

    >>> local_path("file:///runs/x"), local_path("runs/x"), local_path("s3://b/x")
    (PosixPath('/runs/x'), PosixPath('runs/x'), None)
    """
    if not is_uri(location):
        return Path(location)
    split = urlsplit(str(location))
    return Path(unquote(split.path)) if split.scheme == "file" else None


def join(location: str | Path, *parts: str) -> str:
    """Append path parts, keeping a URI's query string (its filesystem options) at the end.

    >>> join("s3://b/ckpt?scheme=http", "abc", "train")
    's3://b/ckpt/abc/train?scheme=http'
    >>> join("/runs/x", "abc")
    '/runs/x/abc'
    """
    if not is_uri(location):
        return str(Path(location, *parts))
    split = urlsplit(str(location))
    path = "/".join([split.path.rstrip("/"), *(p.strip("/") for p in parts)])
    return urlunsplit((split.scheme, split.netloc, path, split.query, split.fragment))


def resolve(location: str | Path):
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    return pafs.FileSystem.from_uri(str(location))


def list_dirs(location: str | Path) -> list[str]:
    """Names of the folders directly under ``location`` (none if it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def exists(location: str | Path) -> bool:
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(location: str | Path) -> str:
    fs, path = resolve(location)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")


def list_files(location: str | Path) -> dict[str, tuple[int, int | None]]:
    """{path relative to ``location``: (size, mtime in ns)} for every file under it, at any
    depth (empty if it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    root = path.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return {i.path[len(root):]: (i.size, i.mtime_ns) for i in infos
            if i.type == pafs.FileType.File}


def download(location: str | Path, local_dir: str | Path) -> Path:
    """Copy a folder to a local one (a local folder is returned as it is, not copied). Each copy
    keeps its source's modification time, so a fingerprint of the copy (names, sizes, mtimes)
    is the same whichever machine downloaded it."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return Path(location)
    fs, path = resolve(location)
    files = list_files(location)
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local_dir), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    for relative, (_, mtime_ns) in files.items():
        if mtime_ns is not None:
            os.utime(Path(local_dir, relative), ns=(mtime_ns, mtime_ns))
    return Path(local_dir)


def delete_dir(location: str | Path) -> None:
    """Remove a folder and everything in it; a missing folder is fine."""
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def location_errors() -> tuple[type[BaseException], ...]:
    """What pyarrow raises for a location it cannot use: ArrowInvalid (a ValueError), IO errors
    (OSError) and, e.g. for a failed Azure login, its bare ArrowException."""
    from pyarrow.lib import ArrowException

    return ValueError, OSError, ArrowException


def cache_home() -> Path:
    """customir's per-machine cache folder: ``$CUSTOMIR_CACHE``, else ``~/.cache/customir``."""
    return Path(os.environ.get("CUSTOMIR_CACHE") or Path.home() / ".cache" / "customir")
