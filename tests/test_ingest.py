"""Ingest: every format, every bad input as a counted skip with its reason, balances hold."""

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from customir.config import IngestConfig
from customir.corpus import ingest
from customir.corpus.chunking import chunk_text, clean_text
from customir.corpus.messy import pdf_bytes
from customir.manifest import Manifest
from customir.models import load_tokenizer, resolve_base_model
from customir.schemas import CHUNKS, read_table


@pytest.fixture(scope="module")
def count_tokens():
    tokenizer = load_tokenizer(str(resolve_base_model("all-MiniLM-L6-v2")))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_chunks_respect_the_token_budget(count_tokens):
    text = " ".join(f"Sentence number {i} talks about cardiology outcomes." for i in range(60))
    chunks = chunk_text(text, 50, count_tokens)
    assert len(chunks) > 5
    assert all(count_tokens(c) <= 50 for c in chunks)
    assert " ".join(chunks).split() == text.split()  # nothing lost, order kept


def test_an_unpunctuated_blob_is_split_by_words(count_tokens):
    text = "word " * 1000
    chunks = chunk_text(text, 64, count_tokens)
    assert all(count_tokens(c) <= 64 for c in chunks)
    assert sum(len(c.split()) for c in chunks) == 1000


def test_a_short_chunk_joins_its_smaller_neighbour(count_tokens):
    long = "Cardiology " + "outcomes " * 32 + "improve."   # one sentence of 36 word pieces
    text = f"{long} See text. {long} {long} Short tail."   # a stranded sentence, then a tail
    greedy = chunk_text(text, 38, count_tokens)
    assert [count_tokens(c) for c in greedy] == [36, 3, 36, 36, 3]  # ingest would skip the 3s
    chunks = chunk_text(text, 38, count_tokens, min_tokens=8)
    assert [count_tokens(c) for c in chunks] == [39, 36, 39]
    assert " ".join(chunks).split() == text.split()  # nothing lost, order kept
    # The end of a sentence split by words joins too; a document of one short chunk stays short.
    split = chunk_text("word " * 42, 38, count_tokens, min_tokens=8)
    assert [count_tokens(c) for c in split] == [42]
    assert chunk_text("See text.", 40, count_tokens, min_tokens=8) == ["See text."]


def test_cjk_text_is_cut_into_sentences_and_pieces_within_the_budget(count_tokens):
    sentence = "自然语言处理是人工智能的一个重要领域。"
    chunks = chunk_text(sentence * 60, 200, count_tokens)
    assert len(chunks) == 6 and all(count_tokens(c) <= 200 for c in chunks)
    assert "".join(chunks) == sentence * 60  # cut between sentences, no spaces added
    run_on = "自然语言处理是人工智能的一个重要领域" * 30  # no full stop at all: cut by characters
    chunks = chunk_text(f"See: {run_on} and more", 200, count_tokens, min_tokens=8)
    assert [count_tokens(c) for c in chunks] == [2 + 200, 200, 140 + 2]  # "See:" joined
    assert "".join(chunks) == f"See: {run_on} and more"


def test_clean_text_removes_control_characters_and_blank_runs():
    assert clean_text("Title\x07\r\n\r\n\r\nBody   text\u00a0here") == "Title\n\nBody text here"


