"""The configured contrastive loss, from sentence-transformers (see :class:`TrainLoss`).

Input columns (the training rows of :mod:`customir.train.dataset`): ``anchor``, ``positive``,
``negative_1..n``. Every passage in the batch that is not a query's positive is one of its
negatives (in-batch + hard); with several workers the embeddings are gathered across workers, so
N workers x batch B see the same N·B negatives as one worker with batch N·B.
"""

from __future__ import annotations

from customir.config import TrainConfig, TrainLoss


def make_loss(model, config: TrainConfig, guide=None):
    """The loss module for ``model``; ``guide`` (a frozen copy of the base model) for GIST."""
    from sentence_transformers.sentence_transformer import losses

    scale = 1.0 / config.temperature
    gather = config.num_workers > 1
    if config.loss == TrainLoss.mnrl:
        return losses.MultipleNegativesRankingLoss(model, scale=scale,
                                                   gather_across_devices=gather)
    if config.loss == TrainLoss.cached_mnrl:
        return losses.CachedMultipleNegativesRankingLoss(
            model, scale=scale, mini_batch_size=config.mini_batch_size,
            gather_across_devices=gather)
    if guide is None:
        raise ValueError("the gist loss needs a guide model")
    return losses.GISTEmbedLoss(model, guide, temperature=config.temperature,
                                gather_across_devices=gather)


def with_prefixes(row: dict, query_prefix: str, passage_prefix: str) -> dict:
    """A training row with the model's query / passage prefixes (E5-style models need them).

    >>> with_prefixes({"anchor": "q", "positive": "p", "negative_1": "n"}, "query: ", "passage: ")
    {'anchor': 'query: q', 'positive': 'passage: p', 'negative_1': 'passage: n'}
    """
    return {k: (query_prefix if k == "anchor" else passage_prefix) + v for k, v in row.items()}
