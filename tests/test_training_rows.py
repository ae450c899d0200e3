import hashlib

import pytest

from customir.train.dataset import (assign_split, build_training_rows, largest_fillable_batch,
                                    rows_per_split)


def _documented_split(doc_id: str, fractions: tuple[float, float, float], seed: int) -> str:
    """assign_split's formula, written out: u = int(sha1(f"{seed}:{doc_id}")[:12 hex], 16)
    / 16**12 in [0, 1); the first split whose cumulative share (fractions / their sum) exceeds
    u, in the order train, validation, test."""
    u = int(hashlib.sha1(f"{seed}:{doc_id}".encode()).hexdigest()[:12], 16) / 16 ** 12
    bound = 0.0
    for name, fraction in zip(("train", "validation", "test"), fractions):
        bound += fraction / sum(fractions)
        if u < bound:
            return name
    return "test"


def test_split_is_by_document_and_deterministic():
    # Pinned, not f(x) == f(x) in one process: a split from Python's salted hash() would move
    # documents between train and test from one run to the next (a rerun would train on test
    # documents). u per document (formula in _documented_split): doc0 0.520, doc1 0.346,
    # doc2 0.828, doc6 0.052, doc9 0.854, doc17 0.810, doc27 0.985, doc29 0.936, doc30 0.906,
    # doc51 0.997 — so with (0.8, 0.1, 0.1): < 0.8 train, < 0.9 validation, else test.
    expected = {"doc0": "train", "doc1": "train", "doc2": "validation", "doc6": "train",
                "doc9": "validation", "doc17": "validation", "doc27": "test", "doc29": "test",
                "doc30": "test", "doc51": "test"}
    assert {d: assign_split(d, (0.8, 0.1, 0.1), 7) for d in expected} == expected
    docs = [f"doc{i}" for i in range(2000)]
    splits = [assign_split(d, (0.8, 0.1, 0.1), 7) for d in docs]
    assert splits == [_documented_split(d, (0.8, 0.1, 0.1), 7) for d in docs]
    share = splits.count("test") / len(docs)
    assert 0.07 < share < 0.13
    with pytest.raises(ValueError, match="fractions"):
        assign_split("d", (0, 0, 0), 1)


def test_rows_never_use_text_from_other_splits():
    text = {c: c.upper() for c in ("a#0", "b#0", "t#0", "c#0")}
    doc = {"a#0": "a", "b#0": "b", "t#0": "t", "c#0": "c"}
    triples = [{"query": "qa", "chunk_id": "a#0", "negative_chunk_ids": ["t#0", "b#0"]},
               {"query": "qt", "chunk_id": "t#0", "negative_chunk_ids": ["a#0"]}]
    rows, fills = build_training_rows(triples, text, doc, {"a", "b", "c"}, 1, seed=0)
    assert rows == [{"anchor": "qa", "positive": "A#0", "negative_1": "B#0"}]
    assert fills == 0


def test_missing_negatives_are_filled_from_other_documents():
    text = {"a#0": "A", "a#1": "A1", "b#0": "B"}
    doc = {"a#0": "a", "a#1": "a", "b#0": "b"}
    rows, fills = build_training_rows([{"query": "q", "chunk_id": "a#0",
                                        "negative_chunk_ids": []}], text, doc, {"a", "b"}, 1, 0)
    assert rows[0]["negative_1"] == "B" and fills == 1


def test_impossible_fill_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot find 1 negatives"):
        build_training_rows([{"query": "q", "chunk_id": "a#0", "negative_chunk_ids": []}],
                            {"a#0": "A"}, {"a#0": "a"}, {"a"}, 1, 0)


def test_fillable_batch_size_counts_every_column():
    distinct = [{"anchor": f"q{i}", "positive": f"p{i}", "negative_1": f"n{i}"} for i in range(40)]
    assert largest_fillable_batch(distinct, 32) == 32
    # Each row's negative is the next row's positive: a batch holds at most every other row (4),
    # and the sampler's greedy fill on a shuffle may stop at 3.
    chained = [{"anchor": f"q{i}", "positive": f"p{i}", "negative_1": f"p{i + 1}"}
               for i in range(8)]
    assert 3 <= largest_fillable_batch(chained, 8) <= 4


def test_training_on_another_runs_chunks_is_one_clear_error(tmp_path):
    """Triples whose positives the --chunks folder lacks are a wrong folder, said before any
    training starts, naming an id."""
    from customir.config import TrainConfig
    from customir.schemas import CHUNKS, TRIPLES
    from customir.train import trainer

    from conftest import ONE_CHUNK, write_stage

    chunks = write_stage(tmp_path / "chunks", CHUNKS, [ONE_CHUNK])
    triples = write_stage(tmp_path / "triples", TRIPLES, [
        {"query_id": "q1", "query": "what moves tides", "kind": "question", "origin": "llm:x",
         "chunk_id": "z#9", "doc_id": "z", "supporting_chunk_ids": ["z#9"],
         "candidate_chunk_ids": [], "negative_chunk_ids": []}])
    with pytest.raises(ValueError, match=r"1 positive chunk ids of the triples are not in "
                                         r".*'z#9'"):
        trainer.run(triples, chunks, tmp_path / "run", TrainConfig())
    assert not (tmp_path / "run" / "train").exists()


