"""Validation during training: the IR evaluator on the held-out validation rows, the score the
best model (and early stopping, and Ray Train's checkpoint ranking) is judged by, and how often
a run is validated."""

from __future__ import annotations

from pathlib import Path

from customir.config import TrainConfig

BEST_METRIC = "eval_validation_cosine_ndcg@10"


def validation_evaluator(rows: list[dict], batch_size: int):
    """IR metrics on the validation rows: each query against every validation passage (its
    positive and everyone's negatives), nDCG@10 as the primary score."""
    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator)

    passages = sorted({r["positive"] for r in rows} |
                      {v for r in rows for k, v in r.items() if k.startswith("negative_")})
    pid = {p: f"p{i}" for i, p in enumerate(passages)}
    queries, relevant = {}, {}
    for r in rows:
        qid = queries.setdefault(r["anchor"], f"q{len(queries)}")
        relevant.setdefault(qid, set()).add(pid[r["positive"]])
    return InformationRetrievalEvaluator(
        queries={qid: q for q, qid in queries.items()}, corpus={v: k for k, v in pid.items()},
        relevant_docs=relevant, name="validation", batch_size=batch_size, write_csv=False,
        ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[10],
        map_at_k=[100])


def validation_interval(config: TrainConfig, train_rows: Path, batch_size: int) -> int:
    """``eval_steps``, shortened so that a short run is still validated (and checkpointed) at
    least 4 times (without validation rows checkpoints keep the configured interval)."""
    import math

    import pyarrow.parquet as pq

    rows = pq.ParquetFile(train_rows).metadata.num_rows
    total = config.max_steps or math.ceil(
        math.ceil(rows / (batch_size * config.num_workers)) * config.epochs)
    return max(1, min(config.eval_steps, total // 4))
