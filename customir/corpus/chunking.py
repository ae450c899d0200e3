"""Token-aware chunking: pack whole sentences up to a budget of base-model word pieces.

Counting in the embedding model's own tokenizer keeps every chunk inside what the model reads
(MiniLM truncates at 256 word pieces), so no passage text is silently cut off during training.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable, Iterable, Iterator

# Part of the ingest stage's config hash: bump it when chunk boundaries change for the same
# settings, so a rerun after an upgrade re-chunks instead of resuming from the old chunks.
CHUNKER_VERSION = "3"

# Chinese and Japanese text (and Korean syllables) end sentences without a space after them.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CLOSERS = "」』）)\"'”’"  # a closing quote or bracket after the full stop stays with it
_SENTENCE_END = re.compile(
    r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])"  # Latin: .!? then a space, then a capital or digit
    rf"|(?<=。)(?![{_CLOSERS}])\s*"  # the ideographic full stop, space or not
    # ！？ (!? after NFKC), or a full stop before a closer, then (space or not) CJK text
    rf"|(?:(?<=[。.!?！？])|(?<=[。.!?！？][{_CLOSERS}]))\s*(?=[{_CJK}])"
    r"|\n{2,}"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Normalize unicode, drop control characters, collapse runs of blank space.

    >>> clean_text("a\\u00a0 b\\x00\\n\\n\\n c")
    'a b\\n\\nc'
    """
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub("", text)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paragraphs if p)


def split_sentences(text: str) -> list[tuple[str, str]]:
    """(glue, sentence) pairs, where ``glue`` joins the sentence to the one before it: a space
    where white space parted them, nothing where only a full stop did (Chinese, Japanese).

    >>> split_sentences("One. Two\\n\\nthree, four 五。六！七")
    [('', 'One.'), (' ', 'Two'), (' ', 'three, four 五。'), ('', '六！'), ('', '七')]
    """
    sentences: list[tuple[str, str]] = []
    start, spaced = 0, False
    for end, next_start in _sentence_ends(text):
        raw = text[start:end]
        if raw.strip():
            glue = " " if sentences and (spaced or raw[0].isspace()) else ""
            sentences.append((glue, raw.strip()))
            spaced = raw[-1].isspace()
        else:
            spaced = spaced or bool(raw)
        spaced = spaced or next_start > end  # the separator itself is white space
        start = next_start
    return sentences


def _sentence_ends(text: str) -> Iterator[tuple[int, int]]:
    """(end of a sentence, start of the next) at each boundary, then the end of the text."""
    for match in _SENTENCE_END.finditer(text):
        yield match.start(), match.end()
    yield len(text), len(text)


def chunk_text(text: str, max_tokens: int, count_tokens: Callable[[str], int],
               min_tokens: int = 0) -> list[str]:
    """Greedily pack sentences into chunks of at most ``max_tokens``; split overlong sentences
    by words (and a word over the budget, a run of Chinese text without a full stop, by
    characters). A chunk under ``min_tokens`` (a short sentence between two long ones, the end
    of a split sentence) then joins its smaller neighbour if the two stay under ``max_tokens +
    min_tokens``, so its text is kept rather than skipped by ingest as too short.

    >>> words = lambda s: len(s.split())
    >>> chunk_text("One two three. Four. Five six seven.", 3, words)
    ['One two three.', 'Four.', 'Five six seven.']
    >>> chunk_text("One two three. Four. Five six seven.", 3, words, min_tokens=2)
    ['One two three. Four.', 'Five six seven.']
    """
    packed = _pack(_sentence_pieces(text, max_tokens, count_tokens), max_tokens)
    glues = [glue for glue, _, _ in packed]
    chunks = [chunk for _, chunk, _ in packed]
    sizes = [size for _, _, size in packed]
    _merge_short(glues, chunks, sizes, max_tokens + min_tokens, min_tokens)
    return chunks


# A piece of text to pack: (glue to the piece before it, text, word pieces).
Piece = tuple[str, str, int]


def _sentence_pieces(text: str, max_tokens: int,
                     count_tokens: Callable[[str], int]) -> Iterator[Piece]:
    """Each sentence, or the parts of one over the budget."""
    for glue, sentence in split_sentences(text):
        n = count_tokens(sentence)
        if n <= max_tokens:
            yield glue, sentence, n
            continue
        for i, (part_glue, part, _) in enumerate(_pack(_words(sentence, max_tokens, count_tokens),
                                                        max_tokens)):
            yield (glue if i == 0 else part_glue), part, count_tokens(part)


def _words(sentence: str, max_tokens: int, count_tokens: Callable[[str], int]) -> Iterator[Piece]:
    # Word-piece counts add up over whitespace-separated words, so count each word once
    # (linear time even for a huge unpunctuated blob).
    for i, word in enumerate(sentence.split()):
        n = count_tokens(word)
        if n <= max_tokens:
            yield (" " if i else ""), word, n
            continue
        for j, part in enumerate(_split_characters(word, max_tokens, count_tokens)):
            yield (" " if i and not j else ""), part, count_tokens(part)


def _split_characters(word: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    """``word`` cut into runs of characters within the budget: a run of ``max_tokens``
    characters, halved until it fits (a word piece spans at least one character in most
    vocabularies, so this rarely halves). Linear in the length of ``word`` up to that factor."""
    parts, start = [], 0
    while start < len(word):
        size = max_tokens
        while size > 1 and count_tokens(word[start:start + size]) > max_tokens:
            size //= 2
        parts.append(word[start:start + size])
        start += size
    return parts


def _pack(pieces: Iterable[Piece], max_tokens: int) -> list[Piece]:
    """Greedily join consecutive pieces (with their glue) while the word pieces they hold add
    up to at most ``max_tokens``; a piece that alone is over it stays alone."""
    packed: list[Piece] = []
    parts: list[str] = []
    glue, total = "", 0
    for piece_glue, text, n in pieces:
        if parts and total + n > max_tokens:
            packed.append((glue, "".join(parts), total))
            parts, total = [], 0
        if parts:
            parts += [piece_glue, text]
        else:
            parts, glue = [text], piece_glue
        total += n
    if parts:
        packed.append((glue, "".join(parts), total))
    return packed


def _merge_short(glues: list[str], chunks: list[str], sizes: list[int], limit: int,
                 min_tokens: int) -> None:
    """In place: join each chunk under ``min_tokens`` to its smaller neighbour (else the other)
    while the joined chunk stays under ``limit``. Word-piece counts add up over the glue."""
    i = 0
    while i < len(chunks):
        if sizes[i] >= min_tokens:
            i += 1
            continue
        neighbours = sorted((sizes[j], j) for j in (i - 1, i + 1) if 0 <= j < len(chunks))
        j = next((j for size, j in neighbours if size + sizes[i] < limit), None)
        if j is None:
            i += 1       # nowhere to go: ingest counts it as too short
            continue
        lo = min(i, j)
        chunks[lo:lo + 2] = [f"{chunks[lo]}{glues[lo + 1]}{chunks[lo + 1]}"]
        sizes[lo:lo + 2] = [sizes[lo] + sizes[lo + 1]]
        del glues[lo + 1]
        i = lo


def normalized_key(text: str) -> str:
    """Key for exact-duplicate detection: case and whitespace do not make a chunk new."""
    return " ".join(text.lower().split())
