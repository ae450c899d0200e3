import pytest

from customir.config import VerifyMethod
from customir.llm.prompts import (JUDGE_INSTRUCTION, SCORING_INSTRUCTION, build_judge_prompt,
                                  build_scoring_prompt, judge_score)
from customir.llm.scripted import ScriptedLLM
from customir.negatives.verify import score_pair

def test_scoring_prompts_share_their_instruction_prefix():
    # llama.cpp reuses the KV cache of a shared prompt prefix only: the whole fixed
    # instruction must come first, before (and not interleaved with) the passage.
    assert SCORING_INSTRUCTION.startswith("Read the passage")
    for passage in ("first passage", "second passage"):
        prompt = build_scoring_prompt(passage)
        assert prompt.startswith(SCORING_INSTRUCTION), prompt
        assert prompt.index(passage) >= len(SCORING_INSTRUCTION), prompt
        assert prompt.endswith("Query:")


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
