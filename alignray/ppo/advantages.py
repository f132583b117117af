"""Advantage estimators, registered by name with what each needs to run.

Every estimator has the same call, so the coordinator can pick one from config:
``estimator(rewards, values, mask, *, gamma, lam, group_ids) -> (advantages, returns)``,
all ``[batch, T]`` except ``group_ids`` ``[batch]``. Arguments an estimator has no use for
are accepted and ignored (each docstring says which it reads).

``rewards`` are per token: the response's score on its last valid token, plus the KL
penalty on every token when the KL sits in the reward. The outcome estimators (grpo, rloo,
the baseline of reinforce_pp_baseline) read a response's total, the sum of its rewards.
Responses with the same ``group_ids`` answer the same prompt (``ppo.samples_per_prompt``).

Responses are right-padded: each row of ``mask`` is a run of valid tokens then padding.
Nothing is bootstrapped past a row's last valid token, and padded positions get 0.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from alignray.ppo.masked import masked_sum, masked_whiten, valid_only

AdvantageEstimator = Callable[..., tuple[Tensor, Tensor]]
GROUP_STD_EPS = 1e-6  # a group whose responses all score alike gets advantage 0, not 0/0


def _check_right_padded(mask: Tensor) -> None:
    valid = mask.bool()
    if (valid[:, 1:] & ~valid[:, :-1]).any():
        raise ValueError("mask must be right-padded: no valid token may follow a padded one")


def gae_advantages(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0,
                   lam: float = 0.95, group_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016); reads rewards, values, gamma, lam.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` = 0 after the last valid token, and
    ``A_t = delta_t + gamma * lam * A_{t+1}``. Returns are ``A + V``, the critic's target.
    """
    _check_right_padded(mask)
    rewards, values = valid_only(rewards, mask), valid_only(values, mask)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    advantages = valid_only(advantages, mask)
    return advantages, valid_only(advantages + values, mask)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """The discounted reward-to-go of every token, ``[batch, T]``: GAE with ``V = 0, lam = 1``."""
    returns, _ = gae_advantages(rewards, torch.zeros_like(rewards), mask, gamma=gamma, lam=1.0)
    return returns


def group_baseline(totals: Tensor, group_ids: Tensor | None, estimator: str) -> tuple[Tensor, Tensor, Tensor]:
    """Per response ``[batch]``: the sum of its group's totals, its group's size, and the
    unbiased standard deviation of its group's totals. Refuses groups of one response, whose
    baseline would be the response itself (or undefined)."""
    if group_ids is None:
        raise ValueError(f"{estimator} needs group_ids: which responses answer the same prompt")
    _, index, sizes = torch.unique(group_ids, return_inverse=True, return_counts=True)
    if (sizes < 2).any():
        raise ValueError(f"{estimator} needs at least two responses per prompt (ppo.samples_per_prompt >= 2)")
    sums = torch.zeros(len(sizes), dtype=totals.dtype, device=totals.device).index_add_(0, index, totals)
    size = sizes[index].to(totals.dtype)
    squares = torch.zeros_like(sums).index_add_(0, index, (totals - (sums / sizes)[index]).square())
    return sums[index], size, (squares[index] / (size - 1)).sqrt()


def _per_token(per_response: Tensor, mask: Tensor) -> Tensor:
    """One value per response ``[batch]`` on each of its valid tokens ``[batch, T]``."""
    return valid_only(per_response.unsqueeze(1).expand(mask.shape), mask)


def grpo_advantages(rewards: Tensor, values: Tensor | None, mask: Tensor, *, gamma: float = 1.0,
                    lam: float = 1.0, group_ids: Tensor | None = None,
                    scale_by_std: bool = True) -> tuple[Tensor, Tensor]:
    """GRPO's group-relative advantage (Shao et al. 2024); reads rewards and group_ids, no critic.

    A response's total minus its group's mean, divided by the group's (unbiased) standard
    deviation plus ``GROUP_STD_EPS``, on every valid token. ``scale_by_std=False`` is
    Dr. GRPO (Liu et al. 2025): the division favours groups whose answers barely differ.
    Returns are the undiscounted reward-to-go (logged; nothing trains on them).
    """
    totals = masked_sum(rewards, mask, dim=1)
    sums, sizes, stds = group_baseline(totals, group_ids, "grpo")
    advantages = totals - sums / sizes
    if scale_by_std:
        advantages = advantages / (stds + GROUP_STD_EPS)
    return _per_token(advantages, mask), discounted_returns(rewards, mask)


