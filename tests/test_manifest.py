import pytest

from customir.manifest import (Balance, BalanceError, Manifest, find_complete, fingerprint,
                               stage_output)


def test_output_appears_only_when_complete(tmp_path):
    out = tmp_path / "stage"
    with pytest.raises(RuntimeError, match="boom"):
        with stage_output(out, "s", "h", {}) as (tmp, _):
            (tmp / "part.txt").write_text("half")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind


def test_unbalanced_counts_fail_the_stage(tmp_path):
    with pytest.raises(BalanceError, match=r"rows: 10 in != 8 out \+ 1 skipped"):
        with stage_output(tmp_path / "s", "s", "h", {}) as (_, manifest):
            manifest.balances["rows"] = Balance(10, 8, {"bad": 1})
    assert not (tmp_path / "s").exists()


def test_resume_matches_settings_and_inputs(tmp_path):
    with stage_output(tmp_path / "s", "s", "hash-a", {"in": "x"}) as (tmp, manifest):
        manifest.balances["rows"] = Balance(3, 2, {"bad": 1})
    assert find_complete(tmp_path / "s", "hash-a", {"in": "x"}).balances["rows"].n_out == 2
    assert find_complete(tmp_path / "s", "hash-b", {"in": "x"}) is None
    assert find_complete(tmp_path / "s", "hash-a", {"in": "y"}) is None
    assert Manifest.read(tmp_path / "s").versions["python"]


def test_a_rewrite_replaces_the_old_output(tmp_path):
    for text in ("one", "two"):
        with stage_output(tmp_path / "s", "s", "h", {}) as (tmp, _):
            (tmp / "f.txt").write_text(text)
    assert (tmp_path / "s" / "f.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_fingerprint_follows_content_changes(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    before = fingerprint(tmp_path)
    (tmp_path / "a.txt").write_text("ab")
    assert fingerprint(tmp_path) != before


def test_fingerprint_takes_file_names_that_are_not_utf8(tmp_path):
    import os

    name = tmp_path / os.fsdecode(b"caf\xe9.txt")
    name.write_text("a")
    before = fingerprint(tmp_path)
    name.write_text("ab")
    assert fingerprint(tmp_path) != before


def test_publishing_removes_what_killed_runs_left(tmp_path):
    # a run killed while writing leaves its temporary folder (and maybe the output it moved
    # aside); the next successful run of the stage clears them, and only its own stage's
    for leftover in (".s.tmp-dead0001", ".s.old-dead0002", ".other.tmp-live0003"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "model.onnx").write_bytes(b"x" * 1000)
    with stage_output(tmp_path / "s", "s", "h", {}) as (tmp, _):
        (tmp / "f.txt").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-live0003", "s"]
