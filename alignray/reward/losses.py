"""Reward-model losses on scalar rewards (pure torch).

* Bradley-Terry: the probability that people prefer ``chosen`` is
  ``sigmoid(r_chosen - r_rejected)``; the loss is its negative log-likelihood. An optional
  margin asks the chosen reward to lead by at least that much before the loss flattens
  (``-log sigmoid(r_c - r_r - margin)``, as in Llama 2's reward model), so decisive
  preferences (strength, rank gap) pull the rewards further apart than slight ones.
* Pointwise: thumbs (1 / 0) and quality scores squashed into [0, 1] are targets for
  ``sigmoid(reward)``, a binary cross-entropy with soft labels.

Per-example weights (annotator reliability, the shared unit weight of a ranking's pairs,
half-weight ties) scale each example's share: :func:`reward_loss_sums` returns weighted
sums, which the training loop divides by the global batch's total weight.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_per_pair(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                           margins: torch.Tensor | None = None) -> torch.Tensor:
    """``-log sigmoid(r_chosen - r_rejected - margin)`` for each pair."""
    difference = chosen_rewards - rejected_rewards
    if margins is not None:
        difference = difference - margins.to(difference.dtype)
    # logsigmoid is stable for large |difference|, unlike log(sigmoid(.)).
    return -F.logsigmoid(difference)


def pointwise_per_example(rewards: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy between ``sigmoid(reward)`` and a target in [0, 1]."""
    return F.binary_cross_entropy_with_logits(rewards, targets.to(rewards.dtype), reduction="none")


def reward_loss_sums(pair_chosen: torch.Tensor, pair_rejected: torch.Tensor, pair_margins: torch.Tensor,
                     pair_weights: torch.Tensor, point_rewards: torch.Tensor, point_targets: torch.Tensor,
                     point_weights: torch.Tensor, margin_scale: float = 0.0,
                     pointwise_weight: float = 0.5) -> tuple[torch.Tensor, dict[str, float]]:
    """The mixed loss of a batch of pairs and pointwise examples, as weighted sums.

    ``loss_sum = sum_pairs w * bradley_terry + pointwise_weight * sum_points w * pointwise``
    and ``units = sum of all example weights``, so ``loss_sum / units`` over a whole global
    batch is a weighted mean in which a pointwise example counts ``pointwise_weight`` times
    a pair of the same weight (the contract of actors/trainer.py, which divides by the
    global batch's units). The table's margins lie in [0, 1] (stated strength, rank gap);
    ``margin_scale`` turns them into reward units (0: plain Bradley-Terry).

    The other sums are for the progress line: ``pairwise_loss`` and ``pointwise_loss`` (each
    part's weighted sum), ``pair_weight`` and ``pair_right`` (weight of the pairs ranked
    right), so ``pair_right / pair_weight`` is the weighted pair accuracy.
    """
    margins = pair_margins * margin_scale if margin_scale else None
    pairwise = (pair_weights * bradley_terry_per_pair(pair_chosen, pair_rejected, margins)).sum()
    pointwise = (point_weights * pointwise_per_example(point_rewards, point_targets)).sum()
    right = (pair_weights * (pair_chosen > pair_rejected).to(pair_weights.dtype)).sum()
    sums = {"units": float(pair_weights.sum() + point_weights.sum()), "pairwise_loss": float(pairwise),
            "pointwise_loss": float(pointwise), "pair_weight": float(pair_weights.sum()),
            "pair_right": float(right)}
    return pairwise + pointwise_weight * pointwise, sums
