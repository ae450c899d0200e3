"""A run folder on object storage (``s3://``, ``gs://``), mirrored in a local work folder.

Stages read and write local files — that is what Ray Data and Ray Train actors open — so a run
whose ``run_dir`` is a URI works in a local mirror (:attr:`RunStore.local`, ``work_dir``) and
moves whole stage folders between the mirror and the bucket:

- :meth:`RunStore.pull` before a stage: a remote folder that is finished (has its
  ``_manifest.json``) and differs from the local copy replaces it — downloaded into a temp
  sibling, then renamed into place, as a stage publishes its own output.
- :meth:`RunStore.push` after it: a finished local folder whose manifest differs from the remote
  one's is uploaded with the *manifest-last protocol*: delete the remote manifest first, delete
  the remote files the local folder no longer has, upload every file, write the manifest last.

Object stores cannot rename a folder atomically, so the manifest is the commit: a remote folder
counts as finished only while its manifest is there. A push that dies midway leaves a folder
without one, which no pull or resume takes for finished, and the next push completes it. The
remote folder is the truth and the mirror a cache: a pull replaces a local copy that differs.
One pipeline writes to a run folder at a time; two concurrent pushes of one folder are not
arbitrated. For a local ``run_dir`` (a path or ``file://``) the mirror is the folder itself and
every sync does nothing.

Usage::

    store = RunStore("s3://bucket/runs/a?endpoint_override=minio:9000&scheme=http")
    store.check()                    # one clear error now rather than after a stage's work
    store.pull("chunks")             # the input, from the bucket (if finished there)
    generate.run(store.local / "chunks", store.local, config)
    store.push("queries")            # the output, to the bucket, manifest last
"""

from __future__ import annotations

import hashlib
import shutil
from functools import cached_property
from pathlib import Path

from customir import storage
from customir.config import ConfigError
from customir.manifest import MANIFEST, log, replace_folder, temp_sibling

CORPUS_MIRROR = "corpus"  # under work_dir: the local copy of a corpus given as a URI


def default_work_dir(run_dir: str) -> Path:
    """One cache folder per run folder URI (under ``$CUSTOMIR_CACHE``, else
    ``~/.cache/customir``), so reruns on this machine reuse their mirror."""
    return storage.cache_home() / "runs" / hashlib.sha256(run_dir.encode()).hexdigest()[:16]


