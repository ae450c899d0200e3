"""The evaluation report: ``report.json`` (everything), ``report.md`` (tables) and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

HEADLINE = ("nDCG@10", "Recall@10", "Recall@100", "MRR@10", "MAP@10", "P@1")


def markdown_table(results: dict[str, dict[str, float]], columns=HEADLINE) -> str:
    """One row per system.

    >>> print(markdown_table({"bm25": {"nDCG@10": 0.5}}, ["nDCG@10"]))
    | system | nDCG@10 |
    |---|---|
    | bm25 | 0.5000 |
    """
    lines = ["| system | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for system, metrics in results.items():
        lines.append(f"| {system} | " + " | ".join(f"{metrics.get(c, 0.0):.4f}" for c in columns)
                     + " |")
    return "\n".join(lines)


def comparison_lines(comparisons: list[dict]) -> list[str]:
    return [f"- {c['a']} vs {c['b']} on {c['metric']}: {c['delta']:+.4f} "
            f"(paired randomization p = {c['p_value']:.4f}, {c['n_queries']} queries; "
            f"{'significant' if c['p_value'] < 0.05 else 'not significant'} at 0.05)"
            for c in comparisons]


def write_report(out_dir: Path, sets: dict[str, dict]) -> str:
    """``sets``: {set name: {"n_queries", "results": {system: metrics}, "comparisons": [...]}}.
    Returns the markdown text."""
    (out_dir / "report.json").write_text(json.dumps(sets, indent=2, sort_keys=True))
    parts = ["# customir evaluation", ""]
    for name, data in sets.items():
        parts += [f"## {name} ({data['n_queries']} queries)", "", data.get("note", ""), "",
                  markdown_table(data["results"]), ""]
        parts += comparison_lines(data.get("comparisons", [])) + [""]
    text = "\n".join(parts)
    (out_dir / "report.md").write_text(text)
    _plot(out_dir / "report.png", sets)
    return text


def _plot(path: Path, sets: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.6), squeeze=False)
    for ax, (name, data) in zip(axes[0], sets.items()):
        systems = list(data["results"])
        metrics = ["nDCG@10", "Recall@100", "MRR@10"]
        width = 0.8 / len(systems)
        for i, system in enumerate(systems):
            values = [data["results"][system].get(m, 0.0) for m in metrics]
            ax.bar([x + i * width for x in range(len(metrics))], values, width, label=system)
        ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(metrics))], metrics)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name} ({data['n_queries']} queries)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
