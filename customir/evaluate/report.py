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


def training_data_lines(data: dict) -> list[str]:
    """The report's account of the training data (from the stage manifests).

    >>> lines = training_data_lines({"verify": {"method": "likelihood", "verified_queries": 3,
    ...     "verdicts": {"kept": 9, "false_negative": 3}, "dropped_share_of_checked": 0.25}})
    >>> lines[2].endswith("dropped as false negatives: 25.0% of checked candidates")
    True
    """
    if not data:
        return []
    lines = ["## Training data", ""]
    if gen := data.get("generate"):
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(gen.get("kinds", {}).items()))
        lines.append(f"- queries by kind: {kinds}")
        if per_kind := gen.get("per_kind"):
            lines += ["", *per_kind_table(per_kind), ""]
    if mined := data.get("mine"):
        lines.append(f"- mining ({mined.get('backend', 'bm25s')}): {mined.get('candidates')} "
                     f"candidates; {mined.get('dropped_over_margin')} dropped over the margin; "
                     f"{mined.get('queries_without_candidates')} queries without candidates")
    if checked := data.get("verify"):
        share = checked.get("dropped_share_of_checked")
        verdicts = ", ".join(f"{k} {n}" for k, n in checked.get("verdicts", {}).items())
        lines.append(f"- verification ({checked.get('method', 'likelihood')}): "
                     f"{checked.get('verified_queries')} queries checked; verdicts {verdicts}; "
                     "dropped as false negatives: "
                     + (f"{share:.1%} of checked candidates" if share is not None
                        else "nothing checked"))
    if (trained := data.get("train")) and (m := trained.get("metrics")):
        ndcg = m.get("best_validation_ndcg@10")
        lines.append(f"- training: {m.get('steps')} steps (best at step {m.get('best_step')}"
                     + (f", validation nDCG@10 {ndcg:.4f}" if ndcg is not None else "")
                     + (", stopped early" if m.get("stopped_early") else "")
                     + (f", resumed from step {m['resumed_from_step']}"
                        if m.get("resumed_from_step") else "")
                     + "); curves: training_curves.png")
    return lines + [""]


def _reasons(counts: dict) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "-"


def per_kind_table(per_kind: dict) -> list[str]:
    """Generation counts per query kind: LLM asks and failed replies, then the filters.

    >>> per_kind_table({"title": {"asked": 0, "written": 0, "reply_failures": {},
    ...                 "candidates": 3, "kept": 2, "dropped": {"duplicate": 1}, "rows": 2}})[2]
    '| title | - | - | - | 3 | 2 | duplicate 1 | 2 |'
    """
    lines = ["| kind | asked | written | reply failures | candidates | kept | dropped | rows |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, d in sorted(per_kind.items()):
        llm = d["asked"] > 0
        lines.append(f"| {kind} | {d['asked'] if llm else '-'} | {d['written'] if llm else '-'} "
                     f"| {_reasons(d['reply_failures']) if llm else '-'} | {d['candidates']} "
                     f"| {d['kept']} | {_reasons(d['dropped'])} | {d['rows']} |")
    return lines


def write_report(out_dir: Path, sets: dict[str, dict], training_data: dict | None = None) -> str:
    """``sets``: {set name: {"n_queries", "results": {system: metrics}, "comparisons": [...]}};
    ``training_data``: stage counts (see :func:`training_data_lines`). Returns the markdown."""
    (out_dir / "report.json").write_text(json.dumps(
        {**sets, **({"training_data": training_data} if training_data else {})},
        indent=2, sort_keys=True))
    parts = ["# customir evaluation", ""]
    for name, data in sets.items():
        parts += [f"## {name} ({data['n_queries']} queries)", "", data.get("note", ""), "",
                  markdown_table(data["results"]), ""]
        parts += comparison_lines(data.get("comparisons", [])) + [""]
    parts += training_data_lines(training_data or {})
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