def _corpus(split_of):
    """Two chunks per document; chunk ids ``<doc>#<n>``."""
    chunk_doc = {f"{d}#{n}": d for d in split_of for n in (0, 1)}
    return {c: c.upper() for c in chunk_doc}, chunk_doc


def test_a_multihop_question_with_a_training_chunk_does_not_validate():
    split_of = {"a": "train", "b": "train", "v": "validation", "w": "validation", "t": "test"}
    text, chunk_doc = _corpus(split_of)
    triples = [{"query": "multi", "chunk_id": "a#0", "negative_chunk_ids": []},
               {"query": "multi", "chunk_id": "v#0", "negative_chunk_ids": []},
               {"query": "valid", "chunk_id": "w#1", "negative_chunk_ids": []},
               {"query": "held", "chunk_id": "t#0", "negative_chunk_ids": []}]
    rows, fills, unused = rows_per_split(triples, text, chunk_doc, split_of, 1, 0)
    assert [r["anchor"] for r in rows["train"]] == ["multi"]  # it trains on its train chunk
    assert [r["anchor"] for r in rows["validation"]] == ["valid"]
    assert unused == {"validation_query_trained_on": 1, "validation_query_spans_test": 0,
                      "validation_too_few_negatives": 0}
    assert fills == 1


def test_a_question_over_validation_and_test_documents_is_counted_as_spanning_them():
    split_of = {"a": "train", "b": "train", "v": "validation", "w": "validation", "t": "test"}
    text, chunk_doc = _corpus(split_of)
    triples = [{"query": "span", "chunk_id": "v#0", "negative_chunk_ids": []},
               {"query": "span", "chunk_id": "t#0", "negative_chunk_ids": []},
               {"query": "valid", "chunk_id": "w#1", "negative_chunk_ids": []},
               {"query": "qa", "chunk_id": "a#0", "negative_chunk_ids": []}]
    _, _, unused = rows_per_split(triples, text, chunk_doc, split_of, 1, 0)
    assert unused == {"validation_query_trained_on": 0, "validation_query_spans_test": 1,
                      "validation_too_few_negatives": 0}


def test_random_fills_avoid_the_other_positives_and_dropped_candidates():
    """A multi-hop question over a#0 and b#0 must not get b#0 (or a chunk of b) as a random
    negative, and a candidate the LLM called a false negative (c#0) must not come back as one."""
    docs = ("a", "b", "c", "d")
    text, chunk_doc = _corpus({d: "train" for d in docs})
    multihop = [{"query": "q", "chunk_id": c, "supporting_chunk_ids": ["a#0", "b#0"],
                 "candidate_chunk_ids": ["c#0"], "negative_chunk_ids": []}
                for c in ("a#0", "b#0")]
    for seed in range(30):
        rows, fills = build_training_rows(multihop, text, chunk_doc, set(docs), 1, seed)
        assert fills == 2
        assert {r["negative_1"] for r in rows} <= {"C#1", "D#0", "D#1"}, seed


def test_one_validation_document_trains_without_validation_and_says_so():
    split_of = {"a": "train", "b": "train", "v": "validation", "t": "test"}
    text, chunk_doc = _corpus(split_of)
    triples = [{"query": "qa", "chunk_id": "a#0", "negative_chunk_ids": ["b#1"]},
               {"query": "qv", "chunk_id": "v#0", "negative_chunk_ids": []},
               {"query": "qv2", "chunk_id": "v#1", "negative_chunk_ids": ["a#0"]}]
    rows, _, unused = rows_per_split(triples, text, chunk_doc, split_of, 1, 0)
    assert rows["train"] == [{"anchor": "qa", "positive": "A#0", "negative_1": "B#1"}]
    assert rows["validation"] == []
    assert unused == {"validation_query_trained_on": 0, "validation_query_spans_test": 0,
                      "validation_too_few_negatives": 2}
    # the train split has no such way out: it is one clear error
    with pytest.raises(ValueError, match="train split: cannot find 1 negatives .* lower "
                                         "train.hard_negatives"):
        rows_per_split(triples, text, chunk_doc, {**split_of, "b": "test"}, 1, 0)


def _texts(rows, batch):
    return [v for i in batch for v in rows[i].values()]


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_each_step_of_n_workers_gathers_no_repeated_text(world_size):
    """Rows i and i + 20 share a positive (a title query and an LLM query of one chunk): the N
    batches of one step, gathered by the loss, must not hold a text twice."""
    from datasets import Dataset
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    from customir.train.sampler import GatheredNoDuplicatesBatchSampler

    rows = [{"anchor": f"q{i}", "positive": f"p{i % 20}"} for i in range(40)]
    data = Dataset.from_list(rows)
    sampler = GatheredNoDuplicatesBatchSampler(data, 4, True, world_size=world_size, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0 and all(len(b) == 4 for b in batches)
    steps = [sum(batches[i:i + world_size], []) for i in range(0, len(batches), world_size)]
    for step in steps:
        texts = _texts(rows, step)
        assert len(texts) == len(set(texts)), step
    # the library's sampler, whose batch i goes to worker i mod N, lets repeats meet
    if world_size > 1:
        plain = list(NoDuplicatesBatchSampler(data, 4, True, seed=1))
        gathered = [sum(plain[i:i + world_size], []) for i in range(0, len(plain), world_size)]
        assert any(len(set(_texts(rows, s))) < len(_texts(rows, s)) for s in gathered)
