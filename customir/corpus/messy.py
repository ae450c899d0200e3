"""Messy inputs — the files users' folders really hold — for the robustness tests and
``benchmarks/faults.py``: each category is written to its own folder with the number of inputs
it holds (a file, or a JSONL line), so that a run can be checked against what was put in."""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["pdf_bytes", "write_categories"]


def pdf_bytes(text: str | None, unreadable_page: bool = False) -> bytes:
    """A minimal one-page PDF, with ``text`` in Helvetica or with no text at all (a scan); with
    ``unreadable_page``, a second page whose content stream cannot be decoded."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode() if text else b""
    page = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>")
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               page % 4,
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    if unreadable_page:
        objects[1] = b"<< /Type /Pages /Kids [3 0 R 6 0 R] /Count 2 >>"
        objects += [page % 7, b"<< /Length 5 /Filter /LZWDecode >>\nstream\nxxxxx\nendstream"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def _big_text(path: Path, megabytes: float) -> None:
    sentence = "Sediment cores from estuary {i} record flood layers and tidal rhythms. "
    with open(path, "w") as fh:
        i = 0
        while fh.tell() < megabytes * 1e6:
            fh.write("".join(sentence.format(i=i + k) for k in range(100)) + "\n\n")
            i += 100


def write_categories(root: Path, big_mb: float = 50.0) -> dict[str, int]:
    """Write one folder per category under ``root``; return {category: inputs in it}."""
    inputs: dict[str, int] = {}

    def folder(name: str, count: int) -> Path:
        path = root / name
        path.mkdir(parents=True)
        inputs[name] = count
        return path

    text = "A plain note about quarterly revenue growth in the northern region."
    folder("empty file", 1).joinpath("empty.txt").write_text("")
    folder("whitespace only", 1).joinpath("blank.md").write_text("   \n\n\t\n")
    folder("binary: image", 1).joinpath("photo.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    program = Path(sys.executable).resolve().read_bytes()[:65536]
    folder("binary: executable", 1).joinpath("tool").write_bytes(program)
    folder("binary named .txt", 1).joinpath("tool.txt").write_bytes(program)
    folder("latin-1 text", 1).joinpath("cafe.txt").write_bytes(
        "Le café au lait est servi à côté de la crème brûlée.".encode("latin-1"))
    folder("UTF-16 text", 1).joinpath("tides.txt").write_bytes(
        "\ufeffUTF-16 text about tidal energy storage in coastal basins.".encode("utf-16-le"))
    _big_text(folder(f"{big_mb:g} MB document", 1) / "big.txt", big_mb)
    records = [{"_id": "r1", "title": "Solar", "text": "Solar panels convert sunlight."},
               "this line is not json", {"title": "no id", "text": "A record without an id."},
               {"_id": "r1", "text": "Another record reusing the id r1."}, ["a", "list"],
               {"_id": "r4", "body": "no text field"}, "", {"_id": "r5", "text": "   "}]
    with open(folder("JSONL: malformed lines, missing and duplicate ids",
                     sum(1 for r in records if r != "")) / "records.jsonl", "w") as fh:
        for record in records:
            fh.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    folder("HTML with scripts and styles", 1).joinpath("page.html").write_text(
        "<html><head><title>Routing</title><script>var secret = 1;</script><style>p { color: "
        "crimson; }</style></head><body><h1>Routing</h1><p>Network routing tables map "
        "prefixes to next hops.</p></body></html>")
    folder("PDF with text", 1).joinpath("reefs.pdf").write_bytes(
        pdf_bytes("Portable document about coral reefs and their bleaching."))
    folder("PDF scanned (no text)", 1).joinpath("scan.pdf").write_bytes(pdf_bytes(None))
    folder("PDF broken", 1).joinpath("broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    folder("parquet broken", 1).joinpath("table.parquet").write_bytes(b"not parquet")
    folder("text empty after cleaning", 1).joinpath("shell.html").write_text(
        "<html><head><script>init();</script><style>b {}</style></head>"
        "<body> &nbsp; <div>\t</div> </body></html>")
    loop = folder("symlink loop", 2)
    (loop / "note.txt").write_text(text)
    (loop / "again").symlink_to(loop)
    outside = folder("symlink outside the corpus", 2)
    (outside / "note.txt").write_text(text + " Outside check.")
    (outside / "escape.txt").symlink_to("/etc/hostname")
    dangling = folder("dangling symlink", 2)
    (dangling / "note.txt").write_text(text + " Dangling check.")
    (dangling / "gone.txt").symlink_to(dangling / "missing.txt")
    folder("name with spaces and non-ASCII", 1).joinpath("Notes ü — final.md").write_text(
        "# Ümlauts\n\nA file name with spaces and non-ASCII letters in it.\n")
    folder("hidden file", 1).joinpath(".secret.txt").write_text("hidden")
    return inputs
