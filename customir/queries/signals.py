"""Free training signals and the related chunks of multi-hop questions — pure functions.

- Structural pseudo-queries: a document's title (an e-mail's subject line) for its first chunk,
  a markdown/HTML heading for the first chunk under it. Boilerplate ones ("Introduction", a
  "Microsoft Word - draft.docx" title, a title that is its whole chunk) say nothing about their
  chunk and are dropped (:func:`structural_reason`); so is one several documents share
  (:func:`shared_by_documents`), which fits each of them.
- Inverse cloze (Lee et al. 2019, ORQA): one sentence of a chunk as the query, the rest of the
  chunk as the positive — the sentence is removed so the pair is not solved by string matching.
- Related chunks: a multi-hop question's other passages are the anchor's nearest neighbours
  (BM25 or the base model) from other documents.
"""

from __future__ import annotations

import hashlib
import re

from customir.queries.filtering import word_count

# Part of the generate stage's config hash: bump it when the same chunks give other free
# signals or other structural filter verdicts, so a rerun does not reuse the old queries.
SIGNALS_VERSION = "3"
TITLE_KINDS = ("title", "subject")  # queries naming a whole document

_REPLY_PREFIX = re.compile(r"^((re|fwd?|aw|wg)\s*:\s*)+", re.IGNORECASE)
# A run of sentence-final marks (Latin or full-width), the closing quotes and brackets after
# them, and the space before the next sentence; whether it is a boundary is decided in code
# (Python's re has no "any uppercase letter" class).
_STOP = re.compile(r"[.!?。！？]+[\"'”’」』)）\]]*(\s*)")
_OPENERS = "\"'“‘([（「『"
# Abbreviations that do not end a sentence, and those that do not before a number ("Fig. 2").
_ABBREVIATIONS = frozenset({"al", "approx", "ca", "cf", "dr", "mr", "mrs", "ms", "prof", "vs"})
_NUMBERED = frozenset({"fig", "figs", "eqs", "nos", "refs", "sec", "tab", "vol"})
_INITIALISM = re.compile(r"(?:[a-z]\.)+[a-z]")  # e.g, i.e, u.s (the last full stop is the match)
_WORD = re.compile(r"\w+")
# Section names every paper or report has: as a query they fit every document of the corpus.
_GENERIC_HEADING = re.compile(
    # "1.", "2.1" (normalized to "2 1"), "IV." numbering
    r"(?:(?:\d+(?:[ .]\d+)*|(?=[ivx])x{0,3}(?:ix|iv|v?i{0,3}))[.):]?\s+)?"
    r"(?:abstract|introduction|background|methods?|methodology|materials and methods|"
    r"methods and materials|results|results and discussion|discussion|conclusions?|summary|"
    r"references|bibliography|acknowledge?ments?|appendix(?: [a-z0-9]+)?|keywords|untitled|"
    r"untitled document|contents|table of contents)\W*")
# Titles a PDF or Office file carries from the program or file that made it: "Microsoft Word -
# …", or a bare file name (one word ending in a document extension; "Parsing config.txt" stays).
_FILE_NAME_TITLE = re.compile(
    r"^microsoft (?:word|excel|powerpoint|visio|outlook) - |"
    r"^\S+\.(?:docx?|pdf|pptx?|xlsx?|txt|rtf|odt|tex)$", re.IGNORECASE)


def structural_queries(chunk: dict, first_under_heading: bool) -> list[tuple[str, str]]:
    """(kind, query) pairs the document's own structure gives for free.

    A title describes its document, so it is paired with the document's first chunk (an
    e-mail's subject line is its title, kind ``subject``; ``generate.title_chunk: best`` moves
    it to the chunk that matches it best); a heading with the first chunk under it.

    >>> structural_queries({"title": "Aspirin", "chunk_index": 0, "heading": "Dose"}, True)
    [('title', 'Aspirin'), ('heading', 'Dose')]
    >>> structural_queries({"title": "Re: dosing", "chunk_index": 0, "source": "m/1.eml"}, False)
    [('subject', 'dosing')]
    """
    pairs = []
    if chunk.get("title") and chunk.get("chunk_index") == 0:
        if (chunk.get("source") or "").lower().endswith(".eml"):
            pairs.append(("subject", _REPLY_PREFIX.sub("", " ".join(chunk["title"].split()))))
        else:
            pairs.append(("title", " ".join(chunk["title"].split())))
    if chunk.get("heading") and first_under_heading:
        pairs.append(("heading", " ".join(chunk["heading"].split())))
    return pairs


