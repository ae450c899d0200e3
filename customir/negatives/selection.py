"""Choosing hard negatives from ranked candidates under a safety margin (pure function).

NV-Retriever (Moreira et al., 2024) keeps candidates scoring below 95 % of the positive's score:
a passage that scores nearly as well as the positive is more often an unlabelled positive than a
negative. Every positive of the query (multi-positive queries) and, by default, every chunk of a
positive's own document is excluded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Selection:
    chunk_ids: list[str]
    scores: list[float]
    n_over_margin: int


def select_under_margin(ranked: list[tuple[str, str, float]], positive_ids: set[str],
                        positive_doc_ids: set[str], positive_score: float, *, skip_top: int,
                        relative_margin: float, num_negatives: int,
                        exclude_same_document: bool) -> Selection:
    """Pick up to ``num_negatives`` from ``ranked`` = [(chunk_id, doc_id, score)], best first.

    >>> ranked = [("p", "d1", 9.0), ("a", "d2", 8.9), ("b", "d3", 5.0), ("c", "d1", 4.0),
    ...           ("e", "d4", 3.0), ("z", "d5", 0.0)]
    >>> select_under_margin(ranked, {"p"}, {"d1"}, 9.0, skip_top=0, relative_margin=0.95,
    ...                     num_negatives=4, exclude_same_document=True)
    Selection(chunk_ids=['b', 'e'], scores=[5.0, 3.0], n_over_margin=1)
    """
    limit = relative_margin * positive_score
    kept_ids: list[str] = []
    kept_scores: list[float] = []
    n_over = 0
    rank = 0
    for chunk_id, doc_id, score in ranked:
        if chunk_id in positive_ids or (exclude_same_document and doc_id in positive_doc_ids):
            continue
        rank += 1
        if rank <= skip_top:
            continue
        if score <= 0:  # shares no term with the query: not a hard negative
            break
        if score > limit:
            n_over += 1
            continue
        kept_ids.append(chunk_id)
        kept_scores.append(float(score))
        if len(kept_ids) >= num_negatives:
            break
    return Selection(kept_ids, kept_scores, n_over)
