"""Choosing hard negatives from ranked candidates under a safety margin (pure function).

NV-Retriever (Moreira et al., 2024) keeps candidates scoring below 95 % of the positive's score:
a passage that scores nearly as well as the positive is more often an unlabelled positive than a
negative. With several positives (multi-hop queries) the margin is taken from the *weakest*
positive, and every positive (and by default every chunk of a positive's document) is excluded.
The rules, in order: exclusions → skip the first ``skip_top`` ranks → drop candidates without
any match (score <= 0) → absolute / relative margin → take the top ``num_negatives``, or a
seeded random sample from the candidates ranked up to ``window``.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from customir.config import MineConfig, Sampling


@dataclass
class Selection:
    chunk_ids: list[str]
    scores: list[float]
    n_over_margin: int


def has_margin(config: MineConfig) -> bool:
    """Whether selection compares candidates with the positive's score at all."""
    return config.relative_margin is not None or config.absolute_margin is not None


def margin_limit(positive_score: float | None, config: MineConfig) -> float:
    """The highest score a negative may have, given the weakest positive's score (which may be
    None, not known, only without a margin).

    >>> margin_limit(10.0, MineConfig(relative_margin=0.95, absolute_margin=1.0))
    9.0
    >>> margin_limit(10.0, MineConfig(relative_margin=None, absolute_margin=None))
    inf
    """
    limit = float("inf")
    if config.relative_margin is not None:
        limit = min(limit, config.relative_margin * positive_score)
    if config.absolute_margin is not None:
        limit = min(limit, positive_score - config.absolute_margin)
    return limit


def select_under_margin(ranked: list[tuple[str, str, float]], positive_ids: set[str],
                        positive_doc_ids: set[str], positive_score: float | None,
                        config: MineConfig, sample_key: str = "") -> Selection:
    """Pick negatives from ``ranked`` = [(chunk_id, doc_id, score)], best first.

    ``positive_score`` is the weakest positive's score; ``sample_key`` (the query id) seeds
    random sampling so a rerun picks the same negatives. ``n_over_margin`` counts every
    candidate over the margin (of the window when sampling), also those ranked after the
    kept ones: hybrid candidates come in fusion order, not by score.

    >>> ranked = [("p", "d1", 9.0), ("a", "d2", 8.9), ("b", "d3", 5.0), ("c", "d1", 4.0),
    ...           ("e", "d4", 3.0), ("z", "d5", 0.0)]
    >>> select_under_margin(ranked, {"p"}, {"d1"}, 9.0, MineConfig())
    Selection(chunk_ids=['b', 'e'], scores=[5.0, 3.0], n_over_margin=1)
    """
    limit = margin_limit(positive_score, config)
    eligible: list[tuple[str, float]] = []
    n_over = 0
    rank = 0
    window = config.window or config.top_k
    for chunk_id, doc_id, score in ranked:
        if chunk_id in positive_ids or (config.exclude_same_document
                                        and doc_id in positive_doc_ids):
            continue
        rank += 1
        if rank <= config.skip_top:
            continue
        if config.sampling == Sampling.random and rank > window:
            break
        if score <= 0:  # nothing in common with the query: not a hard negative
            continue
        if score > limit:
            n_over += 1
        elif config.sampling == Sampling.random or len(eligible) < config.num_negatives:
            eligible.append((chunk_id, float(score)))
    if config.sampling == Sampling.random and len(eligible) > config.num_negatives:
        seed = hashlib.sha1(f"{config.seed}:{sample_key}".encode()).hexdigest()
        picked = set(random.Random(seed).sample(range(len(eligible)), config.num_negatives))
        eligible = [e for i, e in enumerate(eligible) if i in picked]  # keep rank order
    return Selection([c for c, _ in eligible], [s for _, s in eligible], n_over)
