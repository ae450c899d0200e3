"""The corpus profile: a short description of what the corpus is, fed into every query-writing
prompt (CustomIR's first stage: analyse the corpus before generating queries for it).

From a seeded sample of chunks it takes the top TF-IDF terms, sample titles and the kinds of
documents (file types, e-mails, sections with headings) — all a small model can use. With a strong
backend the LLM also writes a two-sentence description from these facts (``generate.profile``).
The profile is written to ``queries/profile.json`` and recorded in the stage's manifest.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import PurePosixPath

_TOKEN = re.compile(r"[a-z][a-z0-9-]{2,}")


def _stopwords() -> set[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return set(STOPWORDS_EN_PLUS)


def top_tfidf_terms(texts: list[str], n: int = 25, min_df: int = 2) -> list[str]:
    """The ``n`` terms with the highest summed TF-IDF over ``texts`` (terms in at least
    ``min_df`` texts, stopwords removed); what the corpus is about, in its own words.

    >>> top_tfidf_terms(["insulin glucose insulin", "insulin receptor", "glucose uptake", "cat"],
    ...                 n=2)
    ['insulin', 'glucose']
    """
    stop = _stopwords()
    counts = [Counter(t for t in _TOKEN.findall(text.lower()) if t not in stop) for text in texts]
    df = Counter(term for c in counts for term in c)
    total: Counter = Counter()
    for c in counts:
        length = sum(c.values()) or 1
        for term, tf in c.items():
            if df[term] >= min_df:
                total[term] += tf / length * math.log(len(texts) / df[term] + 1)
    return [term for term, _ in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def document_kinds(sources: list[str], headings: list[str | None]) -> list[str]:
    """What kinds of documents the sample holds, most common first.

    >>> document_kinds(["a.md", "b.md", "c.eml"], ["Intro", None, None])
    ['md files (2)', 'e-mails (1)', 'sections with headings (1/3)']
    """
    kinds = Counter()
    for source in sources:
        suffix = PurePosixPath(source or "").suffix.lower().lstrip(".") or "no-extension"
        kinds["e-mails" if suffix == "eml" else f"{suffix} files"] += 1
    out = [f"{kind} ({n})" for kind, n in kinds.most_common()]
    with_headings = sum(1 for h in headings if h)
    if with_headings:
        out.append(f"sections with headings ({with_headings}/{len(headings)})")
    return out


def corpus_profile(texts: list[str], titles: list[str | None], sources: list[str],
                   headings: list[str | None], n_terms: int = 25, n_titles: int = 10) -> dict:
    """The profile of a chunk sample (without the LLM description; see
    :func:`customir.queries.generate.make_profile`).
    """
    seen: dict[str, None] = {}
    for title in titles:
        if title and title.strip():
            seen.setdefault(" ".join(title.split()), None)
    return {
        "sample_chunks": len(texts),
        "top_terms": top_tfidf_terms(texts, n_terms),
        "titles": list(seen)[:n_titles],
        "document_kinds": document_kinds(sources, headings),
        "description": None,
    }
