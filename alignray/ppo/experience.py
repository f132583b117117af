"""The batch of one PPO step as it grows, one type per stage:

``PromptBatch`` (what the coordinator hands the rollout pool) -> ``Rollout`` (plus the sampled
responses and their behaviour log-probs) -> ``Experience`` (plus reference log-probs, critic
values, sequence scores, per-token rewards, advantages and returns), built once by
:func:`build_experience`; then what the step reports: the ranks' typed update statistics and
:func:`step_metrics`. All tensors are batch-first; the layout of prompts and responses
is the one of ``alignray.models.generation``.

``PromptStream`` is the deterministic order in which prompts are taken, with a position
that goes into the checkpoint so a resumed run takes the prompts the interrupted one would have.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
from torch import Tensor

from alignray.models.generation import SampledResponses, encode_prompts
from alignray.ppo import (RunningRewardNormalizer, clip_rewards, explained_variance, get_advantage_estimator,
                          kl_estimate, masked_mean, masked_sum, masked_whiten, token_level_rewards,
                          truncation_penalty, valid_only, whitens)
from alignray.ppo.rollout_correction import correction_weights
from alignray.core.seeds import derived_seed

if TYPE_CHECKING:
    from typing_extensions import Self


@dataclass
class PromptBatch:
    """A batch of prompts as the policy reads them; every field is a tensor of the same rows."""
    prompt_index: Tensor  # [B] long: row of each prompt in the prompts table
    prompt_ids: Tensor  # [B, P] left-padded
    prompt_mask: Tensor  # [B, P]

    def __len__(self) -> int:
        return self.prompt_index.shape[0]

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to(self, device: torch.device | str) -> Self:
        return type(self)(**{name: value.to(device) for name, value in self.tensors().items()})

    def select(self, rows: Tensor | slice) -> Self:
        return type(self)(**{name: value[rows] for name, value in self.tensors().items()})

    def split(self, parts: int, group_size: int = 1) -> list[Self]:
        """``parts`` contiguous shards of (nearly) equal size, in order; none is empty. Rows
        come in groups of ``group_size`` consecutive rows (a prompt's responses) and a shard
        boundary never cuts a group."""
        groups, cut = divmod(len(self), group_size)
        if cut:
            raise ValueError(f"{len(self)} rows are not whole groups of {group_size}")
        if not 0 < parts <= groups:
            raise ValueError(f"cannot split {groups} groups of {group_size} rows into {parts} shards")
        bounds = (torch.linspace(0, groups, parts + 1).round().long() * group_size).tolist()
        return [self.select(slice(lo, hi)) for lo, hi in zip(bounds, bounds[1:])]

    @classmethod
    def cat(cls, shards: list[Self]) -> Self:
        return cls(**{f.name: torch.cat([getattr(s, f.name) for s in shards]) for f in dataclasses.fields(cls)})


@dataclass
class Rollout(PromptBatch):
    """Prompts and the responses the rollout pool sampled for them."""
    response_ids: Tensor  # [B, T] right-padded
    response_mask: Tensor  # [B, T] bool
    logprobs: Tensor  # [B, T] behaviour log-probs recorded while sampling
    ended_with_eos: Tensor  # [B] bool

    @classmethod
    def of(cls, prompts: PromptBatch, sampled: SampledResponses) -> Rollout:
        return cls(prompts.prompt_index, prompts.prompt_ids, prompts.prompt_mask, sampled.response_ids,
                   sampled.response_mask, sampled.logprobs, sampled.ended_with_eos)

    def sequence_lengths(self) -> Tensor:
        """Tokens each row occupies once padding is trimmed: prompt + response."""
        return self.prompt_mask.sum(dim=1) + self.response_mask.sum(dim=1)

    def trimmed(self) -> Self:
        """The same rows without the padding columns every row has: leading prompt columns
        (left padding) and trailing response columns (right padding). Log-probs, values and
        losses are unchanged: positions count from each row's first prompt token, and no
        valid token attends to a dropped column."""
        prompt_from = self.prompt_mask.shape[1] - int(self.prompt_mask.sum(dim=1).max())
        response_to = max(int(self.response_mask.sum(dim=1).max()), 1)
        fields = {}
        for name, value in self.tensors().items():
            if name.startswith("prompt_") and value.dim() == 2:
                value = value[:, prompt_from:]
            elif value.dim() == 2:  # the [B, T] response-aligned fields
                value = value[:, :response_to]
            fields[name] = value
        return type(self)(**fields)


@dataclass
class Experience(Rollout):
    """A rollout with everything PPO trains on; built once, by :func:`build_experience`."""
    ref_logprobs: Tensor  # [B, T] under the frozen reference
    # [B, T] what PPO's ratio is taken against: the sampler's log-probs (``logprobs``), or with
    # a rollout correction the trainer's own before the update
    old_logprobs: Tensor
    correction_weights: Tensor  # [B, T] each token's loss weight (alignray/ppo/rollout_correction.py); 0: left out
    values: Tensor  # [B, T] the critic's values before the update (0 without a critic)
    scores: Tensor  # [B] final sequence scores (normalised, penalised)
    rewards: Tensor  # [B, T] per-token rewards
    advantages: Tensor  # [B, T]
    returns: Tensor  # [B, T] the critic's targets


def sequence_scores(raw: Tensor, normalizer: RunningRewardNormalizer | None, *, clip: float,
                    constraint_costs: Tensor, ended_with_eos: Tensor,
                    truncation_cost: float) -> Tensor:
    """The score each response is rewarded with at its last token ``[B]``.

    ``raw`` reward-model scores are normalised with the running statistics (updated with
    this batch first, so the very first batch is normalised too), clipped to ``[-clip, clip]``,
    then constraint costs and the truncation penalty are subtracted: rule penalties are
    in normalised units, so they mean the same for every reward model.
    """
    scores = raw.float()
    if normalizer is not None:
        normalizer.update(scores)
        scores = normalizer.normalize(scores)
    scores = clip_rewards(scores, clip) - constraint_costs.float()
    return scores + truncation_penalty(ended_with_eos, truncation_cost)


def build_experience(rollout: Rollout, *, ref_logprobs: Tensor, values: Tensor, scores: Tensor,
                     kl_coef: float, kl_estimator: str = "k1", estimator: str = "gae", gamma: float = 1.0,
                     lam: float = 0.95, whiten: bool | None = None, policy_logprobs: Tensor | None = None,
                     correction: tuple[str, float] = ("none", 2.0)) -> tuple[Experience, dict[str, float]]:
    """The rollout completed with per-token rewards (the KL penalty folded in), advantages and
    returns. ``whiten`` None whitens as the estimator does by default. With a ``correction``
    (mode, cap) other than "none", the policy's own ``policy_logprobs`` of the sampled tokens
    become the old log-probs (of the ratio and the KL) and the sampler's are only the
    importance weights' denominator. Returns the experience and its statistics:

    - ``kl``: mean per-response KL(policy || reference) in nats (sum over tokens);
    - ``kl_penalty_share``: share of the reward's magnitude that is KL penalty;
    - ``advantage_mean``/``return_mean`` before whitening;
    - with a correction, ``rollout_correction/*`` (:func:`correction_weights`).
    """
    mask = rollout.response_mask
    old_logprobs, (mode, cap) = rollout.logprobs, correction
    weights, correction_stats = correction_weights(
        rollout.logprobs if policy_logprobs is None else policy_logprobs, rollout.logprobs, mask, mode, cap)
    if mode != "none":
        if policy_logprobs is None:
            raise ValueError(f"rollout correction {mode!r} needs the policy's log-probs of the sampled tokens")
        old_logprobs = policy_logprobs
    kl = valid_only(kl_estimate(old_logprobs, ref_logprobs, kl_estimator), mask)
    rewards = token_level_rewards(scores, kl, mask, kl_coef)
    advantages, returns = get_advantage_estimator(estimator)(
        rewards, values, mask, gamma=gamma, lam=lam, group_ids=rollout.prompt_index)
    kl_penalty = kl_coef * masked_sum(kl.abs(), mask)
    stats = {
        "kl": masked_sum(kl, mask, dim=1).mean().item(),
        "kl_penalty_share": (kl_penalty / (kl_penalty + scores.abs().sum()).clamp_min(1e-12)).item(),
        "advantage_mean": masked_mean(advantages, mask).item(),
        "return_mean": masked_mean(returns, mask).item(),
    } | (correction_stats if mode != "none" else {})
    if whitens(estimator, whiten):
        advantages = masked_whiten(advantages, mask)
    experience = Experience(**rollout.tensors(), ref_logprobs=ref_logprobs, old_logprobs=old_logprobs,
                            correction_weights=weights, values=values, scores=scores,
                            rewards=rewards, advantages=advantages, returns=returns)
    return experience, stats


class PromptStream:
    """Prompt rows in epochs, each epoch a fresh permutation drawn from ``seed`` and the
    epoch number. The position is the number of prompts taken so far: with it the stream
    continues exactly where a checkpointed run stopped."""

    def __init__(self, num_prompts: int, seed: int):
        if num_prompts <= 0:
            raise ValueError("the prompt stream needs at least one prompt")
        self.num_prompts = num_prompts
        self.seed = seed
        self.consumed = 0

    def _epoch_order(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
        return torch.randperm(self.num_prompts, generator=generator)

    def next_batch(self, size: int) -> Tensor:
        """The next ``size`` prompt rows (long ``[size]``), crossing into the next epoch if needed."""
        rows, taken = [], 0
        while taken < size:
            epoch, offset = divmod(self.consumed, self.num_prompts)
            take = min(size - taken, self.num_prompts - offset)
            rows.append(self._epoch_order(epoch)[offset: offset + take])
            self.consumed += take
            taken += take
        return torch.cat(rows)

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "num_prompts": self.num_prompts, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["num_prompts"], state["seed"]) != (self.num_prompts, self.seed):
            raise ValueError("the checkpoint's prompt stream was over other prompts or another seed")
        self.consumed = int(state["consumed"])


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
    kl_loss: Optional[float] = None  # the KL term, where ppo.kl.placement=loss


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
    counts and throughput; the max of the ratio; the critic's where there is one, ``critic``
    empty otherwise), and the gap between the log-probs the
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
    }
    for key in ("policy_loss", "entropy", "clip_fraction", "approx_kl", "micro_batches"):
        metrics[key] = mean([getattr(s, key) for s in policy])
    metrics["ratio_max"] = max(s.ratio_max for s in policy)
    metrics["policy_updates"] = sum(s.policy_updates for s in policy)
    metrics["train_tokens_per_s"] = sum(s.train_tokens_per_s for s in policy)  # over the ranks
    for key in ("mfu", "kl_loss"):  # where the device's peak is known; where the KL is a loss term
        if getattr(policy[0], key) is not None:
            metrics[key] = mean([getattr(s, key) for s in policy])
    return metrics | (critic_metrics(exp, critic) if critic else {})


def critic_metrics(exp: Experience, critic: list[CriticTrainStats]) -> dict[str, float]:
    """The critic's update statistics combined over its ranks, and how well its values
    (before the update) explained the returns."""
    metrics = {"explained_variance": explained_variance(exp.values, exp.returns, exp.response_mask),
               "value_loss": mean([s.value_loss for s in critic]),
               "value_clip_fraction": mean([s.value_clip_fraction for s in critic]),
               "critic_train_tokens_per_s": sum(s.train_tokens_per_s for s in critic)}
    if critic[0].mfu is not None:
        metrics["critic_mfu"] = mean([s.mfu for s in critic])
    return metrics


def encode_prompt_batch(tokenizer, formatted: list[str], rows: torch.Tensor, max_prompt_tokens: int) -> PromptBatch:
    """Formatted prompts, left-padded, the longest cut from the left (alignray.models.generation.encode_prompts)."""
    ids, mask = encode_prompts(tokenizer, formatted, max_prompt_tokens)
    return PromptBatch(prompt_index=rows, prompt_ids=ids, prompt_mask=mask)
