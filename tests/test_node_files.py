"""customir.node_files on the test session's one-node Ray cluster: the driver's node uses the
folder itself, object references and plain values resolve, a folder that changed after it was
described is refused. Copies on other nodes: tests/test_multinode.py."""

import io
import tarfile

import pyarrow as pa
import pytest

from customir.node_files import ShippedFolder, _pack, resolve

pytestmark = pytest.mark.ray


def test_on_the_drivers_node_the_folder_itself_is_used(ray_cluster, tmp_path):
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "data.bin").write_bytes(b"\x00\x01")
    shipped = ShippedFolder.ship(tmp_path / "index")
    assert resolve(shipped) == tmp_path / "index"


def test_object_references_are_fetched_and_plain_values_kept(ray_cluster):
    import ray

    table = pa.table({"chunk_id": ["c1", "c2"]})
    assert resolve(ray.put(table)).equals(table)
    assert resolve(table) is table
    assert resolve("a/path") == "a/path"


def test_a_missing_folder_is_one_clear_error(ray_cluster, tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder .*missing to hand to the actors"):
        ShippedFolder.ship(tmp_path / "missing")


def test_a_folder_that_changed_since_it_was_described_is_not_shipped(ray_cluster, tmp_path):
    folder = tmp_path / "index"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"first")
    shipped = ShippedFolder.ship(folder)
    names = tarfile.open(fileobj=io.BytesIO(_pack(shipped.path, shipped.key))).getnames()
    assert "./a.bin" in names
    (folder / "b.bin").write_bytes(b"second")  # the stage's folder was rebuilt meanwhile
    with pytest.raises(RuntimeError, match="changed since the stage started"):
        _pack(shipped.path, shipped.key)
