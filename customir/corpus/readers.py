"""Readers: one per file format, each turning a file into documents or counted skips.

A document is a title plus sections (heading, text). A file that cannot be read, and a record
inside it that has no text, becomes a :class:`Skip` with a reason instead of an exception, so
ingest can report every input it did not use; what a document that was read lost inside it (a
PDF page that cannot be read, an invalid UTF-8 byte replaced) is counted in its ``lost``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from customir.config import IngestConfig
from customir.corpus.decoding import Decoded, declared_charset, decode_text
from customir.corpus.files import Skip, SkipFile, corpus_entries
from customir.corpus.html_text import html_sections
from customir.manifest import listing_fingerprint

__all__ = ["Document", "Skip", "READER_VERSION", "corpus_files", "corpus_fingerprint",
           "iter_documents", "whole_characters"]

# Part of the ingest stage's config hash, like CHUNKER_VERSION: bump it when the same file gives
# other text (a reader fixed or improved), so a rerun after an upgrade reads the corpus again.
READER_VERSION = "4"


@dataclass
class Document:
    doc_id: str
    source: str
    title: str | None
    sections: list[tuple[str | None, str]] = field(default_factory=list)  # (heading, text)
    encoding: str = "utf-8"
    lost: dict[str, int] = field(default_factory=dict)  # lost inside it: {what: how many}


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def whole_characters(text: str) -> str:
    r"""``text`` with each lone UTF-16 surrogate (half a character, which a JSON ``\ud83d``
    escape decodes to and no UTF-8 writer or tokenizer accepts) replaced by U+FFFD.

    >>> whole_characters(json.loads('"cut \\ud83d here, whole \\ud83d\\ude00"'))
    'cut \ufffd here, whole 😀'
    """
    return _LONE_SURROGATE.sub("\ufffd", text)


def _lost_in_decoding(decoded: Decoded) -> dict[str, int]:
    return {"invalid_utf8_replaced": decoded.replaced} if decoded.replaced else {}


def _decoded_document(rel: str, title: str | None, sections: list[tuple[str | None, str]],
                      decoded: Decoded) -> Document:
    return Document(rel, rel, title, sections, decoded.encoding, _lost_in_decoding(decoded))


def read_txt(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    decoded = decode_text(path.read_bytes())
    yield _decoded_document(rel, None, [(None, decoded.text)], decoded)


# CommonMark: a closing run of #s must follow a space, so "## Using C#" keeps its "#"
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)(?:\s+#+)?\s*$")
_MD_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def split_markdown(text: str) -> tuple[str | None, list[tuple[str | None, str]]]:
    """Return the first H1 as title and the text split into (heading, body) sections; a ``#``
    line inside a fenced code block (``` or ~~~) is code, not a heading.

    >>> split_markdown("# T\\nintro\\n## C#\\n~~~\\n# code\\n~~~")
    ('T', [('T', 'intro'), ('C#', '~~~\\n# code\\n~~~')])
    """
    title, heading, lines, sections = None, None, [], []
    fence = None
    for line in text.splitlines():
        inside = fence is not None
        fence = _fence_after(line, fence)
        match = None if inside or fence else _MD_HEADING.match(line)
        if match:
            if any(s.strip() for s in lines):
                sections.append((heading, "\n".join(lines).strip()))
            lines, heading = [], match.group(2).strip()
            if title is None and len(match.group(1)) == 1:
                title = heading
        else:
            lines.append(line)
    if any(s.strip() for s in lines):
        sections.append((heading, "\n".join(lines).strip()))
    return title, sections


def _fence_after(line: str, fence: str | None) -> str | None:
    """The code fence open after ``line`` (None outside code): a run of 3+ backticks or tildes
    opens one; only a line of at least as many of the same character closes it."""
    if fence is None:
        match = _MD_FENCE.match(line)
        return match.group(1) if match else None
    run = line.strip()
    return None if set(run) == {fence[0]} and len(run) >= len(fence) else fence


def read_markdown(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    decoded = decode_text(path.read_bytes())
    title, sections = split_markdown(decoded.text)
    yield _decoded_document(rel, title, sections, decoded)


def read_html(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    data = path.read_bytes()
    decoded = decode_text(data, declared=declared_charset(data))
    title, sections = html_sections(decoded.text)
    yield _decoded_document(rel, title, sections, decoded)


def read_pdf(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    """The text of every page that can be read; a page that cannot is counted in ``lost``."""
    try:
        from pypdf import PdfReader
    except ImportError:
        raise SkipFile("pdf_support_missing", "pip install pypdf") from None
    try:
        reader = PdfReader(str(path))
        pages = list(reader.pages)
    except Exception as exc:  # pypdf raises many types on corrupt files, not only PyPdfError
        raise SkipFile("unreadable_pdf", f"{type(exc).__name__}: {exc}"[:200]) from None
    texts = [_page_text(page) for page in pages]
    lost = texts.count(None)
    if lost and lost == len(texts):
        raise SkipFile("unreadable_pdf", f"none of its {lost} pages could be read")
    text = whole_characters("\n".join(t for t in texts if t is not None))
    yield Document(rel, rel, _pdf_title(reader), [(None, text)],
                   lost={"unreadable_pdf_pages": lost} if lost else {})


def _page_text(page) -> str | None:
    try:
        return page.extract_text() or ""
    except Exception:  # a corrupt page (pypdf raises many types) costs that page only
        return None


def _pdf_title(reader) -> str | None:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:  # a broken /Info dictionary costs the title, not the text
        return None
    return whole_characters(str(title)) if title else None


def _first(record: dict, names: list[str]):
    for name in names:
        value = record.get(name)
        if value is not None and str(value).strip():
            return value
    return None


def _record_document(record, locator: str, rel: str, config: IngestConfig,
                     decoded: Decoded | None = None) -> Document | Skip:
    if not isinstance(record, dict):
        return Skip(locator, "not_an_object", f"record is {type(record).__name__}")
    text = _first(record, config.text_fields)
    if not isinstance(text, str):
        return Skip(locator, "no_text_field",
                    f"none of {config.text_fields} holds a string (keys: {sorted(record)[:8]})")
    doc_id = _first(record, config.id_fields)
    title = _first(record, config.title_fields)
    return Document(whole_characters(str(doc_id)) if doc_id is not None else locator, rel,
                    whole_characters(str(title)) if title is not None else None,
                    [(None, whole_characters(text))], decoded.encoding if decoded else "utf-8",
                    _lost_in_decoding(decoded) if decoded else {})


def _jsonl_lines(data: bytes) -> Iterator[tuple[int, Decoded | Skip]]:
    r"""(line number, the decoded line or the Skip of an undecodable one) per ``\n``-separated
    line. Each line is decoded on its own, so one Windows-1252 record does not turn the file's
    UTF-8 records into mojibake, and only ``\n`` ends a record (JSON strings may hold U+2028).

    >>> [(n, d.text, d.encoding) for n, d in _jsonl_lines(
    ...     '"café"\n"caf\u2028é"\n'.encode() + b'"caf\xe9"')]
    [(1, '"café"', 'utf-8'), (2, '"caf\u2028é"', 'utf-8'), (3, '"café"', 'cp1252')]
    """
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        decoded = decode_text(data)
        for number, line in enumerate(decoded.text.split("\n"), start=1):
            yield number, Decoded(line, decoded.encoding)
        return
    if b"\x00" in data[:4096]:
        raise SkipFile("binary_file", "contains NUL bytes; not a text file")
    for number, raw in enumerate(data.split(b"\n"), start=1):  # line 1 may keep a UTF-8 BOM
        try:
            yield number, decode_text(raw, "line")
        except SkipFile as exc:
            yield number, Skip("", exc.reason, exc.detail)


def read_jsonl(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    records = 0
    for number, line in _jsonl_lines(path.read_bytes()):
        locator = f"{rel}:{number}"
        if isinstance(line, Skip):
            records += 1
            yield Skip(locator, line.reason, line.detail)
            continue
        if not line.text.strip():
            continue
        records += 1
        try:
            record = json.loads(line.text)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
            yield Skip(locator, "invalid_json", _json_error(exc))
            continue
        yield _record_document(record, locator, rel, config, line)
    if not records:
        raise SkipFile("no_records", "no JSON lines in the file (empty or blank)")


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return exc.msg
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)[:200]  # e.g. an integer longer than Python converts


def read_parquet(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    """Each row a record; only the text, id and title columns are read (and converted), so a
    column Python cannot hold (a date past year 9999) elsewhere in the table costs nothing."""
    import pyarrow.parquet as pq

    wanted = {*config.text_fields, *config.id_fields, *config.title_fields}
    try:
        file = pq.ParquetFile(path)
        names = file.schema_arrow.names
        table = file.read(columns=[name for name in names if name in wanted])
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise SkipFile("unreadable_parquet", str(exc)[:200]) from None
    if table.num_rows == 0:
        raise SkipFile("no_records", "the table has no rows")
    number = 0
    for batch in table.to_batches(max_chunksize=1024):
        for record in _batch_records(batch):
            locator = f"{rel}:{number}"
            number += 1
            if isinstance(record, Exception):
                yield Skip(locator, "unconvertible_record", f"{type(record).__name__}: {record}")
            elif not any(name in record for name in config.text_fields):
                yield Skip(locator, "no_text_field", f"none of {config.text_fields} is a "
                           f"column (columns: {names[:8]})")
            else:
                yield _record_document(record, locator, rel, config)


def _batch_records(batch) -> list[dict | Exception]:
    """The rows of ``batch`` as dicts; a row whose values Python cannot hold, its error."""
    try:
        return batch.to_pylist()
    except Exception:  # pyarrow raises several types (a date past 9999: OverflowError)
        return [_row(batch, i) for i in range(batch.num_rows)]


def _row(batch, i: int) -> dict | Exception:
    try:
        return batch.slice(i, 1).to_pylist()[0]
    except Exception as exc:
        return exc


def read_email(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    """An RFC 822 message (.eml): the subject is the title, the body every inline text part
    in order (an alternative's plain version, else its HTML as text); attachments are not."""
    import email
    from email import policy

    message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    subject = " ".join(str(message.get("subject", "")).split()) or None
    parts = _inline_text_parts(message)
    if not parts:
        raise SkipFile("no_text", "the e-mail has no text or HTML body")
    texts, errors = [], []
    for part in parts:
        try:
            texts.append(_email_part_text(part))
        except (LookupError, ValueError, SkipFile) as exc:  # an unknown charset, a broken
            errors.append(exc)                                # encoding, unparseable HTML
    if not texts:
        raise SkipFile("undecodable_text", f"e-mail body: {errors[0]}")
    yield Document(rel, rel, subject, [(None, "\n\n".join(texts))], "utf-8",
                   {"undecodable_email_parts": len(errors)} if errors else {})


def _inline_text_parts(part) -> list:
    """The parts a reader of the e-mail sees as its text, in order."""
    if part.is_attachment():
        return []
    if part.get_content_maintype() == "multipart":
        if part.get_content_subtype() == "alternative":  # one text in several forms
            best = part.get_body(preferencelist=("plain", "html"))
            return [best] if best is not None else []
        return [found for child in part.iter_parts() for found in _inline_text_parts(child)]
    return [part] if part.get_content_type() in ("text/plain", "text/html") else []


def _email_part_text(part) -> str:
    body = part.get_content()
    if part.get_content_type() != "text/html":
        return body.strip()
    _, sections = html_sections(body)
    return "\n".join(f"{heading}\n{text}" if heading else text for heading, text in sections)


READERS = {
    ".txt": read_txt, ".md": read_markdown, ".markdown": read_markdown, ".html": read_html,
    ".htm": read_html, ".jsonl": read_jsonl, ".parquet": read_parquet, ".pdf": read_pdf,
    ".eml": read_email,
}
SUPPORTED = tuple(READERS)


def corpus_files(root: Path) -> list[Path]:
    """The files below ``root`` that ingest reads (and not what it skips unread)."""
    return [entry[0] for entry in corpus_entries(root, SUPPORTED) if not isinstance(entry, Skip)]


def corpus_fingerprint(root: Path) -> str:
    """Ingest's resume key for the corpus: names, sizes and mtimes of the files it reads, so
    touching ``.git/`` or a ``.DS_Store`` does not rerun the pipeline. A corpus is never a
    stage folder: a ``_manifest.json`` in it is a file like any other (not read)."""
    return listing_fingerprint(root, corpus_files(root))


def iter_documents(root: Path, config: IngestConfig) -> Iterator[Document | Skip]:
    """Walk ``root`` recursively in a stable order; yield documents and skips."""
    if not root.is_dir():
        raise FileNotFoundError(f"corpus {root} is a file, not a folder: give the folder that "
                                "holds it" if root.exists() else f"corpus folder not found: {root}")
    for entry in corpus_entries(root, SUPPORTED):
        if isinstance(entry, Skip):
            yield entry
        else:
            yield from _read_file(*entry, config)


def _read_file(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    """The documents of one file; whatever stops its reader becomes a Skip of the file."""
    try:
        if path.stat().st_size > config.max_file_mb * 1e6:
            yield Skip(rel, "file_too_large", f"over max_file_mb={config.max_file_mb}")
            return
        yield from READERS[path.suffix.lower()](path, rel, config)
    except SkipFile as exc:
        yield Skip(rel, exc.reason, exc.detail)
    except OSError as exc:
        yield Skip(rel, "unreadable_file", str(exc))
    except Exception as exc:  # a reader's bug or a library's surprise costs this file, counted
        yield Skip(rel, "reader_error", whole_characters(f"{type(exc).__name__}: {exc}")[:300])