def first_chunks_under_headings(doc_ids: list[str], chunk_indexes: list[int],
                                headings: list[str | None], chunk_ids: list[str]) -> set[str]:
    """Ids of the chunks that open a (document, heading) run.

    >>> sorted(first_chunks_under_headings(["d", "d", "d"], [0, 1, 2], ["A", "A", "B"],
    ...                                    ["d#0", "d#1", "d#2"]))
    ['d#0', 'd#2']
    """
    order = sorted(range(len(chunk_ids)), key=lambda i: (doc_ids[i], chunk_indexes[i]))
    firsts, previous = set(), None
    for i in order:
        key = (doc_ids[i], headings[i])
        if headings[i] and key != previous:
            firsts.add(chunk_ids[i])
        previous = key
    return firsts


def structural_reason(query: str, passage: str) -> str | None:
    """Why a title or heading is no training query for ``passage`` (None when it is one):
    ``generic_heading`` (a section name every paper has), ``file_name_title`` (a PDF/Office
    title made from a program or file name) or ``copied_from_passage`` (the query is the whole
    passage, so the pair teaches string matching).

    >>> [structural_reason(q, "Aspirin dose.") for q in ("1. Introduction", "Aspirin dose",
    ...                                                  "Microsoft Word - draft_v3.docx")]
    ['generic_heading', 'copied_from_passage', 'file_name_title']
    >>> [structural_reason(q, "Take 75 mg daily.") for q in (
    ...     "Aspirin dose", "IV. Results", "2.1 Methods", "Civil Methods", "Parsing config.txt",
    ...     "notes_v2.txt")]
    [None, 'generic_heading', 'generic_heading', None, None, 'file_name_title']
    """
    words = _normalized(query)
    if _GENERIC_HEADING.fullmatch(words):
        return "generic_heading"
    if _FILE_NAME_TITLE.search(query.strip()):
        return "file_name_title"
    if words and words == _normalized(passage):
        return "copied_from_passage"
    return None


def shared_by_documents(queries: list[str], doc_ids: list[str]) -> list[bool]:
    """Whether each structural query (compared lower-cased, punctuation aside) also comes from
    another document: such a query fits each of them, so keeping it for one document would make
    the others false negatives.

    >>> shared_by_documents(["Dosage", "dosage:", "Risks", "Risks"], ["a", "b", "a", "a"])
    [True, True, False, False]
    """
    keys = [_normalized(q) for q in queries]
    docs: dict[str, set[str]] = {}
    for key, doc in zip(keys, doc_ids):
        docs.setdefault(key, set()).add(doc)
    return [bool(key) and len(docs[key]) > 1 for key in keys]


