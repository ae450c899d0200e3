"""The report's figures: every value plotted and counted, nothing drawn invisibly, and the
caller's matplotlib backend left as it was."""

from __future__ import annotations

import matplotlib
import pytest
from matplotlib.figure import Figure

from customir.evaluate import figures
from customir.evaluate.report import write_report
from customir.train.curves import plot_curves
from customir.train.validation import BEST_METRIC

METRICS = {f"{m}@{k}": 0.5 for m in ("nDCG", "Recall", "P", "MAP", "MRR") for k in (1, 5, 10, 100)}


@pytest.fixture
def drawn(monkeypatch):
    """The figures saved while the test runs (matplotlib Figure objects, in order)."""
    saved: list[Figure] = []
    original = Figure.savefig

    def keep(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def test_scores_outside_the_usual_range_are_plotted_and_counted(tmp_path, drawn):
    """``hist(range=(-0.2, 1.0))`` dropped -0.5 and -0.3 while the legend said n=4."""
    figures.score_distributions(tmp_path / "s.png", {"base": {"positive": [-0.5, 0.2, 1.0],
                                                              "negative": [-0.3]}})
    ax = drawn[0].axes[0]
    plotted = sum(patch.get_height() for patch in ax.patches)
    assert plotted == 4
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["positive (n=3)",
                                                                    "negative (n=1)"]


def test_the_report_leaves_the_callers_backend_alone(tmp_path):
    before = matplotlib.get_backend()
    matplotlib.use("template")
    try:
        write_report(tmp_path, {"s": {"n_queries": 1, "results": {"bm25": METRICS}}},
                     details={"funnel": [("chunks", 3)], "stage_seconds": {"ingest": 1.0},
                              "scores": {"base": {"positive": [0.5], "negative": [0.1]}}})
        plot_curves([{"step": 5, "loss": 0.7}], tmp_path / "curves.png")  # train's figure
        assert matplotlib.get_backend() == "template"
        assert (tmp_path / "report.png").stat().st_size > 0
    finally:
        matplotlib.use(before)


def test_one_logged_loss_is_a_visible_point(tmp_path, drawn):
    plot_curves([{"step": 5, "loss": 0.7}], tmp_path / "curves.png")
    (line,) = drawn[0].axes[0].get_lines()
    assert line.get_marker() not in (None, "None", "", " ")


def test_no_logged_loss_is_said_on_the_axes(tmp_path, drawn):
    plot_curves([{"step": 5, BEST_METRIC: 0.4}], tmp_path / "curves.png")
    assert "no loss logged" in [t.get_text() for t in drawn[0].axes[0].texts]
