"""BM25 order on the hand-checkable fixture, margin selection, verification verdicts."""

from customir.negatives.bm25 import BM25Index
from customir.negatives.selection import select_under_margin
from customir.negatives.verify import FALSE_NEGATIVE, KEPT, judge_candidates

from conftest import PASSAGES

IDS = list(PASSAGES)


def _index():
    return BM25Index([text for _, text in PASSAGES.values()])


def test_bm25_order_on_the_fixture():
    order, scores = _index().top_k("aspirin heart", 10)
    ranked = [IDS[i] for i, s in zip(order, scores) if s > 0]
    assert ranked[:2] == ["d1", "d5"]  # both terms; then the rare term beats the common one
    assert set(ranked[2:]) == {"d2", "d3", "d9"}
    assert all(scores[i] >= scores[i + 1] for i in range(len(scores) - 1))


def test_bm25_unknown_or_stopword_query_scores_zero():
    index = _index()
    assert not index.scores("the and of").any()
    assert not index.scores("zyzzyva").any()


def test_margin_drops_near_positive_candidates_and_all_positives():
    ranked = [("p1", "a", 10.0), ("x", "b", 9.8), ("p2", "c", 9.0), ("y", "d", 9.4),
              ("z", "e", 6.0), ("w", "f", 5.0), ("v", "g", 4.0)]
    chosen = select_under_margin(ranked, {"p1", "p2"}, {"a", "c"}, 10.0, skip_top=0,
                                 relative_margin=0.95, num_negatives=2,
                                 exclude_same_document=True)
    assert chosen.chunk_ids == ["y", "z"]  # 9.8 > 9.5 is over the margin; 9.4 is under
    assert chosen.n_over_margin == 1


def test_skip_top_and_same_document():
    ranked = [("a#1", "a", 8.0), ("b#0", "b", 7.0), ("c#0", "c", 6.0), ("d#0", "d", 5.0)]
    chosen = select_under_margin(ranked, {"a#0"}, {"a"}, 10.0, skip_top=1, relative_margin=0.95,
                                 num_negatives=4, exclude_same_document=True)
    assert chosen.chunk_ids == ["c#0", "d#0"]
    kept_same_doc = select_under_margin(ranked, {"a#0"}, {"a"}, 10.0, skip_top=0,
                                        relative_margin=0.95, num_negatives=1,
                                        exclude_same_document=False)
    assert kept_same_doc.chunk_ids == ["a#1"]


def test_a_positive_without_lexical_match_keeps_no_bm25_negative():
    ranked = [("x", "b", 3.0), ("y", "c", 0.0)]
    chosen = select_under_margin(ranked, {"p"}, {"a"}, 0.0, skip_top=0, relative_margin=0.95,
                                 num_negatives=4, exclude_same_document=True)
    assert chosen.chunk_ids == [] and chosen.n_over_margin == 1


def test_verdicts_are_relative_to_the_positive():
    assert judge_candidates(-2.0, [-2.5, -1.0, -2.0], margin=0.0) == [KEPT, FALSE_NEGATIVE,
                                                                       FALSE_NEGATIVE]
    assert judge_candidates(-2.0, [-2.3], margin=0.5) == [FALSE_NEGATIVE]
