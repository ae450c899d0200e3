"""What Ray actors read, on whichever node of the cluster they run.

A stage's driver holds the run folder: a local path, or the local mirror of a ``run_dir`` on
object storage (:mod:`customir.run_store`). The other nodes of a cluster without shared storage
(KubeRay pods without a ReadWriteMany volume) do not see it. So actors get their inputs through
Ray rather than by path:

- tables (chunk ids and texts, a query's positives, training rows) as object references
  (``ray.put``), which any node can ``ray.get``;
- a folder that a library opens by path (the mining index) as a :class:`ShippedFolder`: on the
  driver's node the folder itself; on any other node a copy, packed on the driver's node by a
  zero-CPU task when a node first asks, unpacked once per node under
  ``$CUSTOMIR_CACHE/node-files/<name>-<fingerprint>`` (default ``~/.cache/customir``) and reused
  by every actor there.

The driver's path is not assumed to be shared: a node other than the driver's always uses its
own copy (the price on shared storage is one copy of the folder per node). The tar is built in
memory on the driver's node and travels through the object store, so both must hold one copy of
the folder at a time (as many bytes as the folder holds on disk).

Usage::

    index = ShippedFolder.ship(index_dir(run, config))     # in the driver, Ray started
    chunks = ray.put(read_table(run / "chunks", CHUNKS))
    ...  # pass both to the actor's constructor; in the actor:
    path, table = resolve(index), resolve(chunks)
"""

from __future__ import annotations

import contextlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from customir.manifest import fingerprint, log, replace_folder, temp_sibling
from customir.storage import cache_home

__all__ = ["ShippedFolder", "resolve"]


def cache_root() -> Path:
    return cache_home() / "node-files"


@dataclass(frozen=True)
class ShippedFolder:
    """A folder on the driver's node, usable by actors on any node (see the module docstring)."""

    path: str
    node_id: str  # the driver's Ray node
    key: str  # the folder's fingerprint: a changed folder is a new copy, never a stale one

    @classmethod
    def ship(cls, folder: str | Path) -> ShippedFolder:
        """Describe ``folder`` (in the driver, with Ray started); nothing is copied until an
        actor on another node asks for it."""
        import ray

        folder = Path(folder).resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder} to hand to the actors")
        return cls(str(folder), ray.get_runtime_context().get_node_id(), fingerprint(folder))

    def local(self) -> Path:
        """The folder on this node: the driver's own, or this node's unpacked copy."""
        import ray

        if ray.get_runtime_context().get_node_id() == self.node_id:
            return Path(self.path)
        target = cache_root() / f"{Path(self.path).name}-{self.key}"
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target.parent / f".{target.name}.lock"):  # one download per node
            if not target.is_dir():
                archive = ray.get(self._packed_on_driver_node())
                tmp = temp_sibling(target)
                with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                    tar.extractall(tmp, filter="data")
                replace_folder(tmp, target)
                log(f"copied {self.path} from the driver's node to {target} "
                    f"({len(archive) / 2**20:.1f} MiB)")
        return target

    def _packed_on_driver_node(self):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        pack = ray.remote(num_cpus=0)(_pack)  # zero CPUs: a head without CPUs can run it
        strategy = NodeAffinitySchedulingStrategy(self.node_id, soft=False)
        return pack.options(scheduling_strategy=strategy).remote(self.path, self.key)


def resolve(value: Any) -> Any:
    """An actor's constructor argument as the actor uses it: an object reference fetched, a
    :class:`ShippedFolder` as a path on this node, anything else as it is (so a UDF can also be
    built directly, without Ray, as the unit tests do)."""
    if isinstance(value, ShippedFolder):
        return value.local()
    if type(value).__name__ == "ObjectRef":  # without importing ray for plain values
        import ray

        return ray.get(value)
    return value


def _pack(path: str, key: str) -> bytes:
    """The folder as an uncompressed tar (index files are binary arrays: compressing them costs
    CPU for little), refused if it changed since the driver described it."""
    if fingerprint(path) != key:
        raise RuntimeError(f"{path} changed since the stage started; run the stage again")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(path, arcname=".")
    return buffer.getvalue()


@contextlib.contextmanager
def _locked(lock_file: Path):
    import fcntl

    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
