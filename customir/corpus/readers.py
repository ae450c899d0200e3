"""Readers: one per file format, each turning a file into documents or counted skips.

A document is a title plus sections (heading, text). A file that cannot be read, and a record
inside it that has no text, becomes a :class:`Skip` with a reason instead of an exception, so
ingest can report every input it did not use.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

from customir.config import IngestConfig


@dataclass
class Document:
    doc_id: str
    source: str
    title: str | None
    sections: list[tuple[str | None, str]] = field(default_factory=list)  # (heading, text)
    encoding: str = "utf-8"


@dataclass
class Skip:
    item: str
    reason: str
    detail: str | None = None


SUPPORTED = (".txt", ".md", ".markdown", ".html", ".htm", ".jsonl", ".parquet", ".pdf", ".eml")


_CONTROL_BYTES = re.compile(r"[\x00-\x08\x0b\x0e-\x1f]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def whole_characters(text: str) -> str:
    r"""``text`` with each lone UTF-16 surrogate (half a character, which a JSON ``\ud83d``
    escape decodes to and no UTF-8 writer or tokenizer accepts) replaced by U+FFFD.

    >>> whole_characters(json.loads('"cut \\ud83d here, whole \\ud83d\\ude00"'))
    'cut \ufffd here, whole 😀'
    """
    return _LONE_SURROGATE.sub("\ufffd", text)


def decode_text(data: bytes, what: str = "file") -> tuple[str, str]:
    """(text, encoding): UTF-8, else UTF-16 with a byte-order mark, else Windows-1252 when the
    result reads as text; binary data raises _SkipFile.

    >>> decode_text("café".encode("cp1252"))
    ('café', 'cp1252')
    >>> decode_text("\ufeffhi".encode("utf-16-le"))
    ('hi', 'utf-16')
    """
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            raise _SkipFile("undecodable_text", "UTF-16 byte-order mark, invalid UTF-16") from None
    if b"\x00" in data[:4096]:
        raise _SkipFile("binary_file", "contains NUL bytes; not a text file")
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        position = exc.start
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        text = None
    if text is None or _CONTROL_BYTES.search(text):
        raise _SkipFile("undecodable_text", f"byte {position} is not UTF-8, and the {what} is not "
                        "Windows-1252 text either")
    return text, "cp1252"


class _SkipFile(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def read_txt(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    text, encoding = decode_text(path.read_bytes())
    yield Document(rel, rel, None, [(None, text)], encoding)


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def split_markdown(text: str) -> tuple[str | None, list[tuple[str | None, str]]]:
    """Return the first H1 as title and the text split into (heading, body) sections.

    >>> split_markdown("# T\\nintro\\n## A\\nbody")
    ('T', [('T', 'intro'), ('A', 'body')])
    """
    title, heading, lines, sections = None, None, [], []
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else _MD_HEADING.match(line)
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


def read_markdown(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    text, encoding = decode_text(path.read_bytes())
    title, sections = split_markdown(text)
    yield Document(rel, rel, title, sections, encoding)


class _HTMLText(HTMLParser):
    _BLOCK = {"p", "div", "li", "br", "tr", "section", "article", "pre", "blockquote"}
    _SKIP = {"script", "style", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: str | None = None
        self.sections: list[tuple[str | None, list[str]]] = [(None, [])]
        self._in: list[str] = []
        self._heading: list[str] | None = None
        self._title_parts: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self._in.append(tag)
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._heading = []
        elif tag == "title":
            self._title_parts = []
        elif tag in self._BLOCK:
            self.sections[-1][1].append("\n")

    def handle_endtag(self, tag):
        if tag in self._in:
            while self._in and self._in.pop() != tag:
                pass
        if tag.startswith("h") and len(tag) == 2 and self._heading is not None:
            heading = " ".join("".join(self._heading).split())
            if heading:
                self.sections.append((heading, []))
                if tag == "h1" and self.title is None:
                    self.title = heading
            self._heading = None
        elif tag == "title" and self._title_parts is not None:
            self.title = " ".join("".join(self._title_parts).split()) or None
            self._title_parts = None

    def handle_data(self, data):
        if any(t in self._SKIP for t in self._in):
            return
        if self._heading is not None:
            self._heading.append(data)
        elif self._title_parts is not None:
            self._title_parts.append(data)
        else:
            self.sections[-1][1].append(data)


def read_html(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    text, encoding = decode_text(path.read_bytes())
    parser = _HTMLText()
    parser.feed(text)
    parser.close()  # the parser holds back text it cannot yet tell from an unfinished entity
    sections = [(h, "".join(parts).strip()) for h, parts in parser.sections]
    yield Document(rel, rel, parser.title, [(h, t) for h, t in sections if t], encoding)


def read_pdf(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise _SkipFile("pdf_support_missing", "pip install pypdf") from None
    try:
        reader = PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise _SkipFile("unreadable_pdf", str(exc)[:200]) from None
    title = (reader.metadata or {}).get("/Title") if reader.metadata else None
    yield Document(rel, rel, str(title) if title else None, [(None, "\n".join(pages))])


def _first(record: dict, names: list[str]):
    for name in names:
        value = record.get(name)
        if value is not None and str(value).strip():
            return value
    return None


def _record_document(record, locator: str, rel: str, config: IngestConfig,
                     encoding: str = "utf-8") -> Document | Skip:
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
                    [(None, whole_characters(text))], encoding)


def _jsonl_lines(data: bytes) -> Iterator[tuple[int, str | Skip, str]]:
    r"""(line number, text or the Skip of an undecodable line, encoding) per ``\n``-separated
    line. Each line is decoded on its own, so one Windows-1252 record does not turn the file's
    UTF-8 records into mojibake, and only ``\n`` ends a record (JSON strings may hold U+2028).

    >>> list(_jsonl_lines('"café"\n"caf\u2028é"\n'.encode() + b'"caf\xe9"'))
    [(1, '"café"', 'utf-8'), (2, '"caf\u2028é"', 'utf-8'), (3, '"café"', 'cp1252')]
    """
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        text, encoding = decode_text(data)
        for number, line in enumerate(text.split("\n"), start=1):
            yield number, line, encoding
        return
    if b"\x00" in data[:4096]:
        raise _SkipFile("binary_file", "contains NUL bytes; not a text file")
    for number, raw in enumerate(data.split(b"\n"), start=1):  # line 1 may keep a UTF-8 BOM
        try:
            text, encoding = decode_text(raw, "line")
        except _SkipFile as exc:
            yield number, Skip("", exc.reason, exc.detail), ""
            continue
        yield number, text, encoding


def read_jsonl(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    for number, line, encoding in _jsonl_lines(path.read_bytes()):
        locator = f"{rel}:{number}"
        if isinstance(line, Skip):
            yield Skip(locator, line.reason, line.detail)
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Skip(locator, "invalid_json", exc.msg)
            continue
        yield _record_document(record, locator, rel, config, encoding)


def read_parquet(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise _SkipFile("unreadable_parquet", str(exc)[:200]) from None
    for number, record in enumerate(table.to_pylist()):
        yield _record_document(record, f"{rel}:{number}", rel, config)


def read_email(path: Path, rel: str, config: IngestConfig) -> Iterator[Document | Skip]:
    """An RFC 822 message (.eml): the subject is the title, the body its plain-text part (or
    its HTML part as text when there is no plain one)."""
    import email
    from email import policy

    message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    subject = " ".join(str(message.get("subject", "")).split()) or None
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        raise _SkipFile("no_text", "the e-mail has no text or HTML body")
    try:
        body = part.get_content()
    except (LookupError, ValueError) as exc:
        raise _SkipFile("undecodable_text", f"e-mail body: {exc}") from None
    if part.get_content_type() == "text/html":
        parser = _HTMLText()
        parser.feed(body)
        parser.close()
        body = "\n".join("".join(parts) for _, parts in parser.sections)
    yield Document(rel, rel, subject, [(None, body)], "utf-8")


READERS = {
    ".eml": read_email,
    ".txt": read_txt, ".md": read_markdown, ".markdown": read_markdown, ".html": read_html,
    ".htm": read_html, ".jsonl": read_jsonl, ".parquet": read_parquet, ".pdf": read_pdf,
}


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
    return Skip(rel, "unreadable_folder", error.strerror or str(error))


def _link_problem(path: Path, root: Path) -> Skip | None:
    """Why a symlink cannot be read as a document (None for a link to a file inside the root)."""
    rel = path.relative_to(root).as_posix()
    try:
        target = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        return Skip(rel, "broken_symlink", "the link's target does not exist (or loops)")
    if not target.is_relative_to(root.resolve()):
        return Skip(rel, "outside_corpus", "symlink to a path outside the corpus folder")
    if target.is_dir():
        return Skip(rel, "symlinked_directory", "directory links are not followed (no loops)")
    return None


def iter_documents(root: Path, config: IngestConfig) -> Iterator[Document | Skip]:
    """Walk ``root`` recursively in a stable order; yield documents and skips."""
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {root}")
    for path in _walk(root):
        if isinstance(path, Skip):
            yield path
            continue
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            yield Skip(rel, "hidden_file")
            continue
        if path.is_symlink() and (problem := _link_problem(path, root)):
            yield problem
            continue
        if not path.is_file():
            yield Skip(rel, "not_a_regular_file", "a socket, device or pipe")
            continue
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            yield Skip(rel, "unsupported_format", f"extension {path.suffix or '(none)'!r}; "
                       f"supported: {', '.join(SUPPORTED)}")
            continue
        if path.stat().st_size > config.max_file_mb * 1e6:
            yield Skip(rel, "file_too_large", f"over max_file_mb={config.max_file_mb}")
            continue
        try:
            yield from reader(path, rel, config)
        except _SkipFile as exc:
            yield Skip(rel, exc.reason, exc.detail)
        except OSError as exc:
            yield Skip(rel, "unreadable_file", str(exc))
