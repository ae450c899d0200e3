"""Bytes to text: which encoding a file (or a JSONL line) is in, decided from its bytes.

UTF-8 first; UTF-16 with a byte-order mark; an encoding the file declares (an HTML ``<meta>``);
UTF-8 with the odd invalid byte replaced (and counted) when the rest is UTF-8; else
Windows-1252 when that reads as text, unless its reading is mostly accented letters — the mark of
a Cyrillic, Greek, Hebrew or Arabic code page read as Latin — and charset-normalizer finds the
page. Binary data is a :class:`SkipFile`.
"""

from __future__ import annotations

import codecs
import re
from typing import NamedTuple

from customir.corpus.files import SkipFile

_CONTROL_BYTES = re.compile(r"[\x00-\x08\x0b\x0e-\x1f]")
_REPLACEMENT = "\ufffd".encode()
# where the HTML standard's prescan looks for <meta charset=...> or <meta http-equiv
# content="...; charset=...">
_META_CHARSET = re.compile(rb"<meta[^>]*?charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
_PRESCAN_BYTES = 1024
# labels the HTML standard reads as another encoding (a page "in Latin-1" is Windows-1252)
_HTML_ALIASES = {"iso8859-1": "cp1252", "ascii": "cp1252",
                 "utf-16": "utf-8", "utf-16-le": "utf-8", "utf-16-be": "utf-8"}


class Decoded(NamedTuple):
    text: str
    encoding: str
    replaced: int = 0  # invalid UTF-8 sequences written as U+FFFD


def decode_text(data: bytes, what: str = "file", declared: str | None = None) -> Decoded:
    """The text of ``data``; ``declared`` is the encoding the file names for itself (used when
    the bytes are not UTF-8); binary data raises SkipFile.

    >>> decode_text("café".encode("cp1252"))
    Decoded(text='café', encoding='cp1252', replaced=0)
    >>> decode_text("\ufeffhi".encode("utf-16-le"))
    Decoded(text='hi', encoding='utf-16', replaced=0)
    >>> decode_text("résumé: ".encode() + b"\\x92")  # UTF-8 with one stray Windows-1252 byte
    Decoded(text='résumé: \ufffd', encoding='utf-8', replaced=1)
    """
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return Decoded(data.decode("utf-16"), "utf-16")
        except UnicodeDecodeError:
            raise SkipFile("undecodable_text", "UTF-16 byte-order mark, invalid UTF-16") from None
    if b"\x00" in data[:4096]:
        raise SkipFile("binary_file", "contains NUL bytes; not a text file")
    try:
        return Decoded(data.decode("utf-8-sig"), "utf-8")
    except UnicodeDecodeError as exc:
        position = exc.start
    decoded = (_decode_declared(data, declared) or _decode_mostly_utf8(data)
               or _decode_single_byte(data))
    if decoded is None or _CONTROL_BYTES.search(decoded.text):
        raise SkipFile("undecodable_text", f"byte {position} is not UTF-8, and the {what} is "
                       "not Windows-1252 text either")
    return decoded


# Windows code pages (and KOI8-R) of scripts whose letters all lie beyond ASCII: read as
# Windows-1252 they become runs of accented Latin letters. Latin code pages (1250, 1254, 1257)
# are left out: telling them from 1252 on a few accents is a guess charset-normalizer gets wrong.
_NON_LATIN_PAGES = ["cp1251", "koi8_r", "cp1253", "cp1255", "cp1256"]
_MIN_LETTERS_TO_DETECT = 20  # below this a reading's letters say too little to switch pages
_MOSTLY_BEYOND_ASCII = 0.5   # French prose is ~4 % accented letters, a 1251 text read as 1252 100 %


def _decode_single_byte(data: bytes) -> Decoded | None:
    """Windows-1252, or the non-Latin code page a mostly-accented 1252 reading betrays.

    >>> _decode_single_byte("Исследование показало снижение уровня белка.".encode("cp1251"))
    Decoded(text='Исследование показало снижение уровня белка.', encoding='cp1251', replaced=0)
    >>> _decode_single_byte("Ça a été très éprouvé à l'été.".encode("cp1252")).encoding
    'cp1252'
    """
    latin = _decode_as(data, "cp1252")
    if latin is not None and not _mostly_beyond_ascii(latin.text):
        return latin
    # also where 1252 fails: 0x81 is Ѓ in 1251, nothing in 1252
    return _detect_non_latin(data) or latin


def _mostly_beyond_ascii(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    beyond = sum(not c.isascii() for c in letters)
    return len(letters) >= _MIN_LETTERS_TO_DETECT and beyond >= _MOSTLY_BEYOND_ASCII * len(letters)


def _detect_non_latin(data: bytes) -> Decoded | None:
    """charset-normalizer's likeliest non-Latin page whose reading is mostly letters beyond
    ASCII. On a short line its first guess can be a page that reads the bytes as Hebrew
    vowel points (not letters): the next guess is taken then.

    >>> _detect_non_latin("Инсулин снижает сахар крови.".encode("koi8_r"))
    Decoded(text='Инсулин снижает сахар крови.', encoding='koi8_r', replaced=0)
    """
    import charset_normalizer

    for match in charset_normalizer.from_bytes(data, cp_isolation=_NON_LATIN_PAGES):
        if _mostly_beyond_ascii(str(match)):
            return Decoded(str(match), match.encoding)
    return None


def _decode_as(data: bytes, encoding: str) -> Decoded | None:
    try:
        return Decoded(data.decode(encoding), encoding)
    except UnicodeDecodeError:
        return None


def _decode_declared(data: bytes, declared: str | None) -> Decoded | None:
    if not declared:
        return None
    try:
        name = codecs.lookup(declared).name
    except LookupError:
        return None  # a label Python does not know: decide from the bytes
    return _decode_as(data, _HTML_ALIASES.get(name, name))


def _decode_mostly_utf8(data: bytes) -> Decoded | None:
    """UTF-8 with its invalid sequences replaced, when the bytes hold at least as many valid
    UTF-8 characters beyond ASCII as invalid sequences: one stray byte in a UTF-8 file must not
    turn its every accent into mojibake. (Windows-1252 text almost never holds a valid UTF-8
    sequence, so it still decodes as Windows-1252.)"""
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    replaced = text.count("\ufffd") - data.count(_REPLACEMENT)
    beyond_ascii = len(text) - len(text.encode("ascii", errors="ignore")) - replaced
    return Decoded(text, "utf-8", replaced) if beyond_ascii >= replaced else None


def declared_charset(data: bytes) -> str | None:
    """The encoding an HTML page declares in a ``<meta>`` near its start.

    >>> declared_charset(b'<head><meta http-equiv="content-type" '
    ...                  b'content="text/html; charset=Windows-1251"></head>')
    'Windows-1251'
    """
    match = _META_CHARSET.search(data[:_PRESCAN_BYTES])
    return match.group(1).decode("ascii") if match else None
