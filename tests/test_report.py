"""The run report: every section in the HTML, every figure embedded and decodable, corpus text
escaped, and the markdown / JSON alongside."""

import base64
import io
import json
import re

from PIL import Image

from customir.evaluate.report import SECTIONS, write_report

METRICS = {f"{m}@{k}": v for m in ("nDCG", "Recall", "P", "MAP", "MRR")
           for k, v in ((1, 0.3), (5, 0.5), (10, 0.6), (100, 0.9))}


def embedded_images(html: str) -> list[Image.Image]:
    images = []
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()  # decodes every pixel; raises on a truncated or corrupt PNG
        images.append(image)
    return images


def test_report_has_every_section_with_decodable_figures(tmp_path):
    (tmp_path / "training_curves.png").write_bytes(_png())
    sets = {"scifact": {"n_queries": 3, "note": "human qrels",
                        "results": {"bm25": METRICS, "base": METRICS,
                                    "tuned": {**METRICS, "nDCG@10": 0.7}},
                        "comparisons": [{"a": "tuned", "b": "base", "metric": "nDCG@10",
                                         "delta": 0.1, "p_value": 0.01, "n_queries": 3}]}}
    details = {
        "funnel": [("documents read", 10), ("chunks", 20), ("queries kept (rows)", 30)],
        "stage_seconds": {"ingest": 1.0, "generate": 60.0, "train": 120.0},
        "query_kinds": {"title": 5, "question": 4},
        "query_lengths": {"title": [3, 5, 7, 2, 4], "question": [8, 9, 10, 12]},
        "examples": [{"kind": "question", "query": "is <script>alert(1)</script> safe?",
                      "positive": "a | passage", "negatives": ["a negative"]}],
        "scores": {"base": {"positive": [0.5, 0.6], "negative": [0.4, 0.55]},
                   "tuned": {"positive": [0.7, 0.8], "negative": [0.3, 0.35]}},
        "scores_note": "2 held-out test queries",
    }
    markdown = write_report(tmp_path, sets, {"generate": {"kinds": {"title": 5}}}, details)

    html = (tmp_path / "report.html").read_text()
    for section, title in SECTIONS:
        body = html.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
        assert title in body and "Not available" not in body, section
    # bars, curves, scores, funnel, queries, timing: each decodes to a real picture
    images = embedded_images(html)
    assert len(images) == 6 and all(i.width > 100 and i.height > 100 for i in images)
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "| tuned | 0.7000 |" in markdown  # nDCG@10 is the first column
    assert "## Funnel" in markdown and "## Example training queries" in markdown
    assert "a \\| passage" in markdown  # a table cell cannot break the markdown table
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["details"]["score_summary"]["tuned"]["positive"]["mean"] == 0.75
    assert report["details"]["funnel"][0] == ["documents read", 10]


def test_sections_without_data_say_so(tmp_path):
    sets = {"synthetic-test": {"n_queries": 1, "results": {"bm25": METRICS}}}
    write_report(tmp_path, sets)
    html = (tmp_path / "report.html").read_text()
    assert html.count("Not available for this run.") == len(SECTIONS) - 1  # all but metrics
    assert len(embedded_images(html)) == 1


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 150), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_metric_not_computed_shows_a_dash_not_zero(tmp_path):
    """k_values [1, 5, 10]: no Recall@100 was computed, so the report must not claim 0."""
    computed = {k: v for k, v in METRICS.items() if not k.endswith("@100")}
    markdown = write_report(tmp_path, {"scifact": {"n_queries": 2, "results": {"bm25": computed}}},
                            k_values=[1, 5, 10])
    row = next(line for line in markdown.splitlines() if line.startswith("| bm25 |"))
    assert row == "| bm25 | 0.6000 | 0.6000 | - | 0.6000 | 0.6000 | 0.3000 |"
    html = (tmp_path / "report.html").read_text()
    assert "<td>-</td>" in html and "0.0000" not in html


def test_no_query_set_at_all_still_writes_a_report(tmp_path):
    write_report(tmp_path, {})
    assert (tmp_path / "report.md").is_file() and (tmp_path / "report.html").is_file()
    assert not (tmp_path / "report.png").exists()


def test_markdown_escapes_html_in_corpus_text(tmp_path):
    """A markdown viewer renders raw HTML: a query from the corpus must not become an element."""
    examples = [{"kind": "question", "query": "what is x?\r| injected | row |", "positive": "p",
                 "negatives": []},
                {"kind": "heading", "query": "<img src=x onerror=alert(1)>",
                 "positive": "if a<b & c>d", "negatives": ["<!-- start"]}]
    markdown = write_report(tmp_path, {"s": {"n_queries": 1, "results": {"bm25": METRICS}}},
                            details={"examples": examples})
    assert "<img" not in markdown and "<!--" not in markdown and "\r" not in markdown
    assert "| &lt;img src=x onerror=alert(1)&gt; | if a&lt;b &amp; c&gt;d | &lt;!-- start |" \
        in markdown


def test_the_funnel_says_which_stages_it_does_not_count(tmp_path):
    note = "Not counted: generate, mine (no manifest of theirs that made these triples)."
    markdown = write_report(tmp_path, {}, details={"funnel": [("chunks", 3)],
                                                   "funnel_note": note})
    assert f"| chunks | 3 |\n\n{note}" in markdown
    assert f"<p>{note}</p>" in (tmp_path / "report.html").read_text()
