"""Advantage estimators, registered by name.

Every estimator has the same call, so the coordinator can pick one from config:
``estimator(rewards, values, mask, *, gamma, lam, group_ids) -> (advantages, returns)``,
all ``[batch, T]`` except ``group_ids`` ``[batch]``. Arguments an estimator has no use for
are accepted and ignored (each docstring says which it reads).

Responses are right-padded: each row of ``mask`` is a run of valid tokens then padding.
Nothing is bootstrapped past a row's last valid token, and padded positions get 0.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from alignray.ppo.masked import masked_sum, valid_only

AdvantageEstimator = Callable[..., tuple[Tensor, Tensor]]


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


def reinforce_advantages(rewards: Tensor, values: Tensor | None, mask: Tensor, *, gamma: float = 1.0,
                         lam: float = 1.0, group_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Discounted reward-to-go as the advantage, no critic; reads rewards and gamma.

    This is GAE with ``V = 0`` and ``lam = 1``; advantages and returns are equal.
    """
    returns, _ = gae_advantages(rewards, torch.zeros_like(rewards), mask, gamma=gamma, lam=1.0)
    return returns, returns


def rloo_advantages(rewards: Tensor, values: Tensor | None, mask: Tensor, *, gamma: float = 1.0,
                    lam: float = 1.0, group_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """REINFORCE leave-one-out (Ahmadian et al. 2024); reads rewards and group_ids, no critic.

    Responses with the same ``group_ids`` answer the same prompt. Each response's total
    reward minus the mean total of the *other* responses in its group is its advantage,
    broadcast to all its valid tokens. Returns are the undiscounted reward-to-go.
    """
    if group_ids is None:
        raise ValueError("rloo needs group_ids: which responses answer the same prompt")
    totals = masked_sum(rewards, mask, dim=1)
    _, group_index, group_sizes = torch.unique(group_ids, return_inverse=True, return_counts=True)
    if (group_sizes < 2).any():
        raise ValueError("rloo needs at least two responses per prompt")
    group_totals = torch.zeros(len(group_sizes), dtype=totals.dtype, device=totals.device)
    group_totals.index_add_(0, group_index, totals)
    sizes = group_sizes[group_index].to(totals.dtype)
    leave_one_out_mean = (group_totals[group_index] - totals) / (sizes - 1)
    advantages = valid_only((totals - leave_one_out_mean).unsqueeze(1).expand_as(rewards), mask)
    returns, _ = reinforce_advantages(rewards, None, mask, gamma=1.0)
    return advantages, returns


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "gae": gae_advantages,
    "reinforce": reinforce_advantages,
    "rloo": rloo_advantages,
}


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[name]
