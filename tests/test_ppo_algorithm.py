"""Known-answer tests for alignray.ppo; every expected number is computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from alignray.ppo import (
    TWEET_CONSTRAINTS_EXAMPLE,
    AdaptiveKLController,
    ConstraintPenalty,
    EarlyStopOnKL,
    FixedKLController,
    RunningRewardNormalizer,
    aggregate,
    clip_rewards,
    clipped_surrogate_loss,
    clipped_value_loss,
    entropy_from_logprobs,
    explained_variance,
    get_advantage_estimator,
    get_policy_loss,
    kl_estimate,
    kl_loss,
    length_sorted_parts,
    make_kl_controller,
    masked_mean,
    masked_var,
    masked_whiten,
    micro_batch_count,
    minibatch_indices,
    token_level_rewards,
    truncation_penalty,
)

t = torch.tensor


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, t(expected, dtype=actual.dtype), atol=1e-5, rtol=1e-5)


# --- masked statistics -------------------------------------------------------------------

def test_masked_mean_and_var_ignore_padding_even_when_it_is_inf():
    values = t([[1.0, 2.0, 3.0, -math.inf], [5.0, math.nan, math.nan, math.nan]])
    mask = t([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    close(masked_mean(values, mask), 11.0 / 4)
    close(masked_mean(values, mask, dim=1), [2.0, 5.0])
    # deviations from 2.75: -1.75, -0.75, 0.25, 2.25 -> squares sum 8.75
    close(masked_var(values, mask, unbiased=False), 8.75 / 4)
    close(masked_var(values, mask), 8.75 / 3)


def test_whitening_gives_mean_0_std_1_over_valid_tokens_and_zero_padding():
    values = t([[3.0, 7.0, 1.0, 100.0], [4.0, -2.0, 100.0, 100.0]])
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)
    whitened = masked_whiten(values, mask)
    valid = whitened[mask.bool()]
    close(valid.mean(), 0.0)
    close(valid.std(), 1.0)
    close(whitened[~mask.bool()], [0.0, 0.0, 0.0])
    kept_mean = masked_whiten(values, mask, shift_mean=False)[mask.bool()]
    close(kept_mean.mean(), 13.0 / 5)


# --- KL ----------------------------------------------------------------------------------

def test_kl_estimators_known_values():
    logprobs, ref = t([-1.0, -2.0]), t([-1.5, -1.0])
    close(kl_estimate(logprobs, ref, "k1"), [0.5, -1.0])
    close(kl_estimate(logprobs, ref, "k2"), [0.125, 0.5])
    # log r = ref - logp = [-0.5, 1.0]
    close(kl_estimate(logprobs, ref, "k3"), [math.exp(-0.5) - 1 + 0.5, math.e - 1 - 1.0])
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(logprobs, ref, "k4")


def test_k3_is_never_negative_and_zero_when_equal():
    logprobs = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    ref = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    assert (kl_estimate(logprobs, ref, "k3") >= 0).all()
    close(kl_estimate(logprobs, logprobs, "k3"), torch.zeros(1000).tolist())


def test_adaptive_controller_follows_ziegler_update_and_round_trips():
    controller = AdaptiveKLController(init_coef=0.2, target=4.0, horizon=640)
    controller.update(current_kl=6.0, n_steps=64)  # error 0.5 clipped to 0.2: x 1.02
    assert controller.coef == pytest.approx(0.204)
    controller.update(current_kl=4.4, n_steps=64)  # error 0.1: x 1.01
    assert controller.coef == pytest.approx(0.204 * 1.01)
    controller.update(current_kl=1.0, n_steps=64)  # error -0.75 clipped to -0.2: x 0.98
    assert controller.coef == pytest.approx(0.204 * 1.01 * 0.98)

    restored = AdaptiveKLController(init_coef=1.0, target=4.0, horizon=640)
    restored.load_state_dict(controller.state_dict())
    assert restored.coef == controller.coef
    restored.update(3.0, 64)
    controller.update(3.0, 64)
    assert restored.coef == controller.coef < 0.204 * 1.01 * 0.98


def test_fixed_controller_and_factory():
    fixed = make_kl_controller("fixed", coef=0.2, target=4.0, horizon=640)
    assert isinstance(fixed, FixedKLController)
    fixed.update(100.0, 64)
    assert fixed.coef == 0.2
    assert isinstance(make_kl_controller("adaptive", 0.1, 4.0, 640), AdaptiveKLController)
    with pytest.raises(ValueError, match="target and horizon"):
        make_kl_controller("adaptive", 0.1)
    with pytest.raises(ValueError, match="adaptive"):
        make_kl_controller("pid", 0.1)


# --- rewards -----------------------------------------------------------------------------

def test_token_level_rewards_put_the_score_on_the_last_valid_token():
    mask = t([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    kl = t([[0.5, 1.0, -2.0, math.inf], [3.0, math.nan, 7.0, 7.0]])
    rewards = token_level_rewards(t([1.0, 2.0]), kl, mask, kl_coef=0.1)
    close(rewards, [[-0.05, -0.1, 0.2 + 1.0, 0.0], [-0.3 + 2.0, 0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="no valid response token"):
        token_level_rewards(t([1.0]), t([[0.0, 0.0]]), t([[0, 0]]), 0.1)


def test_running_normalizer_matches_whole_stream_and_round_trips():
    stream = torch.randn(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 5
    normalizer = RunningRewardNormalizer()
    for chunk in stream.split([1, 50, 120, 129]):
        normalizer.update(chunk)
    assert normalizer.count == 300
    assert normalizer.mean == pytest.approx(stream.mean().item())
    assert normalizer.std == pytest.approx(stream.std(unbiased=False).item())
    normalized = normalizer.normalize(stream)
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert normalized.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)

    restored = RunningRewardNormalizer()
    restored.load_state_dict(normalizer.state_dict())
    close(restored.normalize(stream[:3]), normalized[:3].tolist())
    scale_only = RunningRewardNormalizer(shift_mean=False)
    scale_only.load_state_dict(normalizer.state_dict())
    close(scale_only.normalize(t([0.0, 6.0])), [0.0, 6.0 / normalizer.std])


def test_clip_and_truncation_penalty():
    close(clip_rewards(t([-9.0, 0.5, 9.0]), 5.0), [-5.0, 0.5, 5.0])
    close(truncation_penalty(t([True, False, True]), 1.5), [0.0, -1.5, 0.0])
    with pytest.raises(ValueError):
        truncation_penalty(t([True]), -1.0)


# --- constraints -------------------------------------------------------------------------

def test_constraint_penalties_hit_whole_words_case_insensitively():
    penalty = ConstraintPenalty.from_config({
        "banned_phrases": [{"phrase": "lie", "cost": 1.0},
                           {"phrase": "spread the rumour", "cost": 2.0}],
        "patterns": [{"name": "shout", "pattern": r"!{3,}", "cost": 0.5}],
    })
    texts = [
        "I believe the lies they told belie the facts",  # "lie" only inside other words
        "That is a LIE, friends",
        "please   Spread The\nRumour about it!!!",
        "what a lovely day at the beach",
    ]
    costs, violations = penalty.penalties(texts)
    close(costs, [0.0, 1.0, 2.5, 0.0])
    assert violations["phrase:lie"].tolist() == [False, True, False, False]
    assert violations["phrase:spread the rumour"].tolist() == [False, False, True, False]
    assert violations["shout"].tolist() == [False, False, True, False]


def test_degenerate_rule_and_tweet_example_config():
    penalty = ConstraintPenalty.from_config(TWEET_CONSTRAINTS_EXAMPLE)
    texts = ["best best best best", "RETWEET this lie now", "had a great time with my family today",
             "SO HAPPY RIGHT NOW with the results"]
    costs, violations = penalty.penalties(texts)
    assert violations["degenerate"].tolist() == [True, False, False, False]
    assert violations["phrase:retweet this lie"].tolist() == [False, True, False, False]
    assert violations["all_caps_run"].tolist() == [False, False, False, True]
    close(costs, [1.0, 1.0, 0.0, 0.5])
    with pytest.raises(ValueError, match="unknown constraint keys"):
        ConstraintPenalty.from_config({"banned_words": []})


# --- advantages --------------------------------------------------------------------------

def test_gae_hand_example_gamma_1_lam_095():
    # deltas: 0.6-0.5 = 0.1, 0.7-0.6 = 0.1, 1-0.7 = 0.3
    # A2 = 0.3, A1 = 0.1 + 0.95*0.3 = 0.385, A0 = 0.1 + 0.95*0.385 = 0.46575
    gae = get_advantage_estimator("gae")
    rewards, values = t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    close(advantages, [[0.46575, 0.385, 0.3]])
    close(returns, [[0.96575, 0.985, 1.0]])


def test_gae_with_lam_1_is_discounted_return_minus_value():
    rewards, values = t([[1.0, 0.0, 2.0]]), t([[0.5, -1.0, 0.25]])
    advantages, returns = get_advantage_estimator("gae")(rewards, values, torch.ones(1, 3),
                                                         gamma=0.9, lam=1.0)
    discounted = [1.0 + 0.9 * 1.8, 0.0 + 0.9 * 2.0, 2.0]  # 2.62, 1.8, 2.0
    close(returns, [discounted])
    close(advantages, [[2.62 - 0.5, 1.8 + 1.0, 2.0 - 0.25]])


def test_gae_does_not_bootstrap_past_the_end_and_padding_does_not_leak():
    rewards = t([[0.0, 0.0, 1.0, 5.0, 5.0], [0.0, 1.0, 0.0, 0.0, 0.0]])
    values = t([[0.5, 0.6, 0.7, 9.0, 9.0], [0.2, 0.4, 0.0, 0.0, 0.0]])
    mask = t([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    advantages, returns = get_advantage_estimator("gae")(rewards, values, mask, gamma=1.0, lam=0.95)
    close(advantages[0], [0.46575, 0.385, 0.3, 0.0, 0.0])
    close(returns[0], [0.96575, 0.985, 1.0, 0.0, 0.0])
    unpadded, _ = get_advantage_estimator("gae")(rewards[1:], values[1:], mask[1:], gamma=1.0, lam=0.95)
    close(advantages[1:], unpadded.tolist())
    with pytest.raises(ValueError, match="right-padded"):
        get_advantage_estimator("gae")(rewards, values, t([[1, 0, 1, 0, 0]] * 2), gamma=1.0, lam=0.95)


# --- losses ------------------------------------------------------------------------------

def test_clipped_surrogate_hand_example():
    # ratios 1.5, 1.0, 0.5, 0.5 and a padded token; advantages 2, 1, 1, -1; eps 0.2
    # per token max(-A r, -A clip(r)): max(-3, -2.4) = -2.4 (clipped), -1, max(-0.5, -0.8) = -0.5,
    # max(0.5, 0.8) = 0.8 (clipped) -> mean -0.775, clip fraction 2/4
    old = torch.zeros(1, 5)
    logprobs = torch.log(t([[1.5, 1.0, 0.5, 0.5, 50.0]])).requires_grad_()
    advantages = t([[2.0, 1.0, 1.0, -1.0, 100.0]])
    mask = t([[1, 1, 1, 1, 0]])
    loss, stats = get_policy_loss("clipped_surrogate")(logprobs, old, advantages, mask, 0.2)
    close(loss, -0.775)
    assert stats["clip_fraction"] == pytest.approx(0.5)
    k3 = [(r - 1) - math.log(r) for r in (1.5, 1.0, 0.5, 0.5)]
    assert stats["approx_kl"] == pytest.approx(sum(k3) / 4)
    assert stats["ratio_max"] == pytest.approx(1.5)
    loss.backward()
    # clipped tokens and padding carry no gradient; d(-A r / 4)/d logp = -A r / 4 elsewhere
    close(logprobs.grad, [[0.0, -0.25, -0.125, 0.0, 0.0]])


def test_aggregations_weigh_tokens_responses_or_a_constant():
    # valid tokens 1, 2 (row 0) and 3 (row 1); 50 is padding
    per_token, mask = t([[1.0, 2.0, 50.0], [3.0, 50.0, 50.0]]), t([[1, 1, 0], [1, 0, 0]])
    close(aggregate(per_token, mask, "token_mean"), 2.0)  # 6 / 3
    close(aggregate(per_token, mask, "seq_mean"), 2.25)  # (1.5 + 3) / 2
    close(aggregate(per_token, mask, "constant", normalizer=4), 0.75)  # 6 / (2 rows x 4)
    with pytest.raises(ValueError, match="positive normaliser"):
        aggregate(per_token, mask, "constant")
    with pytest.raises(ValueError, match="known: \\['token_mean', 'seq_mean', 'constant'\\]"):
        aggregate(per_token, mask, "sum")


def test_clipped_surrogate_per_response_and_with_a_constant_normaliser():
    # row 0: ratios 1.5, 1.0, advantages 2, 1 -> -2.4 (clipped), -1; row 1: ratio 0.5, A 1 -> -0.5
    old = torch.zeros(2, 2)
    logprobs = torch.log(t([[1.5, 1.0], [0.5, 7.0]])).requires_grad_()
    advantages, mask = t([[2.0, 1.0], [1.0, 9.0]]), t([[1, 1], [1, 0]])
    loss, _ = clipped_surrogate_loss(logprobs, old, advantages, mask, 0.2, aggregation="seq_mean")
    close(loss, (-3.4 / 2 - 0.5) / 2)
    loss.backward()
    # each response weighs 1/2, each of its tokens 1/len: d(-A r)/d logp = -A r
    close(logprobs.grad, [[0.0, -1.0 / 4], [-0.5 / 2, 0.0]])
    loss, _ = clipped_surrogate_loss(logprobs, old, advantages, mask, 0.2, aggregation="constant", normalizer=2)
    close(loss, -3.9 / 4)  # the sum over tokens / (2 rows x 2)


def test_gspo_clips_the_ratio_of_whole_responses_and_has_the_sequence_gradient():
    # row 0: token log-ratios 0.1, 0.3 -> s = e^0.2 = 1.2214 > 1.2 with A = 1: clipped to -1.2, no gradient
    # row 1: -0.2, 0.0, -0.4 -> s = e^-0.2 = 0.81873 inside [0.8, 1.2], A = -1: loss +s
    old = t([[-1.0, -2.0, 0.0], [-1.0, -1.0, -1.0]])
    log_ratio = t([[0.1, 0.3, 5.0], [-0.2, 0.0, -0.4]])
    advantages, mask = t([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]), t([[1, 1, 0], [1, 1, 1]])
    logprobs = (old + log_ratio).requires_grad_()
    loss, stats = get_policy_loss("gspo")(logprobs, old, advantages, mask, 0.2)
    close(loss, (-1.2 + math.exp(-0.2)) / 2)
    assert stats["ratio_max"] == pytest.approx(math.exp(0.2)) and stats["clip_fraction"] == pytest.approx(2 / 5)
    loss.backward()
    close(logprobs.grad, [[0.0, 0.0, 0.0], [math.exp(-0.2) / 6] * 3])
    # the same gradient as the sequence-level objective 1/2 * sum_i -A_i s_i on the unclipped response
    sequence_logprobs = (old + log_ratio).requires_grad_()
    s1 = torch.exp((sequence_logprobs - old)[1].mean())
    (0.5 * s1).backward()
    close(logprobs.grad[1], sequence_logprobs.grad[1].tolist())


def test_kl_as_a_loss_term_with_each_estimator_and_no_gradient_from_padding():
    # log r = ref - logp = -0.5, 0 on the valid tokens; the padded reference log-prob is -inf
    logprobs = t([[-1.0, -2.0, -3.0]]).requires_grad_()
    ref, mask = t([[-1.5, -2.0, float("-inf")]]), t([[1, 1, 0]])
    k3 = kl_loss(logprobs, ref, mask, "k3")
    close(k3, (math.exp(-0.5) - 1 + 0.5) / 2)  # k3 = e^{log r} - 1 - log r, token mean
    k3.backward()
    close(logprobs.grad, [[(1 - math.exp(-0.5)) / 2, 0.0, 0.0]])  # d k3 / d logp = 1 - r
    logprobs.grad = None
    k1 = kl_loss(logprobs, ref, mask, "k1", aggregation="seq_mean")
    close(k1, 0.25)  # (0.5 + 0) / 2 tokens, one response
    k1.backward()
    close(logprobs.grad, [[0.5, 0.5, 0.0]])


def test_clipped_value_loss_hand_example():
    # token 0: V_clip = 1.2, errors (2-3)^2 = 1 and (1.2-3)^2 = 3.24 -> 3.24 (clipped)
    # token 1: inside the clip range, error 1.21 both ways; mean 2.225, times 0.5
    values, old, returns = t([[2.0, 1.1, 7.0]]), t([[1.0, 1.0, 0.0]]), t([[3.0, 0.0, 0.0]])
    loss, stats = clipped_value_loss(values, old, returns, t([[1, 1, 0]]), clip_eps=0.2)
    close(loss, 0.5 * (3.24 + 1.21) / 2)
    assert stats["value_clip_fraction"] == pytest.approx(0.5)


def test_entropy_of_uniform_is_log_vocab_and_handles_minus_inf():
    def entropy(logits):
        return entropy_from_logprobs(torch.log_softmax(logits, dim=-1))
    close(entropy(torch.zeros(2, 3, 7)), torch.full((2, 3), math.log(7)).tolist())
    p = 0.9
    two_way = torch.log(t([p, 1 - p]))
    close(entropy(two_way), -(p * math.log(p) + (1 - p) * math.log(1 - p)))
    close(entropy(t([0.0, 0.0, -math.inf])), math.log(2))
    close(entropy(t([1000.0, 0.0])), 0.0)


def test_explained_variance():
    returns, mask = t([[1.0, 2.0, 3.0, 99.0]]), t([[1, 1, 1, 0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)
    # residuals 1, 0, -1: variance 1, as much as the returns' own -> 0
    assert explained_variance(t([[0.0, 2.0, 4.0, 0.0]]), returns, mask) == pytest.approx(0.0)
    # residuals 2, 0, -2: variance 4 -> 1 - 4 = -3
    assert explained_variance(t([[-1.0, 2.0, 5.0, 0.0]]), returns, mask) == pytest.approx(-3.0)


# --- minibatches -------------------------------------------------------------------------

def test_minibatches_cover_each_sample_once_per_epoch_and_are_deterministic():
    def draw(seed: int):
        return list(minibatch_indices(10, 4, 3, torch.Generator().manual_seed(seed)))

    batches = draw(0)
    assert [epoch for epoch, _ in batches] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [len(idx) for _, idx in batches[:3]] == [4, 4, 2]
    epochs = [torch.cat([idx for e, idx in batches if e == epoch]) for epoch in range(3)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(10))
    assert not torch.equal(epochs[0], epochs[1])
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(batches, draw(0)))
    assert not all(torch.equal(a, b) for (_, a), (_, b) in zip(batches, draw(1)))


def test_early_stop_on_kl_skips_remaining_epochs():
    kl_per_epoch = [0.01, 0.02, 0.2, 0.01]  # target 0.1: epoch 2 exceeds 0.15
    early_stop = EarlyStopOnKL(target_kl=0.1)
    seen_epochs = []
    for epoch, _ in minibatch_indices(8, 4, 4, torch.Generator().manual_seed(0), early_stop):
        seen_epochs.append(epoch)
        early_stop.record(kl_per_epoch[epoch])
    assert seen_epochs == [0, 0, 1, 1, 2, 2]
    assert early_stop.stopped_after_epoch == 2

    never = EarlyStopOnKL(target_kl=None)
    for epoch, _ in minibatch_indices(8, 4, 4, torch.Generator().manual_seed(0), never):
        never.record(10.0)
    assert epoch == 3 and never.stopped_after_epoch is None


def test_micro_batch_count_fits_the_token_budget():
    lengths = torch.tensor([10, 40, 20, 30])
    assert micro_batch_count(lengths, 0) == 1  # no limit
    assert micro_batch_count(lengths, 160) == 1  # 4 rows x 40
    assert micro_batch_count(lengths, 100) == 2  # [40, 30] -> 80, [20, 10] -> 40
    assert micro_batch_count(lengths, 45) == 4  # 3 parts would put 2 rows of 40 and 30 together
    assert micro_batch_count(lengths, 5) == 4  # never more parts than rows


def test_length_sorted_parts_group_similar_lengths_and_cover_each_row_once():
    lengths = torch.tensor([10, 40, 20, 30, 25])
    parts = length_sorted_parts(lengths, 2)
    assert [p.tolist() for p in parts] == [[1, 3], [4, 2, 0]]  # lengths [40, 30], [25, 20, 10]
    assert sorted(torch.cat(length_sorted_parts(lengths, 5)).tolist()) == [0, 1, 2, 3, 4]


def test_a_batch_splits_into_shards_of_whole_groups():
    from alignray.ppo.experience import PromptBatch
    batch = PromptBatch(torch.arange(5).repeat_interleave(3), torch.zeros(15, 2), torch.ones(15, 2))
    shards = batch.split(2, group_size=3)  # 5 groups: 2 and 3 of them (linspace 0, 2.5, 5 rounds to even)
    assert [s.prompt_index.tolist() for s in shards] == [[0] * 3 + [1] * 3, [2] * 3 + [3] * 3 + [4] * 3]
    assert [len(s) for s in batch.split(2)] == [8, 7]  # one row per group: cut anywhere
    with pytest.raises(ValueError, match="whole groups of 4"):
        batch.split(2, group_size=4)
    with pytest.raises(ValueError, match="5 groups of 3 rows into 6"):
        batch.split(6, group_size=3)


# --- reward functions ---------------------------------------------------------------------
# Loaded by import path in the test below, as a user's would be.

def exclamations(prompts: list[str], responses: list[str]) -> list[int]:
    return [response.count("!") for response in responses]


def word_count(prompts: list[str], responses: list[str]) -> list[int]:
    return [len(response.split()) for response in responses]


def one_score_short(prompts: list[str], responses: list[str]) -> list[float]:
    return [1.0] * (len(responses) - 1)


def test_reward_functions_are_added_with_their_weights_and_each_part_is_reported():
    from alignray.config.ppo import PPORewardConfig, RewardFunctionConfig
    from alignray.ppo import WeightedReward
    module = "tests.test_ppo_algorithm"
    reward = WeightedReward.from_config(PPORewardConfig(kind="reward_model", weight=2.0, functions=[
        RewardFunctionConfig(f"{module}:exclamations", 0.5),
        RewardFunctionConfig(f"{module}:word_count", -0.1, name="length")]))
    total, parts = reward.combine(t([1.0, -1.0]), ["p", "q"], ["wow! great!", "meh"])
    # 2 x 1 + 0.5 x 2 - 0.1 x 2 = 2.8 and 2 x -1 + 0 - 0.1 x 1 = -2.1
    close(total, [2.8, -2.1])
    assert parts == pytest.approx({"reward_parts/reward_model": 0.0, "reward_parts/exclamations": 0.5,
                                   "reward_parts/length": -0.15})
    scores = t([0.25, 3.0])
    alone, none = WeightedReward.from_config(PPORewardConfig()).combine(scores, ["p", "q"], ["a", "b"])
    assert torch.equal(alone, scores) and none == {}  # no functions: the scorer's scores, nothing more logged


@pytest.mark.parametrize("path,message", [
    ("tests.test_ppo_algorithm.exclamations", "not of the form 'package.module:function'"),
    ("tests.no_such_module:f", "cannot import 'tests.no_such_module'"),
    ("tests.test_ppo_algorithm:no_such_function", "has no function 'no_such_function'"),
])
def test_a_reward_function_that_cannot_be_loaded_is_named(path, message):
    from alignray.ppo import load_reward_function
    with pytest.raises(ValueError, match=message):
        load_reward_function(path)


def test_a_reward_function_must_give_one_finite_score_per_response_and_parts_need_names():
    from alignray.config.ppo import PPORewardConfig, RewardFunctionConfig
    from alignray.ppo import WeightedReward
    short = WeightedReward.from_config(PPORewardConfig(functions=[
        RewardFunctionConfig("tests.test_ppo_algorithm:one_score_short")]))
    with pytest.raises(ValueError, match="'one_score_short' must return one finite float per response"):
        short.combine(t([0.0, 1.0]), ["p", "q"], ["a", "b"])
    with pytest.raises(ValueError, match="its own name"):
        WeightedReward.from_config(PPORewardConfig(kind="training_annotators", functions=[
            RewardFunctionConfig("tests.test_ppo_algorithm:word_count", name="training_annotators")]))
