"""The training curves: the Hugging Face trainer's log history, kept as ``curves.json`` in the
stage folder and drawn as ``curves.png`` (training loss and validation nDCG@10 by step)."""

from __future__ import annotations

from pathlib import Path

from customir.train.validation import BEST_METRIC

CURVES_FILE = "curves.json"


def plot_curves(log_history: list[dict], path: Path) -> None:
    """Training loss and validation nDCG@10 by step (the report shows this figure)."""
    from matplotlib.figure import Figure  # not pyplot: its backend is the caller's to choose

    loss = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    ndcg = [(e["step"], e[BEST_METRIC]) for e in log_history if BEST_METRIC in e]
    fig = Figure(figsize=(6, 3.5))
    left = fig.subplots()
    if loss:  # with a marker: a run that logged its loss once still shows a point
        left.plot(*zip(*loss), color="tab:blue", marker="o", markersize=3, label="training loss")
    else:
        left.text(0.5, 0.5, "no loss logged", transform=left.transAxes, ha="center",
                  va="center", color="tab:gray")
    left.set_xlabel("step")
    left.set_ylabel("training loss", color="tab:blue")
    if ndcg:
        right = left.twinx()
        right.plot(*zip(*ndcg), color="tab:orange", marker="o", label="validation nDCG@10")
        right.set_ylabel("validation nDCG@10", color="tab:orange")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