def rloo_advantages(rewards: Tensor, values: Tensor | None, mask: Tensor, *, gamma: float = 1.0,
                    lam: float = 1.0, group_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """REINFORCE leave-one-out (Ahmadian et al. 2024); reads rewards and group_ids, no critic.

    Each response's total reward minus the mean total of the *other* responses in its group
    is its advantage, broadcast to all its valid tokens. Returns are the undiscounted reward-to-go.
    """
    totals = masked_sum(rewards, mask, dim=1)
    sums, sizes, _ = group_baseline(totals, group_ids, "rloo")
    leave_one_out_mean = (sums - totals) / (sizes - 1)
    return _per_token(totals - leave_one_out_mean, mask), discounted_returns(rewards, mask)


def reinforce_pp_advantages(rewards: Tensor, values: Tensor | None, mask: Tensor, *, gamma: float = 1.0,
                            lam: float = 1.0, group_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025); reads rewards and gamma, no critic: the discounted reward-to-go
    (the KL penalty belongs in the per-token rewards, ``ppo.kl.placement=reward``), whitened
    over the whole batch's valid tokens in place of a critic's or a group's baseline."""
    returns = discounted_returns(rewards, mask, gamma)
    return masked_whiten(returns, mask), returns


def reinforce_pp_baseline_advantages(rewards: Tensor, values: Tensor | None, mask: Tensor, *, gamma: float = 1.0,
                                     lam: float = 1.0,
                                     group_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """REINFORCE++-baseline; reads rewards, gamma and group_ids, no critic: each token's
    reward-to-go minus the mean return of its group's responses (from their first token),
    then whitened over the batch as in reinforce_pp."""
    returns = discounted_returns(rewards, mask, gamma)
    sums, sizes, _ = group_baseline(returns[:, 0], group_ids, "reinforce_pp_baseline")
    return masked_whiten(returns - (sums / sizes).unsqueeze(1), mask), returns


@dataclass(frozen=True)
class Estimator:
    compute: AdvantageEstimator
    needs_critic: bool = False  # reads the critic's values: only then is a critic placed and trained
    needs_groups: bool = False  # compares responses to one prompt: ppo.samples_per_prompt >= 2
    # Whether the batch whitening of ppo.whiten_advantages applies when it is left unset: only
    # GAE's advantages come unscaled. GRPO's group std already scales them, Dr. GRPO leaves
    # them unscaled on purpose, RLOO's baseline centres them, REINFORCE++ whitens its own.
    whiten_by_default: bool = False


ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {
    "gae": Estimator(gae_advantages, needs_critic=True, whiten_by_default=True),
    "grpo": Estimator(grpo_advantages, needs_groups=True),
    "dr_grpo": Estimator(functools.partial(grpo_advantages, scale_by_std=False), needs_groups=True),
    "rloo": Estimator(rloo_advantages, needs_groups=True),
    "reinforce_pp": Estimator(reinforce_pp_advantages),
    "reinforce_pp_baseline": Estimator(reinforce_pp_baseline_advantages, needs_groups=True),
}
# Names that existed before: today's name for each, for the error message.
RENAMED = {"reinforce": "reinforce_pp (the batch whitening it relied on is now its own)"}


def estimator_spec(name: str) -> Estimator:
    if name not in ADVANTAGE_ESTIMATORS:
        hint = f"; '{name}' is now {RENAMED[name]}" if name in RENAMED else ""
        raise ValueError(f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGE_ESTIMATORS)}{hint}")
    return ADVANTAGE_ESTIMATORS[name]


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    return estimator_spec(name).compute


def whitens(name: str, setting: bool | None) -> bool:
    """Whether the batch's advantages are whitened after the estimator ``name``: as
    ``ppo.whiten_advantages`` says, or, where it is unset (None), as the estimator's default."""
    return estimator_spec(name).whiten_by_default if setting is None else setting


def needs_critic(name: str) -> bool:
    """Whether the estimator ``name`` reads a critic's values (only then is one launched)."""
    return estimator_spec(name).needs_critic
