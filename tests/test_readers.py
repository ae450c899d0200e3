"""Readers: each bad input the review named becomes text or a counted skip with its reason,
never a traceback; text is not silently lost or garbled."""

import os
from html.parser import HTMLParser

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from customir.config import IngestConfig
from customir.corpus import readers
from customir.corpus.html_text import _HTMLText
from customir.corpus.messy import pdf_bytes
from customir.corpus.readers import Document, Skip, iter_documents


def read(root, **config) -> tuple[dict[str, Document], list[tuple[str, str]]]:
    """({doc_id: document}, [(item, reason)]) for the folder ``root``."""
    entries = list(iter_documents(root, IngestConfig(**config)))
    docs = {e.doc_id: e for e in entries if isinstance(e, Document)}
    return docs, [(e.item, e.reason) for e in entries if isinstance(e, Skip)]


def text_of(doc: Document) -> str:
    return "\n".join(text for _, text in doc.sections)


def test_a_file_name_that_is_not_utf8_is_a_counted_skip(tmp_path):
    (tmp_path / "ok.txt").write_text("A normal document.")
    (tmp_path / os.fsdecode(b"caf\xe9.txt")).write_text("A latin-1 byte in the name.")
    docs, skips = read(tmp_path)
    assert list(docs) == ["ok.txt"]
    assert skips == [("caf\\xe9.txt", "undecodable_file_name")]


@pytest.mark.parametrize("markup", ["a <![ b", "<![x[abc]]>", "<![ if !vml ]>"])
def test_html_marked_sections_python_cannot_parse_are_read_as_comments(tmp_path, markup):
    (tmp_path / "page.html").write_text(f"<p>Before the section.</p>{markup}<p>After it.</p>")
    (tmp_path / "mail.eml").write_text("Subject: s\nContent-Type: text/html\n\n"
                                       f"<p>Before the section.</p>{markup}<p>After it.</p>\n")
    docs, skips = read(tmp_path)
    assert skips == []
    assert set(docs) == {"page.html", "mail.eml"}  # else the loop below checks nothing
    for doc in docs.values():
        assert "Before the section." in text_of(doc) and "After it." in text_of(doc)


def test_html_the_parser_cannot_read_is_a_counted_skip(tmp_path, monkeypatch):
    # Python's own parser (without our recovery) asserts on this marked section
    monkeypatch.setattr(_HTMLText, "parse_marked_section", HTMLParser.parse_marked_section)
    (tmp_path / "page.html").write_text("<p>text</p><![x[abc]]>")
    entries = list(iter_documents(tmp_path, IngestConfig()))
    assert [(e.reason, e.detail.split(":")[0]) for e in entries] == [
        ("unparseable_html", "AssertionError")]


def test_an_e_mail_part_the_html_parser_cannot_read_costs_only_that_part(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(_HTMLText, "parse_marked_section", HTMLParser.parse_marked_section)
    (tmp_path / "m.eml").write_bytes(
        b"Subject: x\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\nPlain part.\r\n"
        b"--B\r\nContent-Type: text/html\r\n\r\n<p>x</p><![x[abc]]>\r\n--B--\r\n")
    [doc] = list(iter_documents(tmp_path, IngestConfig()))
    assert text_of(doc) == "Plain part." and doc.lost == {"undecodable_email_parts": 1}


def test_a_reader_that_fails_unexpectedly_is_a_counted_skip(tmp_path, monkeypatch):
    def broken(path, rel, config):
        yield Document("first", rel, None, [(None, "read before the failure")])
        raise RuntimeError("boom")

    monkeypatch.setitem(readers.READERS, ".txt", broken)
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.md").write_text("still read")
    entries = list(iter_documents(tmp_path, IngestConfig()))
    assert [e.doc_id for e in entries if isinstance(e, Document)] == ["first", "b.md"]
    assert [(e.item, e.reason, e.detail) for e in entries if isinstance(e, Skip)] == [
        ("a.txt", "reader_error", "RuntimeError: boom")]


def test_corrupt_pdfs_are_counted_skips_and_a_bad_page_loses_only_itself(tmp_path):
    good = pdf_bytes("Portable document about coral reefs.")
    # the reviewer's file: two flipped bytes make page 3 a loop (pypdf LimitReachedError)
    (tmp_path / "loop.pdf").write_bytes(
        good.replace(b"/Catalog", b"/Cat\xaelog").replace(b"3 0 obj\n", b"3 0 obj\xd9"))
    # a trailer whose /Info is not a dictionary (PdfReadError when the title is read)
    (tmp_path / "info.pdf").write_bytes(good.replace(b"/Root 1 0 R", b"/Root 1 0 R /Info (x)"))
    (tmp_path / "pages.pdf").write_bytes(pdf_bytes("Text on the good page.",
                                                   unreadable_page=True))
    docs, skips = read(tmp_path)
    assert skips == [("loop.pdf", "unreadable_pdf")]
    assert text_of(docs["info.pdf"]) == "Portable document about coral reefs."
    assert docs["info.pdf"].title is None
    assert text_of(docs["pages.pdf"]).strip() == "Text on the good page."
    assert docs["pages.pdf"].lost == {"unreadable_pdf_pages": 1}


def test_parquet_reads_only_its_text_id_and_title_columns(tmp_path):
    past_9999 = pa.array([2**62, 0], type=pa.timestamp("us"))  # year ~146,000
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["Alpha text.", "Beta text."],
                             "created": past_9999}), tmp_path / "dates.parquet")
    pq.write_table(pa.table({"id": past_9999, "text": ["Gamma text.", "Delta text."]}),
                   tmp_path / "date_ids.parquet")
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")
    docs, skips = read(tmp_path)
    assert text_of(docs["a"]) == "Alpha text." and text_of(docs["b"]) == "Beta text."
    assert "1970-01-01 00:00:00" in docs  # the second date_ids row converts; the first cannot
    assert sorted(skips) == [("date_ids.parquet:0", "unconvertible_record"),
                             ("empty.parquet", "no_records")]


