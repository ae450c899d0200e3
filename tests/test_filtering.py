import hashlib

from customir.queries.filtering import choose_llm_chunks, query_id, reject_reason, word_count
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
    # schemas.py: query_id is the sha1 of (kind, query, chunk_id) joined by \x1f, first 16 hex
    # digits. Pinned literals (not f(x) == f(x) in one process): an id from Python's salted
    # hash() would change between runs and break resume and the joins between stages.
    assert query_id("keyword", "q", "c#0") == "b3203ad30e7cee57"
    assert query_id("question", "q", "c#0") == "e57cd011d6cbde15"
    for kind, query, chunk in [("keyword", "does metformin lower glucose", "d1#3"),
                               ("title", "二甲双胍", "x.eml#0")]:
        key = f"{kind}\x1f{query}\x1f{chunk}".encode()
        assert query_id(kind, query, chunk) == hashlib.sha1(key).hexdigest()[:16]


def test_an_empty_query_is_always_rejected():
    # an e-mail whose subject is only "Re:" gives an empty subject query; no word minimum
    # (min_structural_words=0) may let it through
    assert structural_queries({"title": "Re:", "chunk_index": 0, "source": "m.eml"}, False) == \
        [("subject", "")]
    assert reject_reason("", PASSAGE, 0, 40) == "empty"
    assert reject_reason("  \n", PASSAGE, 0, 40) == "empty"


def test_words_of_scripts_without_spaces_are_counted_per_character():
    assert word_count("does metformin lower glucose") == 4
    assert word_count("二甲双胍降低血糖吗") == 9  # Chinese: one word per ideograph
    assert word_count("メトホルミン 2型糖尿病") == 6 + 1 + 4  # kana, a digit run, ideographs
    assert word_count("  ") == 0
    chinese = "二甲双胍能降低成人的血糖吗"
    assert reject_reason(chinese, "二甲双胍可降低2型糖尿病成人的血糖。", 2, 40) is None
    assert reject_reason("二甲双胍" * 11, PASSAGE, 2, 40) == "too_long"
