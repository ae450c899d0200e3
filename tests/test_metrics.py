"""Metrics on a run small enough to work out by hand."""

import math

import pytest

from customir.evaluate.metrics import mean_metrics, paired_randomization_test, per_query_metrics

QRELS = {"q1": {"d1": 1}, "q2": {"d3": 1, "d4": 1}, "q3": {"d9": 1}, "q4": {"d2": 1}}
RUN = {
    "q1": {"d2": 0.9, "d1": 0.8, "d3": 0.1},   # relevant at rank 2
    "q2": {"d3": 0.9, "d1": 0.5, "d4": 0.4},   # relevant at ranks 1 and 3
    "q3": {"d1": 0.3},                          # relevant never retrieved
}                                               # q4: nothing retrieved at all


def test_values_worked_out_by_hand():
    m = per_query_metrics(QRELS, RUN, [1, 5, 10])
    assert m["nDCG@10"]["q1"] == pytest.approx(1 / math.log2(3))
    assert m["nDCG@10"]["q2"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert m["MRR@1"]["q1"] == 0.0 and m["MRR@5"]["q1"] == 0.5
    assert m["Recall@1"]["q2"] == 0.5 and m["Recall@5"]["q2"] == 1.0
    assert m["P@1"]["q2"] == 1.0 and m["P@5"]["q2"] == pytest.approx(2 / 5)
    assert m["MAP@10"]["q2"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert m["MAP@10"]["q1"] == 0.5
    for name in ("nDCG@10", "MRR@10", "Recall@10"):
        assert m[name]["q3"] == 0.0 and m[name]["q4"] == 0.0  # missing queries count as 0


def test_means_include_every_judged_query():
    means = mean_metrics(per_query_metrics(QRELS, RUN, [10]))
    assert means["MRR@10"] == pytest.approx((0.5 + 1.0 + 0 + 0) / 4)


def test_ties_are_broken_by_document_id_not_by_trec_eval():
    m = per_query_metrics({"q": {"b": 1}}, {"q": {"a": 1.0, "b": 1.0}}, [1])
    assert m["MRR@1"]["q"] == 0.0  # "a" sorts first among equal scores


def test_randomization_test_detects_a_consistent_difference():
    assert paired_randomization_test([0.9] * 20, [0.1] * 20, 2000) < 0.01
    noisy_a = [0.5, 0.6, 0.4, 0.5, 0.7, 0.3]
    noisy_b = [0.6, 0.5, 0.5, 0.4, 0.6, 0.4]
    assert paired_randomization_test(noisy_a, noisy_b, 2000) > 0.5


def _one_matrix_reference(a, b, permutations, seed=0):
    """The test as one (permutations x queries) sign matrix: what the blocked version must
    equal exactly."""
    import numpy as np

    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.size == 0 or not np.any(diff):
        return 1.0
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(permutations, diff.size))
    extreme = np.sum(np.abs((signs * diff).mean(axis=1)) >= abs(diff.mean()) - 1e-12)
    return float((extreme + 1) / (permutations + 1))


@pytest.mark.parametrize("block_elements", [1, 7, 64, 1 << 22])
@pytest.mark.parametrize("n, permutations, seed", [(1, 9, 0), (5, 101, 3), (31, 1000, 0),
                                                   (200, 257, 7)])
def test_randomization_test_in_blocks_equals_one_sign_matrix(monkeypatch, block_elements, n,
                                                            permutations, seed):
    """Permutations are drawn in blocks (bounded memory on 50,000 queries); the p-value is the
    same as with the whole sign matrix at once, whatever the block size."""
    import numpy as np

    from customir.evaluate import metrics

    monkeypatch.setattr(metrics, "SIGN_BLOCK_ELEMENTS", block_elements)
    values = np.random.default_rng(n).random((2, n))
    a, b = values[0].tolist(), (values[1] * 0.3 + values[0] * 0.7).tolist()
    assert paired_randomization_test(a, b, permutations, seed) == _one_matrix_reference(
        a, b, permutations, seed)


def test_randomization_test_memory_is_bounded_by_the_block(monkeypatch):
    """100 permutations of 100,000 queries: one sign matrix would be 80 MB (twice); a block of
    one permutation is 0.8 MB."""
    import tracemalloc

    from customir.evaluate import metrics

    monkeypatch.setattr(metrics, "SIGN_BLOCK_ELEMENTS", 1 << 16)
    a, b = [0.5] * 100_000, [0.4] * 50_000 + [0.6] * 50_000
    tracemalloc.start()
    try:
        paired_randomization_test(a, b, 100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6