def test_jsonl_too_deep_or_too_long_numbers_are_invalid_json(tmp_path):
    (tmp_path / "odd.jsonl").write_text('{"id": "ok", "text": "fine record"}\n'
                                        + "[" * 100_000 + "\n"
                                        + '{"id": ' + "9" * 5000 + ', "text": "big id"}\n')
    docs, skips = read(tmp_path)
    assert list(docs) == ["ok"]
    assert skips == [("odd.jsonl:2", "invalid_json"), ("odd.jsonl:3", "invalid_json")]


def test_jsonl_files_with_no_records_are_counted(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    assert read(tmp_path) == ({}, [("blank.jsonl", "no_records"), ("empty.jsonl", "no_records")])


def test_one_stray_byte_in_utf8_text_is_replaced_and_counted(tmp_path):
    (tmp_path / "mixed.txt").write_bytes("Le café est servi. Naïve résumé here.\n".encode()
                                         + b"One stray \x92 byte.\n")
    (tmp_path / "latin1.txt").write_bytes("Le café est servi.".encode("cp1252"))
    docs, _ = read(tmp_path)
    mixed = docs["mixed.txt"]
    assert text_of(mixed) == "Le café est servi. Naïve résumé here.\nOne stray \ufffd byte.\n"
    assert (mixed.encoding, mixed.lost) == ("utf-8", {"invalid_utf8_replaced": 1})
    assert (text_of(docs["latin1.txt"]), docs["latin1.txt"].encoding) == (
        "Le café est servi.", "cp1252")


@pytest.mark.parametrize("meta", ['<meta charset="windows-1251">',
                                  '<meta http-equiv="Content-Type" '
                                  'content="text/html; charset=windows-1251">'])
def test_an_html_charset_declaration_is_honoured(tmp_path, meta):
    (tmp_path / "ru.html").write_bytes(
        f"<html><head>{meta}</head><body><p>Привет мир, это тест.</p></body></html>"
        .encode("cp1251"))
    docs, _ = read(tmp_path)
    assert text_of(docs["ru.html"]) == "Привет мир, это тест."
    assert docs["ru.html"].encoding == "cp1251"


def test_html_cells_list_items_and_blocks_are_kept_apart(tmp_path):
    (tmp_path / "t.html").write_text(
        "<table><tr><th>City</th><th>Country</th></tr><tr><td>Paris</td><td>France</td></tr>"
        "</table><dl><dt>Term</dt><dd>Definition</dd></dl><ul><li>one</li><li>two</li></ul>"
        "<p>para</p>tail")
    docs, _ = read(tmp_path)
    assert text_of(docs["t.html"]).split() == ["City", "Country", "Paris", "France", "Term",
                                               "Definition", "one", "two", "para", "tail"]


def test_an_unclosed_heading_or_title_does_not_swallow_the_page(tmp_path):
    (tmp_path / "h.html").write_text("<html><body><h2>Intro<p>Lots of body text that should "
                                     "be kept.</p><p>More text.</p></body></html>")
    (tmp_path / "t.html").write_text("<html><head><title>Page<body><p>Body text.</p>")
    (tmp_path / "end.html").write_text("<p>Body.</p><h3>A heading never closed at the end")
    docs, _ = read(tmp_path)
    assert docs["h.html"].sections == [("Intro", "Lots of body text that should be kept.\n"
                                                 "More text.")]
    assert (docs["t.html"].title, text_of(docs["t.html"])) == ("Page", "Body text.")
    assert text_of(docs["end.html"]) == "Body.\nA heading never closed at the end"


def test_a_heading_wrapping_a_block_keeps_its_text(tmp_path):
    """CMS exports write ``<h3><div>…</div></h3>``: the block inside the heading is part of it,
    not the start of a body that ends the heading before its text."""
    (tmp_path / "cms.html").write_text("<h2>Old</h2><p>x</p><h3><div class='t'>Inner heading"
                                       "</div></h3><p>after</p><h2><p>Wrapped</p></h2><p>end</p>")
    docs, _ = read(tmp_path)
    assert docs["cms.html"].sections == [("Old", "x"), ("Inner heading", "after"),
                                         ("Wrapped", "end")]


def test_only_the_first_page_title_outside_svg_is_the_title(tmp_path):
    (tmp_path / "svg.html").write_text(
        "<html><head><title>Real Title</title></head><body><h1>Heading</h1><p>Body text.</p>"
        "<svg><title>icon-close</title></svg><title>Second</title></body></html>")
    (tmp_path / "h1.html").write_text("<body><svg><title>icon</title></svg><h1>From H1</h1>"
                                      "<p>Body.</p></body>")
    docs, _ = read(tmp_path)
    assert docs["svg.html"].title == "Real Title"
    assert "icon" not in text_of(docs["svg.html"]) + text_of(docs["h1.html"])
    assert docs["h1.html"].title == "From H1"


def test_an_e_mail_keeps_every_inline_text_part(tmp_path):
    (tmp_path / "mixed.eml").write_bytes(
        b"Subject: x\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\nFirst part.\r\n"
        b"--B\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename=a.pdf\r\n\r\nxx\r\n"
        b"--B\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt"
        b"\r\n\r\nAn attached text file.\r\n"
        b"--B\r\nContent-Type: multipart/alternative; boundary=C\r\n\r\n"
        b"--C\r\nContent-Type: text/plain\r\n\r\nSecond part, plain.\r\n"
        b"--C\r\nContent-Type: text/html\r\n\r\n<p>Second part, HTML.</p>\r\n--C--\r\n"
        b"--B\r\nContent-Type: text/html\r\n\r\n<p>Third part, only HTML.</p>\r\n--B--\r\n")
    docs, _ = read(tmp_path)
    assert text_of(docs["mixed.eml"]).split("\n\n") == [
        "First part.", "Second part, plain.", "Third part, only HTML."]


def test_markdown_headings_keep_a_trailing_hash_and_tilde_fences_hide_comments(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\nintro\n\n## Using C#\n\nC# is a language.\n\n"
                                   "~~~bash\n# a shell comment, not a heading\nls\n~~~\n\n"
                                   "### Closed ###\n\nend\n")
    docs, _ = read(tmp_path)
    assert [h for h, _ in docs["a.md"].sections] == ["Title", "Using C#", "Closed"]
    assert "# a shell comment" in docs["a.md"].sections[1][1]


@pytest.mark.parametrize("text, encoding", [
    ("Исследование показало, что уровень белка в крови снизился у пациентов.", "cp1251"),
    ("Исследование показало, что уровень белка в крови снизился у пациентов.", "koi8_r"),
    ("Η μελέτη έδειξε ότι τα επίπεδα πρωτεΐνης μειώθηκαν σημαντικά.", "cp1253"),
    # short: charset-normalizer's first guess reads it as Hebrew vowel points (cp1255)
    ("Инсулин снижает сахар крови.", "koi8_r"),
    ("Привет, как дела у тебя сегодня?", "koi8_r"),
    ("המטופל קיבל אינסולין לטיפול בסוכרת שלו היום.", "cp1255"),
])
def test_an_undeclared_non_latin_code_page_is_detected(tmp_path, text, encoding):
    """Read as Windows-1252 such a file used to become mojibake ('Èññëåäîâàíèå ...')."""
    (tmp_path / "doc.txt").write_bytes(text.encode(encoding))
    (tmp_path / "fr.txt").write_bytes("Ça a été très éprouvé à l'été, dit-elle.".encode("cp1252"))
    docs, _ = read(tmp_path)
    assert (text_of(docs["doc.txt"]), docs["doc.txt"].encoding) == (text, encoding)
    assert docs["fr.txt"].encoding == "cp1252"