def _normalized(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def cloze_sentences(text: str, lowercase_starts: bool = False) -> list[tuple[str, str]]:
    """(glue, sentence) pairs of ``text``, ``glue`` being what joined a sentence to the one
    before it (a space, or nothing after a Chinese or Japanese full stop).

    ``。！？`` end a sentence; Latin ``.!?`` before Chinese or Japanese text, or before a space
    and an uppercase letter of any script or a digit — a full stop not after an abbreviation
    (``e.g.``, ``et al.``, a one-letter initial as in "J. Smith", ``Fig. 2``). With
    ``lowercase_starts`` a lowercase letter starts a sentence too.
    Unlike :func:`customir.corpus.chunking.split_sentences` (which only has to find places to
    cut a chunk) the sentences here become queries, so they are found in any script.

    >>> [s for _, s in cloze_sentences("Он снижает сахар. Инсулин — гормон. See Fig. 2 of al. 9.")]
    ['Он снижает сахар.', 'Инсулин — гормон.', 'See Fig. 2 of al. 9.']
    >>> cloze_sentences("胰岛素是激素。它降低血糖！ok. fine"), cloze_sentences("ok. fine", True)
    ([('', '胰岛素是激素。'), ('', '它降低血糖！'), ('', 'ok. fine')], [('', 'ok.'), (' ', 'fine')])
    """
    text = " ".join(text.split())
    sentences: list[tuple[str, str]] = []
    start, glue = 0, ""
    for stop in _STOP.finditer(text):
        if stop.end() < len(text) and _ends_sentence(text, stop, lowercase_starts):
            sentences.append((glue if sentences else "", text[start:stop.end()].strip()))
            start, glue = stop.end(), " " if stop.group(1) else ""
    if text[start:].strip():
        sentences.append((glue if sentences else "", text[start:].strip()))
    return sentences


def _ends_sentence(text: str, stop: re.Match, lowercase_starts: bool) -> bool:
    after = text[stop.end():].lstrip(_OPENERS)
    if not after:
        return False
    first = after[0]
    if any(mark in stop.group(0) for mark in "。！？"):
        return True
    if first.isalpha() and not first.isupper() and not first.islower():
        return True  # Chinese or Japanese after a Latin full stop, with or without a space
    if not stop.group(1):
        return False  # "3.5", "e.g.,", "example.com"
    if stop.group(0).startswith(".") and _abbreviation(text[:stop.start()], first):
        return False
    return first.isupper() or first.isdigit() or (lowercase_starts and first.islower())


def _abbreviation(before: str, first: str) -> bool:
    word = before.rsplit(" ", 1)[-1].lstrip(_OPENERS).lower()
    if word in _ABBREVIATIONS or _INITIALISM.fullmatch(word):
        return True
    if len(word) == 1 and word.isalpha():
        return True  # an initial: "J. Smith", "S. aureus"
    return first.isdigit() and word.isalpha() and (len(word) <= 2 or word in _NUMBERED)


def inverse_cloze_pair(text: str, key: str, seed: int, min_query_words: int = 4,
                       min_rest_words: int = 8) -> tuple[str, str] | None:
    """(sentence, rest of the chunk) with a seeded choice of sentence, or None when the chunk
    has no sentence long enough with enough text left around it (the stage counts those as
    ``inverse_cloze_no_sentence``). Words are counted as the query filters count them (one per
    Chinese or Japanese character); in a chunk without a single uppercase letter (lower-cased
    text), a lowercase letter may start a sentence.

    >>> inverse_cloze_pair("Insulin is a hormone made in the pancreas. It lowers blood glucose "
    ...                    "after meals in healthy adults. Its lack causes diabetes in children.",
    ...                    "c#0", seed=1)[0]
    'It lowers blood glucose after meals in healthy adults.'
    """
    sentences = cloze_sentences(text)
    if len(sentences) < 2 and not any(char.isupper() for char in text):
        sentences = cloze_sentences(text, lowercase_starts=True)
    usable = [i for i, (_, s) in enumerate(sentences) if word_count(s) >= min_query_words]
    if len(sentences) < 2 or not usable:
        return None
    h = int(hashlib.sha1(f"{seed}:ict:{key}".encode()).hexdigest()[:12], 16)
    pick = usable[h % len(usable)]
    kept = [pair for i, pair in enumerate(sentences) if i != pick]
    rest = "".join((glue if i else "") + s for i, (glue, s) in enumerate(kept))
    if word_count(rest) < min_rest_words:
        return None
    return sentences[pick][1], rest


def related_chunks(anchor_row: int, ranked_rows: list[int], doc_of_row: list[str],
                   extra: int) -> list[int]:
    """Up to ``extra`` rows to pair with ``anchor_row`` in a multi-hop question: the best-ranked
    neighbours from documents other than the anchor's and each other's (a question over two
    chunks of one document is not multi-hop).

    >>> related_chunks(0, [0, 1, 2, 3], ["a", "a", "b", "b"], 2)
    [2]
    """
    docs = {doc_of_row[anchor_row]}
    picked = []
    for row in ranked_rows:
        if row < 0 or row == anchor_row or doc_of_row[row] in docs:
            continue
        picked.append(row)
        docs.add(doc_of_row[row])
        if len(picked) == extra:
            break
    return picked
