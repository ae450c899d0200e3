from customir.queries.filtering import choose_llm_chunks, query_id, reject_reason
from customir.queries.signals import first_chunks_under_headings, structural_queries

PASSAGE = "Metformin lowers blood glucose in adults with type 2 diabetes."


def test_reject_reasons():
    assert reject_reason("metformin", PASSAGE, 2, 40) == "too_short"
    assert reject_reason(" ".join(["word"] * 41), PASSAGE, 2, 40) == "too_long"
    assert reject_reason("lowers blood glucose in adults", PASSAGE, 2, 40) == "copied_from_passage"
    assert reject_reason("what does the passage say", PASSAGE, 2, 40) == "mentions_the_passage"
    assert reject_reason("does metformin lower glucose", PASSAGE, 2, 40) is None


def test_structural_queries_come_from_titles_and_headings():
    first = {"title": "Metformin  basics", "chunk_index": 0, "heading": None}
    later = {"title": "Metformin basics", "chunk_index": 1, "heading": "Dosage"}
    assert structural_queries(first, False) == [("title", "Metformin basics")]
    assert structural_queries(later, True) == [("heading", "Dosage")]
    assert structural_queries(later, False) == []


def test_first_chunk_under_each_heading():
    ids = first_chunks_under_headings(["a", "a", "a", "b"], [0, 1, 2, 0],
                                      [None, "H", "H", "H"], ["a#0", "a#1", "a#2", "b#0"])
    assert ids == {"a#1", "b#0"}


def test_llm_sample_is_deterministic_and_grows_monotonically():
    ids = [f"c{i}" for i in range(100)]
    small, large = choose_llm_chunks(ids, 10, 1), choose_llm_chunks(ids, 20, 1)
    assert len(small) == 10 and small == choose_llm_chunks(ids, 10, 1)
    assert small <= large
    assert choose_llm_chunks(ids, 10, 2) != small
    assert choose_llm_chunks(ids, None, 1) == set(ids)


def test_query_ids_are_stable():
    assert query_id("keyword", "q", "c#0") == query_id("keyword", "q", "c#0")
    assert query_id("keyword", "q", "c#0") != query_id("question", "q", "c#0")
