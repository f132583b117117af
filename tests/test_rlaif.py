"""The AI judge: reading the answer tokens' log-probs, the position swap, clipping to the
model's positions (on the real tiny model), and the Ray Data actor-pool path on CPU."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignray.feedback.schema import validate_feedback, feedback_table
from alignray.models.modeling import load_causal_lm, load_tokenizer
from alignray.feedback.rlaif import (ANSWER_PREFIX, ai_feedback_rows, answer_margins, answer_margins_from_logits,
                            answer_token_ids, fitted_judge_texts, judge_pairs, judge_text, swap_averaged)


@pytest.fixture(scope="module")
def judge(tiny_base_model):
    return load_causal_lm(tiny_base_model, torch.device("cpu")).eval(), load_tokenizer(tiny_base_model)


def test_margin_is_the_log_prob_difference_of_the_two_answer_tokens():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0], [5.0, 0.0, 0.0, 3.0]])
    margins = answer_margins_from_logits(logits, [1, 3])
    assert margins.tolist() == pytest.approx([3.0, -3.0])  # the softmax normaliser cancels


def test_swap_cancels_a_position_bias_and_keeps_the_preference():
    true_log_odds, bias = np.array([1.0, -2.0, 0.0]), 0.7
    verdict = swap_averaged(true_log_odds + bias, -true_log_odds + bias)
    assert verdict.preference_a == pytest.approx(1 / (1 + np.exp(-true_log_odds)))
    assert verdict.position_bias == pytest.approx([bias] * 3)
    # a judge that always answers "A" has no preference at all once swapped
    assert swap_averaged(np.array([4.0]), np.array([4.0])).preference_a == pytest.approx([0.5])


def test_judge_text_ends_with_the_answer_prefix_and_answers_are_distinct_tokens(judge):
    _, tokenizer = judge
    text = judge_text(tokenizer, "so happy today", "love it", "hate it")
    assert text.endswith(ANSWER_PREFIX) and "A: love it" in text and "B: hate it" in text
    a, b = answer_token_ids(tokenizer)
    assert a != b and tokenizer.decode([a]).strip() == "A"


def test_margins_match_the_models_next_token_log_probs(judge):
    model, tokenizer = judge
    texts = [judge_text(tokenizer, "good morning", "lovely day", "ugh"),
             judge_text(tokenizer, "i just", "lost my keys", "won!")]
    ids = answer_token_ids(tokenizer)
    batched = answer_margins(model, tokenizer, texts, ids, batch_size=2)  # left-padded batch
    for text, margin in zip(texts, batched):
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            logprobs = model(**encoded).logits[0, -1].log_softmax(-1)
        assert margin == pytest.approx((logprobs[ids[0]] - logprobs[ids[1]]).item(), abs=1e-4)


def test_swapping_the_replies_of_a_pair_mirrors_the_preference(judge):
    model, tokenizer = judge
    forward = judge_pairs(model, tokenizer, ["so tired of"], ["this rain"], ["nothing good"])
    backward = judge_pairs(model, tokenizer, ["so tired of"], ["nothing good"], ["this rain"])
    assert forward["preference_a"][0] == pytest.approx(1 - backward["preference_a"][0], abs=1e-5)
    assert forward["position_bias"][0] == pytest.approx(backward["position_bias"][0], abs=1e-5)


def test_long_prompts_and_replies_are_clipped_to_fit_the_models_positions(judge):
    model, tokenizer = judge
    limit = model.config.n_positions
    long_reply = "happy birthday to my best friend " * 20
    ab, ba, clipped = fitted_judge_texts(tokenizer, "today is", long_reply, "meh", limit, max_reply_tokens=64)
    assert clipped == 1
    for text in (ab, ba):
        assert len(tokenizer(text, add_special_tokens=False).input_ids) <= limit
    shouting = "EXCLUSIVE VIDEO: THE TRUTH ABOUT EVERYTHING"
    verdict = judge_pairs(model, tokenizer, ["today is", shouting], [long_reply, long_reply], ["meh", long_reply])
    assert verdict["clipped_texts"].tolist() == [1, 3]
    assert ((0 < verdict["preference_a"]) & (verdict["preference_a"] < 1)).all()


def test_ai_rows_are_valid_feedback_with_source_ai():
    rows = ai_feedback_rows(["p", "p", "q"], ["a1", "a2", "a3"], ["b1", "b2", "b3"], [0.9, 0.2, 0.5])
    table, report = validate_feedback(feedback_table(rows))
    assert report.ok and table.column("source").to_pylist() == ["ai"] * 3
    assert table.column("winner").to_pylist() == ["a", "b", "tie"]
    assert table.column("strength").to_pylist() == pytest.approx([0.8, 0.6, 0.0])
    assert set(table.column("annotator_id").to_pylist()) == {"ai-judge"}


def test_actor_pool_judges_through_ray_data_in_order(ray_cluster, tiny_base_model, judge):
    from alignray.actors.ai_labeller import label_with_actor_pool
    model, tokenizer = judge
    prompts = ["i love", "why is", "the best", "so sad", "good night"] * 2
    replies_a = [f"reply number {i} is great" for i in range(10)]
    replies_b = [f"terrible answer {i}" for i in range(10)]
    items = [{"item": i, "prompt": p, "response_a": a, "response_b": b}
             for i, (p, a, b) in enumerate(zip(prompts, replies_a, replies_b))]
    rows = label_with_actor_pool(items, str(tiny_base_model), actors=2, batch_size=3)
    assert [row["item"] for row in rows] == list(range(10))
    local = judge_pairs(model, tokenizer, prompts, replies_a, replies_b)
    assert [float(r["preference_a"]) for r in rows] == pytest.approx(local["preference_a"].tolist(), abs=1e-4)
    assert all(math.isfinite(float(r["position_bias"])) for r in rows)
