"""Reward-model losses on scalar rewards (pure torch).

* Bradley-Terry: the probability that people prefer ``chosen`` is
  ``sigmoid(r_chosen - r_rejected)``; the loss is its negative log-likelihood. An optional
  margin asks the chosen reward to lead by at least that much before the loss flattens
  (``-log sigmoid(r_c - r_r - margin)``, as in Llama 2's reward model), so decisive
  preferences (strength, rank gap) pull the rewards further apart than slight ones.
* Pointwise: thumbs (1 / 0) and quality scores squashed into [0, 1] are targets for
  ``sigmoid(reward)``, a binary cross-entropy with soft labels.

Every loss is a weighted mean: per-example weights (annotator reliability, the shared unit
weight of a ranking's pairs, half-weight ties) scale each example's share.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return values.mean()
    weights = weights.to(values.dtype)
    total = weights.sum()
    if total <= 0:
        raise ValueError("the weights of a batch sum to zero: no example would count")
    return (values * weights).sum() / total


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       margins: torch.Tensor | None = None,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean of ``-log sigmoid(r_chosen - r_rejected - margin)``."""
    difference = chosen_rewards - rejected_rewards
    if margins is not None:
        difference = difference - margins.to(difference.dtype)
    # logsigmoid is stable for large |difference|, unlike log(sigmoid(.)).
    return weighted_mean(-F.logsigmoid(difference), weights)


def pointwise_loss(rewards: torch.Tensor, targets: torch.Tensor,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted binary cross-entropy between ``sigmoid(reward)`` and targets in [0, 1]."""
    per_example = F.binary_cross_entropy_with_logits(rewards, targets.to(rewards.dtype), reduction="none")
    return weighted_mean(per_example, weights)


def mixed_reward_loss(pair_chosen: torch.Tensor, pair_rejected: torch.Tensor, pair_margins: torch.Tensor,
                      pair_weights: torch.Tensor, point_rewards: torch.Tensor, point_targets: torch.Tensor,
                      point_weights: torch.Tensor, margin_scale: float = 0.0,
                      pointwise_weight: float = 0.5) -> tuple[torch.Tensor, dict[str, float]]:
    """``bradley_terry + pointwise_weight * pointwise`` on one batch that may hold pairs,
    pointwise examples or both (a part with no examples adds nothing).

    The table's margins lie in [0, 1] (stated strength, rank gap); ``margin_scale`` turns
    them into reward units (0: plain Bradley-Terry). Returns the loss and, for the progress
    line, each part and the weighted share of pairs ranked right.
    """
    parts: dict[str, float] = {}
    total = pair_chosen.new_zeros(())
    if len(pair_chosen):
        margins = pair_margins * margin_scale if margin_scale else None
        pairwise = bradley_terry_loss(pair_chosen, pair_rejected, margins, pair_weights)
        total = total + pairwise
        right = (pair_chosen > pair_rejected).to(pair_chosen.dtype)
        parts |= {"pairwise_loss": float(pairwise), "pair_accuracy": float(weighted_mean(right, pair_weights))}
    if len(point_rewards) and pointwise_weight > 0:
        pointwise = pointwise_loss(point_rewards, point_targets, point_weights)
        total = total + pointwise_weight * pointwise
        parts["pointwise_loss"] = float(pointwise)
    return total, parts
