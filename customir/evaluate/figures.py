"""The report's PNG figures (matplotlib, no display): each function takes plain data and a path.

Every figure is also meant to be read on its own, so each carries its own title and axis labels.
"""

from __future__ import annotations

import math
from pathlib import Path

# nDCG and recall at each cut-off: the two curves people compare retrieval systems by.
METRIC_FAMILIES = ("nDCG", "Recall")


def _figure(**kwargs):
    """A figure of its own, not pyplot's: pyplot's global state (and ``matplotlib.use``) would
    change the backend of a notebook or application that calls the report."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def metric_bars(path: Path, name: str, results: dict[str, dict[str, float]],
                k_values: list[int]) -> None:
    """Grouped bars: one group per cut-off k, one bar per system, for nDCG@k and Recall@k."""
    systems = list(results)
    fig = _figure(figsize=(11, 3.6))
    axes = fig.subplots(1, len(METRIC_FAMILIES), squeeze=False)
    width = 0.8 / max(len(systems), 1)
    for ax, family in zip(axes[0], METRIC_FAMILIES):
        for i, system in enumerate(systems):
            values = [results[system].get(f"{family}@{k}", 0.0) for k in k_values]
            ax.bar([x + i * width for x in range(len(k_values))], values, width, label=system)
        ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(k_values))],
                      [f"@{k}" for k in k_values])
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}: {family}@k")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    _save(fig, path)


def score_distributions(path: Path, scores: dict[str, dict[str, list[float]]]) -> None:
    """Histograms of cos(query, positive) and cos(query, hard negative), one panel per model."""
    fig = _figure(figsize=(5 * max(len(scores), 1), 3.4))
    axes = fig.subplots(1, max(len(scores), 1), squeeze=False, sharey=True)
    for ax, (model, by_kind) in zip(axes[0], scores.items()):
        # a NaN cosine cannot be placed in a bin: left out of the plot and of its n
        finite = {label: [v for v in by_kind.get(label) or [] if math.isfinite(v)]
                  for label in ("positive", "negative")}
        span = histogram_range([v for values in finite.values() for v in values])
        for label, color in (("positive", "tab:green"), ("negative", "tab:red")):
            if values := finite[label]:
                ax.hist(values, bins=30, range=span, alpha=0.55, color=color,
                        label=f"{label} (n={len(values)})")
        ax.set_title(f"{model} model")
        ax.set_xlabel("cosine to the query")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("pairs")
    _save(fig, path)


def histogram_range(values: list[float]) -> tuple[float, float]:
    """The usual cosine range (-0.2, 1.0), widened to hold every value: ``hist`` silently drops
    values outside its range, and the legend's n must be the count plotted.

    >>> histogram_range([0.5]), histogram_range([-0.5, 1.0000001])
    ((-0.2, 1.0), (-0.5, 1.0000001))
    """
    return min([-0.2, *values]), max([1.0, *values])


def funnel(path: Path, steps: list[tuple[str, int]]) -> None:
    """Horizontal bars, first step on top: how many items each stage kept."""
    fig = _figure(figsize=(7, 0.45 * len(steps) + 1))
    ax = fig.subplots()
    labels = [label for label, _ in steps][::-1]
    values = [value for _, value in steps][::-1]
    bars = ax.barh(labels, values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3, fontsize=8)
    ax.set_xlim(0, max(values + [1]) * 1.18)
    ax.set_title("Counts per stage")
    _save(fig, path)


def query_stats(path: Path, kinds: dict[str, int], lengths: dict[str, list[int]]) -> None:
    """Queries per kind (bars) and query length in words per kind (box plots)."""
    fig = _figure(figsize=(11, 3.6))
    left, right = fig.subplots(1, 2)
    names = sorted(kinds)
    left.bar(names, [kinds[n] for n in names], color="tab:purple")
    left.set_title("Queries per kind")
    left.tick_params(axis="x", rotation=30)
    with_lengths = [n for n in names if lengths.get(n)]
    if with_lengths:
        right.boxplot([lengths[n] for n in with_lengths], showfliers=False)
        right.set_xticks(range(1, len(with_lengths) + 1), with_lengths, rotation=30)
    right.set_title("Query length (words)")
    _save(fig, path)


def stage_times(path: Path, seconds: dict[str, float]) -> None:
    """Wall time per stage, in minutes."""
    fig = _figure(figsize=(7, 0.45 * len(seconds) + 1))
    ax = fig.subplots()
    names = list(seconds)[::-1]
    minutes = [seconds[n] / 60 for n in names]
    bars = ax.barh(names, minutes, color="tab:gray")
    ax.bar_label(bars, labels=[f"{m:.1f} min" for m in minutes], padding=3, fontsize=8)
    ax.set_xlim(0, max(minutes + [0.1]) * 1.25)
    ax.set_title("Wall time per stage")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
