"""Token-aware chunking: pack whole sentences up to a budget of base-model word pieces.

Counting in the embedding model's own tokenizer keeps every chunk inside what the model reads
(MiniLM truncates at 256 word pieces), so no passage text is silently cut off during training.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

# Part of the ingest stage's config hash: bump it when chunk boundaries change for the same
# settings, so a rerun after an upgrade re-chunks instead of resuming from the old chunks.
CHUNKER_VERSION = "2"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|\n{2,}")
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


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def chunk_text(text: str, max_tokens: int, count_tokens: Callable[[str], int],
               min_tokens: int = 0) -> list[str]:
    """Greedily pack sentences into chunks of at most ``max_tokens``; split overlong sentences
    by words. A chunk under ``min_tokens`` (a short sentence between two long ones, the end of a
    split sentence) then joins its smaller neighbour if the two stay under ``max_tokens +
    min_tokens``, so its text is kept rather than skipped by ingest as too short.

    >>> words = lambda s: len(s.split())
    >>> chunk_text("One two three. Four. Five six seven.", 3, words)
    ['One two three.', 'Four.', 'Five six seven.']
    >>> chunk_text("One two three. Four. Five six seven.", 3, words, min_tokens=2)
    ['One two three. Four.', 'Five six seven.']
    """
    chunks: list[str] = []
    sizes: list[int] = []
    current: list[str] = []
    current_tokens = 0
    for sentence in split_sentences(text):
        n = count_tokens(sentence)
        pieces = [sentence] if n <= max_tokens else _split_words(sentence, max_tokens, count_tokens)
        for piece in pieces:
            n = count_tokens(piece)
            if current and current_tokens + n > max_tokens:
                chunks.append(" ".join(current))
                sizes.append(current_tokens)
                current, current_tokens = [], 0
            current.append(piece)
            current_tokens += n
    if current:
        chunks.append(" ".join(current))
        sizes.append(current_tokens)
    _merge_short(chunks, sizes, max_tokens + min_tokens, min_tokens)
    return chunks


def _merge_short(chunks: list[str], sizes: list[int], limit: int, min_tokens: int) -> None:
    """In place: join each chunk under ``min_tokens`` to its smaller neighbour (else the other)
    while the joined chunk stays under ``limit``. Word-piece counts add up over the space."""
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
        chunks[lo:lo + 2] = [f"{chunks[lo]} {chunks[lo + 1]}"]
        sizes[lo:lo + 2] = [sizes[lo] + sizes[lo + 1]]
        i = lo


def _split_words(sentence: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    # Word-piece counts add up over whitespace-separated words, so count each word once
    # (linear time even for a huge unpunctuated blob).
    pieces, current, current_tokens = [], [], 0
    for word in sentence.split():
        n = count_tokens(word)
        if current and current_tokens + n > max_tokens:
            pieces.append(" ".join(current))
            current, current_tokens = [], 0
        current.append(word)
        current_tokens += n
    if current:
        pieces.append(" ".join(current))
    return pieces


def normalized_key(text: str) -> str:
    """Key for exact-duplicate detection: case and whitespace do not make a chunk new."""
    return " ".join(text.lower().split())