def _write_messy_corpus(root):
    (root / "sub").mkdir(parents=True)
    (root / "guide.md").write_text("# Guide\n\nIntro paragraph about setup steps and tools.\n\n"
                                   "## Install\n\nRun the installer and follow every prompt.\n")
    (root / "sub" / "note.txt").write_text("A plain text note about quarterly revenue growth.\n")
    (root / "page.html").write_text("<html><head><title>Page</title><script>var x=1;</script>"
                                    "<style>p { color: crimson; }</style>"
                                    "</head><body><h1>Page</h1><p>Hypertext content about "
                                    "network routing tables.</p></body></html>")
    records = [
        {"_id": "r1", "title": "Record one", "text": "The first record describes solar panels."},
        "this line is not json",
        {"_id": "r2", "body_text": "no known text field here"},
        {"_id": "r1", "text": "A second record reusing the id r1 for something else."},
        ["a", "list"],
        {"_id": "r3", "text": "The first record describes solar panels."},  # duplicate text
    ]
    with open(root / "records.jsonl", "w") as fh:
        for rec in records:
            fh.write((rec if isinstance(rec, str) else json.dumps(rec)) + "\n")
    (root / "binary.txt").write_bytes(b"\x00\x01\x02binary")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (root / "image.png").write_bytes(b"\x89PNG....")
    executable = Path(sys.executable).resolve().read_bytes()[:65536]  # an ELF program
    (root / "tool").write_bytes(executable)
    (root / "tool.txt").write_bytes(executable)                     # named like text
    (root / "empty.md").write_text("   \n\n")
    (root / ".hidden.txt").write_text("secret")
    (root / "tiny.txt").write_text("ok")
    (root / "broken.parquet").write_bytes(b"not parquet at all")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (root / "utf16.txt").write_bytes("\ufeffUTF-16 text about tidal energy storage.".encode(
        "utf-16-le"))
    (root / "sub" / "Notes ü — final.md").write_text("# Ümlauts\n\nA file name with spaces "
                                                      "and non-ASCII letters.\n")
    (root / "sub" / "loop").symlink_to(root)                       # a directory loop
    (root / "escape.txt").symlink_to("/etc/hostname")              # outside the corpus
    (root / "dangling.txt").symlink_to(root / "missing.txt")       # broken
    (root / "alias.txt").symlink_to(root / "sub" / "note.txt")     # inside: read (then deduped)
    (root / "text.pdf").write_bytes(pdf_bytes("Portable document about coral reefs."))
    (root / "scanned.pdf").write_bytes(pdf_bytes(None))       # a page without text


def test_messy_folder_counts_every_input(tmp_path):
    root = tmp_path / "docs"
    _write_messy_corpus(root)
    manifest = ingest.run(root, tmp_path / "run", IngestConfig(min_chunk_tokens=3))
    docs, chunks = manifest.balances["documents"], manifest.balances["chunks"]
    assert docs.skipped == {"invalid_json": 1, "no_text_field": 1, "duplicate_doc_id": 1,
                            "not_an_object": 1, "binary_file": 2, "unsupported_format": 2,
                            "empty_text": 2, "hidden_file": 1, "unreadable_parquet": 1,
                            "unreadable_pdf": 1, "symlinked_directory": 1, "outside_corpus": 1,
                            "broken_symlink": 1}
    # guide.md, note.txt, page.html, r1, r3, tiny.txt, latin1.txt (cp1252), utf16.txt,
    # the non-ASCII-named note, text.pdf, alias.txt; empty_text: empty.md and scanned.pdf
    assert docs.n_out == 11
    assert docs.n_in == docs.n_out + sum(docs.skipped.values())
    assert manifest.extra["decoded_as"] == {"cp1252": 1, "utf-16": 1}
    assert chunks.skipped == {"duplicate": 2, "too_short": 1}  # r3 and alias.txt; tiny.txt
    table = read_table(tmp_path / "run" / "chunks", CHUNKS)
    assert table.num_rows == chunks.n_out == 9  # guide.md gives two (intro, Install)
    rows = {r["chunk_id"]: r for r in table.to_pylist()}
    assert rows["latin1.txt#0"]["text"] == "café au lait"
    assert rows["utf16.txt#0"]["text"].startswith("UTF-16 text")
    assert rows["sub/Notes ü — final.md#0"]["title"] == "Ümlauts"
    assert "coral reefs" in rows["text.pdf#0"]["text"]
    assert rows["guide.md#0"]["title"] == "Guide" and rows["guide.md#0"]["heading"] is None
    assert rows["guide.md#1"]["heading"] == "Install"
    assert rows["page.html#0"]["title"] == "Page" and "var x" not in rows["page.html#0"]["text"]
    assert "crimson" not in rows["page.html#0"]["text"]
    assert rows["r1#0"]["title"] == "Record one"
    skipped = pq.read_table(tmp_path / "run" / "chunks" / "skipped.parquet").to_pylist()
    assert {"stage": "ingest", "item": "records.jsonl:2", "reason": "invalid_json",
            "detail": "Expecting value"} in skipped
    assert len(skipped) == sum(docs.skipped.values()) + sum(chunks.skipped.values())


