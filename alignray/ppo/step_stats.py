"""What one PPO step reports: the policy's and the critic's update statistics (one record per
rank, typed) and the step's algorithm metrics, computed from the experience in one pure function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from torch import Tensor

from alignray.ppo.losses import explained_variance

if TYPE_CHECKING:
    from alignray.experience import Experience


@dataclass
class PolicyTrainStats:
    """One policy rank's update at a step; losses and rates are means over applied minibatches."""
    policy_loss: float
    clip_fraction: float
    approx_kl: float
    ratio_max: float
    entropy: float  # of the first minibatch, before any update, unless there is an entropy bonus
    micro_batches: float
    policy_updates: int
    nonfinite_updates: int  # minibatches skipped for a non-finite loss
    stopped_after_epoch: Optional[int]  # early stop on KL
    train_tokens_per_s: float
    mfu: Optional[float] = None  # where the device's peak FLOP/s is known


@dataclass
class CriticTrainStats:
    value_loss: float
    value_clip_fraction: float
    nonfinite_updates: int
    train_tokens_per_s: float
    mfu: Optional[float] = None


def mean(values: Sequence[float]) -> float:
    """The mean, ignoring NaN and None (a rank or minibatch with nothing to report)."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def step_metrics(exp: Experience, raw_scores: Tensor, policy_logprobs: Tensor, constraint_costs: Tensor,
                 violations: dict[str, Tensor], advantage_stats: dict[str, float], kl_coef: float,
                 policy: list[PolicyTrainStats], critic: list[CriticTrainStats]) -> dict[str, float]:
    """The algorithm's metrics of one step: rewards before and after normalisation, KL, the
    advantages, constraint violations, the ranks' update statistics combined (means; sums for
    counts and throughput; the max of the ratio), and the gap between the log-probs the
    rollout workers sampled with and the policy's own for the same tokens, before its update
    (0 up to rounding when the weights agree; bf16 on a GPU makes it small, stale weights large;
    with ``policy_lag=1`` it includes the one update the sampler is behind)."""
    mask = exp.response_mask
    gap = (exp.logprobs - policy_logprobs)[mask].abs()
    metrics = {
        "rollout_logprob_gap_max": gap.max().item(), "rollout_logprob_gap_mean": gap.mean().item(),
        "reward_raw": raw_scores.mean().item(), "reward_raw_std": raw_scores.std().item(),
        "reward_normalized": exp.scores.mean().item(), "kl_coef": kl_coef, **advantage_stats,
        "constraint_violation_rate": (constraint_costs > 0).float().mean().item(),
        "constraint_penalty_mean": constraint_costs.mean().item(),
        **{f"violations/{name}": v.float().mean().item() for name, v in violations.items()},
        "response_length": mask.sum(dim=1).float().mean().item(),
        "truncated_share": (~exp.ended_with_eos).float().mean().item(),
        "explained_variance": explained_variance(exp.values, exp.returns, mask),
    }
    for key in ("policy_loss", "entropy", "clip_fraction", "approx_kl", "micro_batches"):
        metrics[key] = mean([getattr(s, key) for s in policy])
    metrics["ratio_max"] = max(s.ratio_max for s in policy)
    metrics["policy_updates"] = sum(s.policy_updates for s in policy)
    metrics["value_loss"] = mean([s.value_loss for s in critic])
    metrics["value_clip_fraction"] = mean([s.value_clip_fraction for s in critic])
    metrics["train_tokens_per_s"] = sum(s.train_tokens_per_s for s in policy)  # over the ranks
    metrics["critic_train_tokens_per_s"] = sum(s.train_tokens_per_s for s in critic)
    if policy[0].mfu is not None:
        metrics["mfu"] = mean([s.mfu for s in policy])
    if critic[0].mfu is not None:
        metrics["critic_mfu"] = mean([s.mfu for s in critic])
    return metrics
