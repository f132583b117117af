"""Known-answer tests for the advantage estimators of alignray/ppo/advantages.py; every
expected number is computed by hand in the comment beside it."""
from __future__ import annotations

import math

import pytest
import torch

from alignray.ppo import ADVANTAGE_ESTIMATORS, get_advantage_estimator, needs_critic

t = torch.tensor


def close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    assert torch.allclose(actual.float(), torch.as_tensor(expected, dtype=torch.float32), atol=atol), actual


# Two prompts, interleaved in the batch: prompt 7 has rows 0, 2, 3; prompt 4 rows 1, 4.
# Each row's total is the sum of its valid rewards: 1, 10, 2, 6, 20 (the 9s are padding).
REWARDS = t([[0.0, 1.0, 9.0], [10.0, 9.0, 9.0], [1.0, 1.0, 0.0], [0.0, 0.0, 6.0], [5.0, 15.0, 9.0]])
MASK = t([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
GROUPS = t([7, 4, 7, 7, 4])


def per_token(values: list[float]) -> list[list[float]]:
    """Each row's value on its valid tokens of MASK, 0 on padding."""
    return [[v if m else 0.0 for m in row] for v, row in zip(values, MASK.tolist())]


def test_grpo_divides_by_the_groups_unbiased_std_and_dr_grpo_does_not():
    # prompt 7: totals 1, 2, 6 -> mean 3, deviations -2, -1, 3, unbiased var (4+1+9)/2 = 7
    # prompt 4: totals 10, 20 -> mean 15, deviations -5, 5, unbiased var 50
    advantages, returns = get_advantage_estimator("grpo")(REWARDS, None, MASK, group_ids=GROUPS)
    s7, s4 = math.sqrt(7), math.sqrt(50)
    close(advantages, per_token([-2 / s7, -5 / s4, -1 / s7, 3 / s7, 5 / s4]))
    close(returns[3], [6.0, 6.0, 6.0])  # the undiscounted reward-to-go, logged
    advantages, _ = get_advantage_estimator("dr_grpo")(REWARDS, None, MASK, group_ids=GROUPS)
    close(advantages, per_token([-2.0, -5.0, -1.0, 3.0, 5.0]))


def test_grpo_gives_a_group_that_scores_alike_zero_advantage_not_nan():
    rewards = t([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 1.0]])
    advantages, _ = get_advantage_estimator("grpo")(rewards, None, torch.ones(4, 2), group_ids=t([0, 0, 1, 1]))
    close(advantages[:2], [[0.0, 0.0], [0.0, 0.0]])  # totals 1 and 1: std 0
    close(advantages[2:], [[1 / math.sqrt(2)] * 2, [-1 / math.sqrt(2)] * 2])  # 3, 1: mean 2, std sqrt(2)


def test_rloo_subtracts_the_mean_of_the_other_responses_to_the_prompt():
    # prompt 7: 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - (1+2)/2 = 4.5; prompt 4: 10 - 20, 20 - 10
    advantages, returns = get_advantage_estimator("rloo")(REWARDS, None, MASK, group_ids=GROUPS)
    close(advantages, per_token([-3.0, -10.0, -1.5, 4.5, 10.0]))
    close(returns[2], [2.0, 1.0, 0.0])


def test_reinforce_pp_whitens_the_discounted_returns_over_the_batch():
    # gamma 0.5: row 0 returns (0 + 0.5*1, 1) = (0.5, 1); row 1 (2 + 0.5*0 + 0.25*0, 0, 0) = (2, 0, 0)
    # valid returns 0.5, 1, 2, 0, 0: mean 0.7, squared deviations .04 .09 1.69 .49 .49 = 2.8,
    # unbiased var 0.7 -> (r - 0.7) / sqrt(0.7)
    rewards, mask = t([[0.0, 1.0, 5.0], [2.0, 0.0, 0.0]]), t([[1, 1, 0], [1, 1, 1]])
    advantages, returns = get_advantage_estimator("reinforce_pp")(rewards, None, mask, gamma=0.5)
    close(returns, [[0.5, 1.0, 0.0], [2.0, 0.0, 0.0]])
    sd = math.sqrt(0.7)
    close(advantages, [[-0.2 / sd, 0.3 / sd, 0.0], [1.3 / sd, -0.7 / sd, -0.7 / sd]], atol=1e-4)


def test_reinforce_pp_baseline_subtracts_the_groups_mean_return_then_whitens():
    # returns (gamma 1) row 0: (1, 1), row 1: (3, 3, 3); their first-token returns 1 and 3 share
    # a group: baseline 2 -> (-1, -1) and (1, 1, 1); mean 0.2, squared deviations 1.44 x 2 +
    # 0.64 x 3 = 4.8, unbiased var 1.2 -> (x - 0.2) / sqrt(1.2)
    rewards, mask = t([[0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]), t([[1, 1, 0], [1, 1, 1]])
    advantages, _ = get_advantage_estimator("reinforce_pp_baseline")(rewards, None, mask, group_ids=t([3, 3]))
    low, high = -1.2 / math.sqrt(1.2), 0.8 / math.sqrt(1.2)
    close(advantages, [[low, low, 0.0], [high, high, high]], atol=1e-4)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_group_estimators_refuse_a_prompt_answered_once(name):
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        get_advantage_estimator(name)(REWARDS, None, MASK, group_ids=t([7, 4, 7, 7, 5]))
    with pytest.raises(ValueError, match="group_ids"):
        get_advantage_estimator(name)(REWARDS, None, MASK)


def test_only_gae_needs_a_critic_and_old_names_point_to_the_new_ones():
    assert [name for name in ADVANTAGE_ESTIMATORS if needs_critic(name)] == ["gae"]
    with pytest.raises(ValueError, match="'reinforce' is now reinforce_pp"):
        get_advantage_estimator("reinforce")
    with pytest.raises(ValueError, match="known: \\['dr_grpo', 'gae', 'grpo', 'reinforce_pp', "):
        get_advantage_estimator("vtrace")


def test_a_group_estimator_without_groups_is_refused_before_anything_starts():
    from alignray.config.ppo import PPOConfig
    from alignray.ppo.checks import check_algorithm
    check_algorithm(PPOConfig(advantage_estimator="grpo", samples_per_prompt=2))
    check_algorithm(PPOConfig(advantage_estimator="reinforce_pp"))
    with pytest.raises(ValueError, match="advantage_estimator=rloo .*samples_per_prompt >= 2 \\(it is 1\\)"):
        check_algorithm(PPOConfig(advantage_estimator="rloo"))


def test_only_gaes_advantages_are_whitened_again_unless_the_config_says_otherwise():
    """A config built by hand (no preset) with a critic-free estimator keeps that estimator's
    own scaling: GRPO's group std is not undone by a second whitening meant for GAE."""
    from alignray.config.ppo import PPOConfig
    from alignray.ppo import whitens
    assert PPOConfig().whiten_advantages is None
    assert [name for name in sorted(ADVANTAGE_ESTIMATORS) if whitens(name, None)] == ["gae"]
    assert whitens("grpo", True) and not whitens("gae", False)