def test_rerun_is_skipped_and_a_change_reruns(tmp_path, fixture_corpus, monkeypatch):
    first = ingest.run(fixture_corpus, tmp_path / "run", IngestConfig())
    again = ingest.run(fixture_corpus, tmp_path / "run", IngestConfig())
    assert again.finished_at == first.finished_at
    assert Manifest.read(tmp_path / "run" / "chunks").config_hash == first.config_hash
    (fixture_corpus / "extra.txt").write_text("A new document about renal function tests.")
    third = ingest.run(fixture_corpus, tmp_path / "run", IngestConfig())
    assert third.balances["documents"].n_out == first.balances["documents"].n_out + 1
    monkeypatch.setattr(ingest, "CHUNKER_VERSION", "next")  # new chunk boundaries: re-chunk
    fourth = ingest.run(fixture_corpus, tmp_path / "run", IngestConfig())
    assert fourth.config_hash != third.config_hash
    assert Manifest.read(tmp_path / "run" / "chunks").config_hash == fourth.config_hash
    monkeypatch.setattr(ingest, "READER_VERSION", "next")  # new text from the same files: reread
    fifth = ingest.run(fixture_corpus, tmp_path / "run", IngestConfig())
    assert fifth.config_hash != fourth.config_hash


def test_a_corpus_with_nothing_usable_is_one_clear_error(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "docs"
    root.mkdir()
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / "empty.txt").write_text("")
    with pytest.raises(ingest.EmptyCorpusError, match=r"no usable text .* 2 inputs, all skipped"):
        ingest.run(root, tmp_path / "run", IngestConfig())
    assert not (tmp_path / "run" / "chunks").exists()
    out = subprocess.run([sys.executable, "-m", "customir.cli", "ingest", str(root), "--out",
                          str(tmp_path / "run")], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "no usable text" in out.stderr


def test_e_mails_give_subject_and_body_or_a_counted_skip(tmp_path):
    root = tmp_path / "mail"
    root.mkdir()
    (root / "html.eml").write_text(
        "Subject: Fwd: lab results\nContent-Type: text/html; charset=utf-8\n\n"
        "<html><body><p>The glucose values of the second cohort are in.</p></body></html>\n")
    (root / "attachment-only.eml").write_bytes(
        b"Subject: scan\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n"
        b"--XX\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n"
        b"JVBERi0xLjQK\n--XX--\n")
    manifest = ingest.run(root, tmp_path / "run", IngestConfig(min_chunk_tokens=3))
    assert manifest.balances["documents"].skipped == {"no_text": 1}
    skipped = pq.read_table(tmp_path / "run" / "chunks" / "skipped.parquet").to_pylist()
    assert skipped[0]["item"] == "attachment-only.eml" and "no text" in skipped[0]["detail"]
    row = read_table(tmp_path / "run" / "chunks", CHUNKS).to_pylist()[0]
    assert row["title"] == "Fwd: lab results"
    assert row["text"] == "The glucose values of the second cohort are in."


@pytest.mark.slow
def test_a_50_mb_document_is_chunked_whole(tmp_path):
    from customir.corpus.messy import write_categories

    write_categories(tmp_path / "all", big_mb=50)
    root = tmp_path / "all" / "50 MB document"
    size = (root / "big.txt").stat().st_size
    manifest = ingest.run(root, tmp_path / "run", IngestConfig())
    docs, chunks = manifest.balances["documents"], manifest.balances["chunks"]
    assert (docs.n_in, docs.n_out, docs.skipped) == (1, 1, {})
    table = read_table(tmp_path / "run" / "chunks", CHUNKS)
    assert table.num_rows == chunks.n_out > 20_000
    assert chunks.n_in == chunks.n_out + sum(chunks.skipped.values())
    # the text is chunked whole: nothing cut off at the end
    texts = table.column("text").to_pylist()
    assert sum(len(t) for t in texts) > 0.95 * size
    last = (root / "big.txt").read_text()[-200:].split("estuary ")[-1].split()[0]
    assert f"estuary {last} " in texts[-1] or texts[-1].endswith(f"estuary {last}")


# what each category of customir.corpus.messy gives: (documents ingested, {reason: skipped})
MESSY_OUTCOMES = {
    "empty file": (0, {"empty_text": 1}),
    "whitespace only": (0, {"empty_text": 1}),
    "binary: image": (0, {"unsupported_format": 1}),
    "binary: executable": (0, {"unsupported_format": 1}),
    "binary named .txt": (0, {"binary_file": 1}),
    "latin-1 text": (1, {}),
    "UTF-16 text": (1, {}),
    "1 MB document": (1, {}),
    "JSONL: malformed lines, missing and duplicate ids": (
        3, {"invalid_json": 1, "not_an_object": 1, "duplicate_doc_id": 1, "no_text_field": 1}),
    "HTML with scripts and styles": (1, {}),
    "PDF with text": (1, {}),
    "PDF scanned (no text)": (0, {"empty_text": 1}),
    "PDF broken": (0, {"unreadable_pdf": 1}),
    "parquet broken": (0, {"unreadable_parquet": 1}),
    "text empty after cleaning": (0, {"empty_text": 1}),
    "symlink loop": (1, {"symlinked_directory": 1}),
    "symlink outside the corpus": (1, {"outside_corpus": 1}),
    "dangling symlink": (1, {"broken_symlink": 1}),
    "name with spaces and non-ASCII": (1, {}),
    "hidden file": (0, {"hidden_file": 1}),
}


def test_every_messy_category_is_ingested_or_skipped_with_its_reason(tmp_path):
    from customir.corpus.messy import write_categories

    inputs = write_categories(tmp_path, big_mb=1)
    assert set(inputs) == set(MESSY_OUTCOMES)
    for name, tried in inputs.items():
        result = ingest.ingest(tmp_path / name, IngestConfig(), "all-MiniLM-L6-v2")
        docs = result.balances["documents"]
        assert docs.n_in == tried, name  # every input was seen ...
        assert (docs.n_out, docs.skipped) == MESSY_OUTCOMES[name], name  # ... and accounted


def test_jsonl_lines_are_decoded_one_by_one_and_split_only_at_newlines(tmp_path):
    """One Windows-1252 record must not turn the file's UTF-8 records into mojibake, a record
    whose string holds U+2028 (legal in JSON) is one record, and a line neither UTF-8 nor
    Windows-1252 is a counted skip of that line only."""
    root = tmp_path / "docs"
    root.mkdir()
    lines = [json.dumps({"id": "a", "text": "café au lait is served warm"}, ensure_ascii=False)
             .encode(),
             json.dumps({"id": "b", "text": "one line\u2028with a line separator inside"},
                        ensure_ascii=False).encode(),
             b'{"id": "c", "text": "it\x92s a curly apostrophe in Windows-1252"}',
             b'{"id": "d", "text": "\x81\x8d not text in any encoding we read"}']
    (root / "records.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    manifest = ingest.run(root, tmp_path / "run", IngestConfig(min_chunk_tokens=3))
    docs = manifest.balances["documents"]
    assert (docs.n_in, docs.n_out, docs.skipped) == (4, 3, {"undecodable_text": 1})
    assert manifest.extra["decoded_as"] == {"cp1252": 1}
    texts = {r["doc_id"]: r["text"] for r in read_table(tmp_path / "run" / "chunks",
                                                         CHUNKS).to_pylist()}
    assert texts["a"] == "café au lait is served warm"
    assert texts["c"].startswith("it\u2019s a curly")
    assert "line separator" in texts["b"]
    skipped = pq.read_table(tmp_path / "run" / "chunks" / "skipped.parquet").to_pylist()
    assert [(s["item"], s["reason"]) for s in skipped] == [("records.jsonl:4",
                                                            "undecodable_text")]


def test_half_a_character_from_a_json_escape_and_html_tail_text_are_kept(tmp_path):
    """A JSON record whose ``\ud83d`` escape decodes to a lone surrogate (scraped text cut
    mid-emoji) is kept with U+FFFD in its place, not a traceback; the last words of an HTML
    file are kept even when they end in an ``&`` the parser holds back."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "cut.jsonl").write_text(
        '{"id": "cut\\ud83d", "title": "Emoji \\ude00 cut", "text": "Statins lower '
        'cholesterol in most adults \\ud83d and reduce heart attacks."}\n')
    (root / "page.html").write_text(
        "<html><body><p>Intro paragraph about statins and the liver.</p>"
        "<p>Our partners include AT&T")
    manifest = ingest.run(root, tmp_path / "run", IngestConfig(min_chunk_tokens=3))
    assert manifest.balances["documents"].n_out == 2
    rows = {r["doc_id"]: r for r in read_table(tmp_path / "run" / "chunks", CHUNKS).to_pylist()}
    cut = rows["cut\ufffd"]
    assert cut["title"] == "Emoji \ufffd cut"
    assert cut["text"] == ("Statins lower cholesterol in most adults \ufffd and reduce heart "
                           "attacks.")
    page = " ".join(r["text"] for r in rows.values() if r["doc_id"] == "page.html")
    assert page.endswith("Our partners include AT&T")


def test_inputs_that_crashed_ingest_are_counted_and_the_counts_reconcile(tmp_path):
    import os

    root = tmp_path / "docs"
    root.mkdir()
    (root / os.fsdecode(b"caf\xe9.txt")).write_text("A file whose name is not UTF-8.")
    (root / "malformed.html").write_text("<p>Text around a marked section</p><![ if !vml ]>")
    (root / "empty.jsonl").write_text("")
    (root / "deep.jsonl").write_text("[" * 100_000 + "\n")
    (root / "loop.pdf").write_bytes(pdf_bytes("Coral reefs.").replace(b"/Catalog", b"/Cat\xaelog")
                                    .replace(b"3 0 obj\n", b"3 0 obj\xd9"))
    (root / "pages.pdf").write_bytes(pdf_bytes("Text on the page that reads.",
                                               unreadable_page=True))
    (root / "mixed.txt").write_bytes("Le café est servi.".encode() + b" One stray \x92 byte.")
    manifest = ingest.run(root, tmp_path / "run", IngestConfig(min_chunk_tokens=3))
    docs = manifest.balances["documents"]
    assert (docs.n_in, docs.n_out) == (7, 3)
    assert docs.skipped == {"undecodable_file_name": 1, "no_records": 1, "invalid_json": 1,
                            "unreadable_pdf": 1}
    assert manifest.extra["lost_inside_documents"] == {
        "invalid_utf8_replaced": {"count": 1, "documents": 1, "examples": ["mixed.txt"]},
        "unreadable_pdf_pages": {"count": 1, "documents": 1, "examples": ["pages.pdf"]}}
    skipped = pq.read_table(tmp_path / "run" / "chunks" / "skipped.parquet").to_pylist()
    assert ("caf\\xe9.txt", "undecodable_file_name") in [(s["item"], s["reason"])
                                                         for s in skipped]


def test_the_corpus_fingerprint_covers_only_the_files_ingest_reads(tmp_path):
    from customir.corpus.readers import corpus_fingerprint

    root = tmp_path / "docs"
    (root / ".git").mkdir(parents=True)
    (root / "a.txt").write_text("a document")
    before = corpus_fingerprint(root)
    (root / ".git" / "index").write_text("git's own files")
    (root / ".DS_Store").write_bytes(b"\x00")
    (root / ".a.txt.swp").write_bytes(b"\x00")
    (root / "notes.docx").write_bytes(b"PK")
    assert corpus_fingerprint(root) == before
    (root / "b.md").write_text("# a new document")
    assert corpus_fingerprint(root) != before


def test_a_manifest_file_in_the_corpus_does_not_hide_edits(tmp_path):
    from customir.manifest import MANIFEST

    root = tmp_path / "docs"
    root.mkdir()
    (root / MANIFEST).write_text('{"exported_by": "some other tool"}')
    (root / "a.txt").write_text("A first version of the document.")
    first = ingest.run(root, tmp_path / "run", IngestConfig(min_chunk_tokens=3))
    (root / "a.txt").write_text("A second, longer version of the same document.")
    second = ingest.run(root, tmp_path / "run", IngestConfig(min_chunk_tokens=3))
    assert second.inputs != first.inputs
    assert "second, longer" in read_table(tmp_path / "run" / "chunks", CHUNKS)["text"][0].as_py()


def test_a_folder_that_cannot_be_listed_is_a_counted_skip(tmp_path, monkeypatch):
    """os.walk drops a folder it cannot list unless asked; ingest must count it. Tests run as
    root, where chmod 000 does not stop a listing, so the listing fails by injection."""
    import os

    root = tmp_path / "docs"
    (root / "locked").mkdir(parents=True)
    (root / "locked" / "secret.txt").write_text("never read: the folder cannot be listed")
    (root / "open.txt").write_text("a readable document about tides and the moon")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == root / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    manifest = ingest.run(root, tmp_path / "run", IngestConfig(min_chunk_tokens=3))
    docs = manifest.balances["documents"]
    assert (docs.n_in, docs.n_out, docs.skipped) == (2, 1, {"unreadable_folder": 1})
    skipped = pq.read_table(tmp_path / "run" / "chunks" / "skipped.parquet").to_pylist()
    assert [(s["item"], s["reason"], s["detail"]) for s in skipped] == [
        ("locked", "unreadable_folder", "Permission denied")]
