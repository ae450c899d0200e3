"""The evaluation report: ``report.json`` (everything), ``report.md`` (tables), ``report.html``
(one page with every figure embedded, for a browser) and the PNG figures."""

from __future__ import annotations

import html
import json
from pathlib import Path

HEADLINE = ("nDCG@10", "Recall@10", "Recall@100", "MRR@10", "MAP@10", "P@1")
PLOTTED = ("nDCG@10", "Recall@100", "MRR@10")  # report.png, per set


def metric_cell(metrics: dict[str, float], name: str) -> str:
    """A metric to four places, or "-" where it was not computed (its cut-off is not in
    ``evaluate.k_values``): a 0 there would read as a measured failure.

    >>> metric_cell({"nDCG@10": 0.5}, "nDCG@10"), metric_cell({"nDCG@10": 0.5}, "Recall@100")
    ('0.5000', '-')
    """
    return f"{metrics[name]:.4f}" if name in metrics else "-"


def markdown_table(results: dict[str, dict[str, float]], columns=HEADLINE) -> str:
    """One row per system.

    >>> print(markdown_table({"bm25": {"nDCG@10": 0.5}}, ["nDCG@10"]))
    | system | nDCG@10 |
    |---|---|
    | bm25 | 0.5000 |
    """
    lines = ["| system | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for system, metrics in results.items():
        lines.append(f"| {system} | " + " | ".join(metric_cell(metrics, c) for c in columns)
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
        lines.append(f"- verification ({checked.get('method', 'method not recorded')}): "
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


def write_report(out_dir: Path, sets: dict[str, dict], training_data: dict | None = None,
                 details: dict | None = None, k_values: list[int] | None = None) -> str:
    """Write ``report.json``, ``report.md``, ``report.html`` and the PNG figures.

    ``sets``: {set name: {"n_queries", "results": {system: metrics}, "comparisons": [...]}};
    ``training_data``: stage counts (see :func:`training_data_lines`); ``details`` (all optional):
    ``funnel`` [(label, count)], ``funnel_note`` (the stages it lacks), ``stage_seconds``
    {stage: s}, ``query_kinds`` {kind: n}, ``query_lengths`` {kind: [words]}, ``examples``
    [{kind, query, positive, negatives}], ``scores`` {model: {"positive": [...],
    "negative": [...]}}. Returns the markdown."""
    from customir.evaluate import figures

    details = details or {}
    k_values = k_values or [1, 5, 10, 100]
    images: list[tuple[str, str, str]] = []  # (section id, file name, caption)
    for i, (name, data) in enumerate(sets.items()):
        if not data["results"]:
            continue
        file = f"metrics_{i}.png"
        figures.metric_bars(out_dir / file, name, data["results"], k_values)
        images.append(("metrics", file, f"{name}: nDCG@k and Recall@k per system"))
    if (out_dir / "training_curves.png").is_file():
        images.append(("training", "training_curves.png", "training loss and validation nDCG@10"))
    if details.get("scores"):
        figures.score_distributions(out_dir / "scores.png", details["scores"])
        images.append(("scores", "scores.png", details.get("scores_note", "")))
    if details.get("funnel"):
        figures.funnel(out_dir / "funnel.png", details["funnel"])
        images.append(("funnel", "funnel.png", "items kept by each stage"))
    if details.get("query_kinds"):
        figures.query_stats(out_dir / "queries.png", details["query_kinds"],
                            details.get("query_lengths", {}))
        images.append(("queries", "queries.png", "queries per kind and their length"))
    if details.get("stage_seconds"):
        figures.stage_times(out_dir / "stage_times.png", details["stage_seconds"])
        images.append(("timing", "stage_times.png", "wall time per stage"))
    summary = {k: v for k, v in details.items() if k not in ("scores", "query_lengths")}
    summary["score_summary"] = {m: {label: _stats(v) for label, v in d.items()}
                                for m, d in details.get("scores", {}).items()}
    (out_dir / "report.json").write_text(json.dumps(
        {**sets, **({"training_data": training_data} if training_data else {}),
         "details": summary}, indent=2, sort_keys=True))
    parts = ["# customir evaluation", ""]
    for name, data in sets.items():
        parts += [f"## {name} ({data['n_queries']} queries)", "", data.get("note", ""), "",
                  markdown_table(data["results"]), ""]
        parts += comparison_lines(data.get("comparisons", [])) + [""]
    parts += training_data_lines(training_data or {})
    parts += detail_lines(summary)
    parts += [f"![{caption}]({file})" for _, file, caption in images] + [""]
    text = "\n".join(parts)
    (out_dir / "report.md").write_text(text)
    _plot(out_dir / "report.png", sets)
    (out_dir / "report.html").write_text(html_report(sets, training_data or {}, summary,
                                                     images, out_dir))
    return text


def _stats(values: list[float]) -> dict:
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    return {"n": int(v.size), **({"mean": round(float(v.mean()), 4),
                                  "median": round(float(np.median(v)), 4)} if v.size else {})}


def markdown_cell(text: str) -> str:
    """Corpus text as one markdown table cell: a "|" or a line break (a lone "\\r" too) would
    end the cell or the row, and ``<``, ``>``, ``&`` would reach a markdown viewer as raw HTML
    (a passage holding ``<img onerror=...>`` would run script).

    >>> markdown_cell("a | b <img src=x onerror=alert(1)>\\r\\n&c")
    'a \\\\| b &lt;img src=x onerror=alert(1)&gt; &amp;c'
    """
    return " ".join(html.escape(text, quote=False).replace("|", "\\|").splitlines())


def detail_lines(summary: dict) -> list[str]:
    """Funnel, stage times and score summary as markdown.

    >>> detail_lines({"funnel": [("chunks", 10)], "stage_seconds": {"ingest": 1.5}})[:4]
    ['## Funnel', '', '| step | count |', '|---|---|']
    """
    lines: list[str] = []
    if funnel := summary.get("funnel"):
        lines += ["## Funnel", "", "| step | count |", "|---|---|",
                  *(f"| {label} | {count:,} |" for label, count in funnel), ""]
        lines += [summary["funnel_note"], ""] if summary.get("funnel_note") else []
    if seconds := summary.get("stage_seconds"):
        lines += ["## Wall time per stage", "", "| stage | seconds |", "|---|---|",
                  *(f"| {stage} | {s:,.1f} |" for stage, s in seconds.items()),
                  f"| total | {sum(seconds.values()):,.1f} |", ""]
    if examples := summary.get("examples"):
        lines += ["## Example training queries", "", "| kind | query | positive | hard negative |",
                  "|---|---|---|---|",
                  *(f"| {e['kind']} | {markdown_cell(e['query'])} | {markdown_cell(e['positive'])} "
                    f"| {markdown_cell(e['negatives'][0]) if e['negatives'] else '-'} |"
                    for e in examples), ""]
    if scores := summary.get("score_summary"):
        lines += ["## Positive vs negative scores (cosine)", "",
                  "| model | positive mean | negative mean | pairs |", "|---|---|---|---|",
                  *(f"| {m} | {d['positive'].get('mean', float('nan')):.4f} "
                    f"| {d['negative'].get('mean', float('nan')):.4f} "
                    f"| {d['positive']['n']} + {d['negative']['n']} |"
                    for m, d in scores.items()), ""]
    return lines


SECTIONS = (("metrics", "Retrieval metrics"), ("training", "Training and validation"),
            ("scores", "Positive vs negative scores"), ("funnel", "Counts per stage"),
            ("queries", "Queries"), ("examples", "Example training queries"),
            ("timing", "Wall time per stage"))


def html_report(sets: dict, training_data: dict, summary: dict,
                images: list[tuple[str, str, str]], out_dir: Path) -> str:
    """One self-contained HTML page: every figure is embedded as a base64 PNG, every text from
    the corpus is escaped."""
    import base64
    from html import escape

    def table(header: list[str], rows: list[list]) -> str:
        head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>"
                       for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def figures_of(section: str) -> str:
        out = []
        for sec, file, caption in images:
            if sec == section:
                data = base64.b64encode((out_dir / file).read_bytes()).decode()
                out.append(f'<figure><img alt="{escape(caption)}" '
                           f'src="data:image/png;base64,{data}"><figcaption>{escape(caption)}'
                           "</figcaption></figure>")
        return "".join(out)

    body: dict[str, list[str]] = {sec: [] for sec, _ in SECTIONS}
    for name, data in sets.items():
        columns = list(HEADLINE)
        body["metrics"] += [f"<h3>{escape(name)} ({data['n_queries']} queries)</h3>",
                            f"<p>{escape(data.get('note', ''))}</p>",
                            table(["system", *columns],
                                  [[s, *(metric_cell(m, c) for c in columns)]
                                   for s, m in data["results"].items()]),
                            "<ul>" + "".join(f"<li>{escape(line[2:])}</li>" for line in
                                             comparison_lines(data.get("comparisons", [])))
                            + "</ul>"]
    body["training"] += [f"<p>{escape(line[2:])}</p>" for line in
                         training_data_lines(training_data) if line.startswith("- ")]
    if per_kind := training_data.get("generate", {}).get("per_kind"):
        rows = [line.strip("|").split("|") for line in per_kind_table(per_kind)[2:]]
        body["queries"].append(table(["kind", "asked", "written", "reply failures",
                                      "candidates", "kept", "dropped", "rows"],
                                     [[c.strip() for c in r] for r in rows]))
    if scores := summary.get("score_summary"):
        body["scores"].append(table(["model", "positive mean", "negative mean", "pairs"], [
            [m, f"{d['positive'].get('mean', float('nan')):.4f}",
             f"{d['negative'].get('mean', float('nan')):.4f}",
             f"{d['positive']['n']} + {d['negative']['n']}"] for m, d in scores.items()]))
    if funnel := summary.get("funnel"):
        body["funnel"].append(table(["step", "count"], [[k, f"{v:,}"] for k, v in funnel]))
        if note := summary.get("funnel_note"):
            body["funnel"].append(f"<p>{escape(note)}</p>")
    if examples := summary.get("examples"):
        body["examples"].append(table(["kind", "query", "positive", "hard negatives"], [
            [e["kind"], e["query"], e["positive"], " ‖ ".join(e["negatives"]) or "-"]
            for e in examples]))
    if seconds := summary.get("stage_seconds"):
        body["timing"].append(table(["stage", "seconds"],
                                    [[k, f"{v:,.1f}"] for k, v in seconds.items()]
                                    + [["total", f"{sum(seconds.values()):,.1f}"]]))
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>customir report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;font-size:13px;vertical-align:top}img{max-width:100%}"
             "figcaption{color:#555;font-size:13px}</style></head><body>",
             "<h1>customir evaluation</h1>"]
    for section, title in SECTIONS:
        content = "".join(body[section]) + figures_of(section)
        parts.append(f'<section id="{section}"><h2>{escape(title)}</h2>'
                     + (content or "<p>Not available for this run.</p>") + "</section>")
    return "\n".join(parts + ["</body></html>"])


def _plot(path: Path, sets: dict[str, dict]) -> None:
    """One panel per set that has results; no file when none has."""
    sets = {name: data for name, data in sets.items() if data["results"]}
    if not sets:
        return
    from matplotlib.figure import Figure  # not pyplot: the caller's backend stays as it was

    fig = Figure(figsize=(5 * len(sets), 3.6))
    axes = fig.subplots(1, len(sets), squeeze=False)
    for ax, (name, data) in zip(axes[0], sets.items()):
        systems = list(data["results"])
        metrics = [m for m in PLOTTED if any(m in r for r in data["results"].values())]
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
