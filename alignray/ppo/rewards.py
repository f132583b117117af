"""From one score per response to one reward per token.

The reward model scores whole responses; PPO needs a reward at every token. Following
Ziegler et al. (2019) the per-token reward is the KL penalty on every valid token, plus the
(normalised, clipped, penalty-adjusted) sequence score on the last valid token.

Before that, :class:`WeightedReward` adds a user's own reward functions (by import path) to
the scorer's score, each with its weight, and reports each part's contribution.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from alignray.ppo.masked import valid_only


def last_valid_index(mask: Tensor) -> Tensor:
    """Index of the last valid token of each row, ``[batch]`` (long)."""
    valid = mask.bool()
    if not valid.any(dim=1).all():
        empty = (~valid.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} have no valid response token to carry the score")
    positions = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)
    return torch.where(valid, positions, -1).max(dim=1).values


def token_level_rewards(scores: Tensor, kl_per_token: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards ``[batch, T]``: ``-kl_coef * kl`` on every valid token, the score
    ``scores[b]`` added on row b's last valid token, 0 on padding.

    scores: ``[batch]`` sequence scores; kl_per_token, mask: ``[batch, T]``.
    """
    rewards = valid_only(-kl_coef * kl_per_token, mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_valid_index(mask)] += scores.to(rewards.dtype)
    return rewards


def clip_rewards(scores: Tensor, limit: float) -> Tensor:
    """Scores clamped to ``[-limit, limit]``, so one outlier cannot dominate a batch."""
    return scores.clamp(-limit, limit)


def truncation_penalty(ended_with_eos: Tensor, penalty: float) -> Tensor:
    """Score adjustment ``[batch]`` to add to the scores: ``-penalty`` for responses that hit
    the length limit without an end token, 0 for those that ended properly.

    A truncated response was never judged as a whole, so its score is not trustworthy;
    without this the policy can learn to ramble until it is cut off.
    """
    if penalty < 0:
        raise ValueError(f"penalty is an amount to subtract and must be >= 0, got {penalty}")
    return torch.where(ended_with_eos.bool(), 0.0, -float(penalty))


class RunningRewardNormalizer:
    """Running mean and standard deviation of the scores seen so far.

    Batches are merged with Chan et al.'s parallel form of Welford's update, in float64,
    so the statistics do not depend on how the stream was cut into batches. Normalising keeps
    the meaning of a KL coefficient the same across reward models.
    """

    def __init__(self, shift_mean: bool = True, eps: float = 1e-8):
        self.shift_mean = shift_mean
        self.eps = eps
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean

    @property
    def std(self) -> float:
        """Population standard deviation; 1.0 before any update, so normalising is a no-op."""
        return math.sqrt(self.m2 / self.count) if self.count else 1.0

    def update(self, scores: Tensor) -> None:
        batch = scores.detach().to(torch.float64).flatten()
        n = batch.numel()
        if n == 0:
            return
        batch_mean = batch.mean().item()
        batch_m2 = (batch - batch_mean).square().sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total

    def normalize(self, scores: Tensor) -> Tensor:
        """``(scores - mean) / std`` (no shift when ``shift_mean`` is False), in scores' dtype."""
        shift = self.mean if self.shift_mean else 0.0
        return (scores - shift) / (self.std + self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])


RewardFunction = Callable[[list[str], list[str]], Sequence[float]]


def load_reward_function(import_path: str) -> RewardFunction:
    """The function at ``"package.module:function"``; an error that names the path otherwise."""
    module_name, colon, attribute = import_path.partition(":")
    if not (module_name and colon and attribute):
        raise ValueError(f"ppo.reward.functions: {import_path!r} is not of the form 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"ppo.reward.functions: cannot import {module_name!r} for {import_path!r}: "
                         f"{error}") from error
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ValueError(f"ppo.reward.functions: {module_name!r} has no function {attribute!r}")
    return function


@dataclass(frozen=True)
class RewardTerm:
    name: str
    weight: float
    function: RewardFunction  # (prompts, responses) -> one float per response


class WeightedReward:
    """The raw reward of each response: ``scorer_weight`` x the scorer's score plus, for each
    term, its weight x its function's score (rule checks, a length term, ... beside a reward
    model). Config: ``ppo.reward`` (``kind``, ``weight``, ``functions``)."""

    def __init__(self, scorer_name: str, scorer_weight: float, terms: Sequence[RewardTerm] = ()):
        names = [scorer_name, *(term.name for term in terms)]
        if len(set(names)) != len(names):
            raise ValueError(f"ppo.reward.functions: every part needs its own name, got {names}")
        self.scorer_name, self.scorer_weight, self.terms = scorer_name, float(scorer_weight), list(terms)

    @classmethod
    def from_config(cls, reward_cfg) -> WeightedReward:
        terms = []
        for term in reward_cfg.functions:
            function = load_reward_function(term.function)
            terms.append(RewardTerm(term.name or function.__name__, float(term.weight), function))
        return cls(reward_cfg.kind, reward_cfg.weight, terms)

    def combine(self, scorer_scores: Tensor, prompts: list[str],
                responses: list[str]) -> tuple[Tensor, dict[str, float]]:
        """The summed raw rewards ``[batch]`` and, when there are terms, each part's mean
        weighted contribution as ``reward_parts/<name>`` (they add up to the mean reward)."""
        total = self.scorer_weight * scorer_scores.float()
        parts = {self.scorer_name: total.mean().item()}
        for term in self.terms:
            values = torch.as_tensor([float(v) for v in term.function(prompts, responses)], dtype=torch.float32)
            if values.shape != total.shape or not torch.isfinite(values).all():
                raise ValueError(f"reward function {term.name!r} must return one finite float per response: got "
                                 f"{values.tolist()} for {len(responses)} responses")
            total = total + term.weight * values
            parts[term.name] = (term.weight * values).mean().item()
        return total, ({f"reward_parts/{name}": value for name, value in parts.items()} if self.terms else {})
