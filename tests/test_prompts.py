import pytest

from customir.llm.prompts import (ReplyError, build_query_messages, build_scoring_prompt,
                                  parse_query_reply, query_schema)

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
