"""The evaluate section's own checks: cut-offs the report and the comparisons can use, and
query-set names that cannot overwrite one another in the report."""

import pytest

from customir.config import ConfigError, load_config


@pytest.mark.parametrize("override, message", [
    # cut-offs without 10 ended in a KeyError 'nDCG@10' after encoding the whole corpus
    ("evaluate.k_values=[1,5,20]", "evaluate.k_values: .*including 10"),
    ("evaluate.k_values=[0,10]", "evaluate.k_values: .*positive"),
    ("evaluate.k_values=[10,10]", "evaluate.k_values: .*distinct"),
    # two sets under one name overwrote each other's results, balances and resume inputs
    ("evaluate.beir=[{queries: a, qrels: b}, {queries: c, qrels: d}]",
     "evaluate.beir: .*set name 'beir' is used more than once"),
    ("evaluate.beir=[{queries: a, qrels: b, name: x}, {queries: c, qrels: d, name: x}]",
     "set name 'x' is used more than once"),
    # the report's own keys
    *((f"evaluate.beir=[{{queries: a, qrels: b, name: {name}}}]", f"'{name}' is taken")
      for name in ("synthetic-test", "details", "training_data")),
    ("evaluate.beir=[{queries: a, qrels: b, name: ''}]", "evaluate.beir.0.name"),
])
def test_bad_evaluate_settings_are_one_config_error_line(override, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(None, [override])
    assert "\n" not in str(caught.value)


def test_cut_offs_are_sorted_and_distinct_names_pass():
    cfg = load_config(None, ["evaluate.k_values=[100, 10, 1]",
                             "evaluate.beir=[{queries: a, qrels: b}, "
                             "{queries: c, qrels: d, name: other}]"])
    assert cfg.evaluate.k_values == [1, 10, 100]
    assert [b.name for b in cfg.evaluate.beir] == ["beir", "other"]
