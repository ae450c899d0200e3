"""The generate stage's filters over all its candidates (step 4), run in this order.

1. :func:`filter_each`: per-query rules (:mod:`customir.queries.filtering`: length, copies of
   the passage, "the passage"), boilerplate titles and headings and ones several documents share
   (:mod:`customir.queries.signals`), exact duplicates.
2. :func:`filter_near_duplicates`: base-model cosine; of a group the first in ``KIND_ORDER`` stays.
3. :func:`filter_round_trip`: an LLM query must find one of its chunks in the ranker's top k
   (Promptagator).
4. :func:`filter_by_judge`: LLM-judge grade (Nemotron; off unless ``judge_min_score``).

Each drops a candidate by setting its ``reason``, which the stage counts in its manifest.
"""

from __future__ import annotations

from pathlib import Path

from customir.config import GenerateConfig
from customir.queries import prompts
from customir.queries.asking import Answers, Ask, ask_generate_llm, require_an_answer
from customir.queries.candidates import Candidate, Chunks, chunk_index
from customir.queries.filtering import near_duplicates, reject_reason
from customir.queries.signals import shared_by_documents, structural_reason

# Near-duplicate dedup keeps the first of a group in this order: the corpus's own words first.
KIND_ORDER = ("title", "subject", "heading", "question", "claim", "keyword", "multihop",
              "inverse_cloze")


def filter_each(candidates: list[Candidate], chunks: Chunks, config: GenerateConfig) -> None:
    """Drop (set ``reason`` of) each candidate that fails a per-query filter or repeats a kept
    query. A title or heading that several documents share fits each of them, so every copy is
    dropped (``shared_title``) rather than the first document's kept as the answer."""
    structural = [i for i, c in enumerate(candidates) if c.origin == "structural"]
    shared = {i for i, flag in zip(structural, shared_by_documents(
        [candidates[i].query for i in structural],
        [chunks.docs[candidates[i].rows[0]] for i in structural])) if flag}
    seen: set[str] = set()
    for i, c in enumerate(candidates):
        if c.reason is not None:  # dropped before the filters (no inverse-cloze sentence)
            continue
        passage = " ".join(c.positive_text or chunks.texts[r] for r in c.rows)
        min_words = (config.min_query_words if c.from_llm or c.kind == "inverse_cloze"
                     else config.min_structural_words)
        c.reason = reject_reason(c.query, passage, min_words, config.max_query_words,
                                 config.max_copy_overlap)
        if c.reason is None and c.origin == "structural":
            c.reason = structural_reason(c.query, passage) or (
                "shared_title" if i in shared else None)
        key = " ".join(c.query.lower().split())
        if c.reason is None and key in seen:
            c.reason = "duplicate"
        if c.reason is None:
            seen.add(key)


def filter_near_duplicates(candidates: list[Candidate], config: GenerateConfig) -> None:
    kept = [c for c in candidates if c.reason is None]
    if config.dedup_cosine is None or len(kept) < 2:
        return
    from customir.models import load_sentence_transformer

    kept.sort(key=lambda c: (KIND_ORDER.index(c.kind), c.query))
    model = load_sentence_transformer(config.dedup_model)
    vectors = model.encode([c.query for c in kept], batch_size=128, normalize_embeddings=True,
                           convert_to_numpy=True)
    for c, duplicate in zip(kept, near_duplicates(vectors, config.dedup_cosine)):
        if duplicate:
            c.reason = "near_duplicate"


def filter_round_trip(candidates: list[Candidate], config: GenerateConfig, chunks_dir: Path,
                      run_dir: Path, indexes: dict | None = None) -> None:
    checked = [c for c in candidates if c.reason is None and c.from_llm]
    if config.roundtrip_k is None or not checked:
        return
    index = chunk_index(chunks_dir, run_dir, config.roundtrip_by, indexes)
    found, _ = index.search([c.query for c in checked], config.roundtrip_k)
    for c, ranked in zip(checked, found.tolist()):
        if not set(c.rows) & set(ranked):
            c.reason = "roundtrip_miss"


def filter_by_judge(candidates: list[Candidate], chunks: Chunks,
                    config: GenerateConfig) -> Answers | None:
    checked = [c for c in candidates if c.reason is None and c.from_llm]
    if config.judge_min_score is None or not checked:
        return None
    asks = [Ask(f"j:{i}", {"score": "judge"},
                prompts.build_query_judge_messages([chunks.texts[r] for r in c.rows], c.query),
                lambda keys: prompts.JUDGE_SCHEMA,
                lambda key, value: prompts.validate_score(value), 16)
            for i, c in enumerate(checked)]
    answers = ask_generate_llm(asks, config)
    require_an_answer(answers, "the LLM judge graded none of the {n} queries it was asked about")
    for i, c in enumerate(checked):
        score = answers.values.get((f"j:{i}", "score"))
        if score is None:
            c.reason = "judge_no_score"
        elif score < config.judge_min_score:
            c.reason = "judge_below_threshold"
    return answers
