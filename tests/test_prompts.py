import pytest

from customir.config import VerifyMethod
from customir.llm.prompts import (JUDGE_INSTRUCTION, ReplyError, build_judge_prompt,
                                  build_query_messages, build_scoring_prompt, judge_score,
                                  parse_query_reply, query_schema)
from customir.llm.scripted import ScriptedLLM
from customir.negatives.verify import score_pair

KINDS = ["keyword", "question", "claim"]


def test_every_chat_starts_with_the_same_few_shot_prefix():
    a = build_query_messages("Passage about kidneys.", KINDS)
    b = build_query_messages("Another passage about lungs.", KINDS, title="Lungs")
    assert a[:3] == b[:3]  # system + example turns: identical, so the KV cache is reused
    assert a[-1]["content"].endswith("Passage about kidneys.")
    assert b[-1]["content"].endswith("Lungs\nAnother passage about lungs.")


def test_schema_requires_each_kind_and_rejects_unknown_kinds():
    assert query_schema(["keyword"])["required"] == ["keyword"]
    with pytest.raises(ValueError, match="unknown query kinds"):
        query_schema(["haiku"])


def test_scoring_prompts_share_their_instruction_prefix():
    a, b = build_scoring_prompt("first"), build_scoring_prompt("second")
    common = 0
    while a[common] == b[common]:
        common += 1
    assert a[:common].startswith("Read the passage") and a.endswith("Query:")


@pytest.mark.parametrize("reply, expected", [
    ('{"keyword": "renal  failure", "question": "What causes renal failure?"}',
     {"keyword": "renal failure", "question": "What causes renal failure?"}),
    ('```json\n{"claim": "Statins reduce LDL."}\n```', {"claim": "Statins reduce LDL."}),
    ('Sure! {"keyword": "x y", "question": 3}', {"keyword": "x y"}),
])
def test_replies_are_parsed(reply, expected):
    assert parse_query_reply(reply, KINDS) == expected


@pytest.mark.parametrize("reply, message", [
    ("no json here", "no JSON object"),
    ('{"keyword": "unterminated', "no JSON object"),
    ('{"keyword": }', "invalid JSON"),
    ('{"other": "value"}', "none of the kinds"),
    ("[1, 2]", "no JSON object"),
])
def test_bad_replies_say_what_is_wrong(reply, message):
    with pytest.raises(ReplyError, match=message):
        parse_query_reply(reply, KINDS)


def test_judge_prompt_and_score_from_choice_probabilities():
    prompt, choices = build_judge_prompt("Insulin lowers glucose.", "insulin", "scale")
    assert prompt.startswith(JUDGE_INSTRUCTION) and prompt.endswith("Score:")
    assert choices == [f" {i}" for i in range(1, 11)]
    assert judge_score([0.0, -50.0]) == pytest.approx(0.0)  # all mass on "no"
    assert judge_score([-50.0, 0.0]) == pytest.approx(1.0)
    grades = [-50.0] * 10
    grades[6] = 0.0  # all mass on " 7"
    assert judge_score(grades) == pytest.approx(6 / 9)


@pytest.mark.parametrize("method", list(VerifyMethod))
def test_every_verify_method_scores_the_relevant_passage_higher(method):
    llm = ScriptedLLM()
    relevant = score_pair(llm, method, "insulin glucose", "Insulin lowers blood glucose.")
    unrelated = score_pair(llm, method, "insulin glucose", "Coffee improves alertness.")
    assert relevant > unrelated