class RunStore:
    """Where the stages of the run in ``run_dir`` read and write (``local``), and the syncs that
    keep a remote ``run_dir`` in step with it."""

    def __init__(self, run_dir: str | Path, work_dir: str | Path | None = None):
        self.run_dir = str(run_dir)
        local = storage.local_path(run_dir)
        self.remote = local is None
        self.work_dir = Path(work_dir or default_work_dir(self.run_dir)).expanduser().absolute()
        self.local = self.work_dir if self.remote else local.absolute()

    def check(self) -> None:
        """Fail before any work, with one line naming ``run_dir``, when it cannot be used: an
        unknown scheme, an endpoint that does not answer, a bucket that does not exist."""
        import pyarrow.fs as pafs

        if not self.remote:
            return
        try:
            fs, root = self._filesystem
            if fs.type_name in ("s3", "gcs"):  # a prefix in a missing bucket looks merely empty
                bucket = root.split("/", 1)[0]
                if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                    raise FileNotFoundError(f"bucket {bucket!r} does not exist")
            else:
                fs.get_file_info(root)  # reaches the store (the folder itself may be new)
        except storage.location_errors() as exc:
            reason = " ".join(str(exc).split())  # pyarrow's messages can span lines
            raise ConfigError(f"run_dir {self.run_dir!r} is not a usable location: "
                              f"{reason}") from None

    def pull(self, folder: str) -> bool:
        """Replace the local copy of the stage folder ``folder`` with the remote one when that
        is finished and differs (by its manifest's bytes); True when it was downloaded."""
        if not self.remote:
            return False
        manifest = self._remote_manifest(folder)
        target = self.local / folder
        if manifest is None or _read_or_none(target / MANIFEST) == manifest:
            return False
        def unchanged(tmp: Path) -> None:
            # a push that started meanwhile deletes the manifest first: then the files are a mix
            if (_read_or_none(tmp / MANIFEST) != manifest
                    or self._remote_manifest(folder) != manifest):
                raise RuntimeError(f"{folder}/ changed on {self.run_dir} while it was pulled; "
                                   "run again once the other writer is done")

        _download_in_place(storage.join(self.run_dir, folder), target, unchanged)
        log(f"pulled {folder}/ from {self.run_dir}")
        return True

    def push(self, folder: str) -> int:
        """Publish the finished local stage folder ``folder`` with the manifest-last protocol
        when its manifest differs from the remote one's; return how many files were uploaded
        (0: nothing to do)."""
        source = self.local / folder
        manifest = _read_or_none(source / MANIFEST)
        if not self.remote or manifest is None or manifest == self._remote_manifest(folder):
            return 0
        fs, root = self._filesystem
        prefix = f"{root}/{folder}"
        remote_files = storage.list_files(storage.join(self.run_dir, folder))
        if MANIFEST in remote_files:  # from here on the remote folder is unfinished
            fs.delete_file(f"{prefix}/{MANIFEST}")
        local_files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*")
                             if p.is_file() and p.name != MANIFEST)
        for stale in set(remote_files) - set(local_files) - {MANIFEST}:
            fs.delete_file(f"{prefix}/{stale}")
        for relative in local_files:
            self._upload(source / relative, f"{prefix}/{relative}")
        with fs.open_output_stream(f"{prefix}/{MANIFEST}") as out:  # the commit
            out.write(manifest)
        log(f"pushed {folder}/ to {self.run_dir} ({len(local_files) + 1} files)")
        return len(local_files) + 1

    def require(self, folder: str) -> Path:
        """The local copy of a finished stage folder, pulled first for a remote run folder."""
        self.pull(folder)
        if not (self.local / folder / MANIFEST).is_file():
            raise FileNotFoundError(f"{self.run_dir} has no finished {folder}/ "
                                    f"(no {folder}/{MANIFEST})")
        return self.local / folder

    def fetch_corpus(self, corpus: str) -> Path:
        """The corpus as a local folder: a path as it is; a URI mirrored into
        ``work_dir/corpus`` (downloaded again only when its listing changed; the copies keep
        the remote mtimes, so ingest's fingerprint of it is stable across machines)."""
        local = storage.local_path(corpus)
        if local is not None:
            return local
        try:
            remote_files = storage.list_files(corpus)
        except storage.location_errors() as exc:
            raise ConfigError(f"corpus {corpus!r} is not a usable location: "
                              f"{' '.join(str(exc).split())}") from None
        if not remote_files:
            raise FileNotFoundError(f"corpus folder not found or empty: {corpus}")
        mirror = self.work_dir / CORPUS_MIRROR
        if storage.list_files(mirror) != remote_files:
            _download_in_place(corpus, mirror)
            log(f"downloaded the corpus from {corpus} ({len(remote_files)} files)")
        return mirror

    @cached_property
    def _filesystem(self):
        """(pyarrow filesystem, path of run_dir inside it), resolved once."""
        fs, root = storage.resolve(self.run_dir)
        return fs, root.rstrip("/")

    def _remote_manifest(self, folder: str) -> bytes | None:
        import pyarrow.fs as pafs

        fs, root = self._filesystem
        path = f"{root}/{folder}/{MANIFEST}"
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        try:
            with fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:  # a push deleted it since
            return None

    def _upload(self, local_file: Path, remote_path: str) -> None:
        fs, _ = self._filesystem
        with open(local_file, "rb") as source, fs.open_output_stream(remote_path) as out:
            shutil.copyfileobj(source, out, 8 << 20)


def _download_in_place(location: str, target: Path, check=None) -> None:
    """Download the folder at ``location`` into a temp sibling of ``target``, run ``check`` on
    it (it raises to refuse the copy), then put it in ``target``'s place by renames."""
    tmp = temp_sibling(target)
    try:
        storage.download(location, tmp)
        if check is not None:
            check(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, target)


def _read_or_none(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None
