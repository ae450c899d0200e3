"""The embedded LLM's scoring paths agree with each other (real GGUF model, ~15 s)."""

import pytest

from customir.config import LLMConfig
from customir.llm.prompts import build_judge_prompt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm():
    pytest.importorskip("llama_cpp")
    from customir.llm.protocol import load_llm

    return load_llm(LLMConfig(model="qwen2.5-coder-1.5b-instruct", n_ctx=512), scoring=True)


def test_one_pass_choices_equal_decoding_each_choice(llm):
    prompt, choices = build_judge_prompt("Aspirin reduces the risk of heart attack.",
                                         "aspirin heart attack", "yes_no")
    fast = llm.choice_log_likelihoods(prompt, choices)  # one-token choices: one forward pass
    slow = [float(sum(llm._continuation_logprobs(prompt, c))) for c in choices]
    assert fast == pytest.approx(slow, abs=1e-4)
    assert all(x < 0 for x in fast)


def test_likelihood_is_the_mean_of_the_choice_sum(llm):
    prompt, continuation = "Passage: Aspirin thins the blood.\nQuery:", " aspirin blood"
    n_tokens = len(llm._llm.tokenize(continuation.encode(), add_bos=False, special=False))
    total = llm.choice_log_likelihoods(prompt, [continuation, " x y z w v u t"])[0]
    # llama.cpp's logits differ by ~1e-2 when the same tokens are decoded in another batch
    # split (the KV cache is reused from different points), hence the tolerance
    assert llm.query_log_likelihood(prompt, continuation) == pytest.approx(total / n_tokens,
                                                                           abs=0.05)


def test_a_prompt_over_the_context_is_an_error_not_a_score_without_its_query(llm):
    """Cutting the prompt to fit would drop its end, the query: the score would be read after a
    passage alone. The pair fails instead (verify counts it as llm_error)."""
    prompt, choices = build_judge_prompt("Aspirin thins the blood. " * 200,
                                         "aspirin and blood " * 60, "yes_no")
    with pytest.raises(ValueError, match="over llm.n_ctx 512"):
        llm.choice_log_likelihoods(prompt, choices)
    assert llm.choice_log_likelihoods(*build_judge_prompt("Aspirin thins blood.", "aspirin",
                                                          "yes_no"))  # and it goes on
