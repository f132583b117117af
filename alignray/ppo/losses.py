"""PPO losses for the policy and the value critic, and the diagnostics logged with them.

Policy losses are registered by name and share one call,
``loss_fn(logprobs, old_logprobs, advantages, mask, clip_eps) -> (loss, stats)``, all
tensors ``[batch, T]``; ``loss`` is a scalar to minimise (the mean over valid tokens) and
``stats`` a dict of floats for logging.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from alignray.ppo.kl import kl_estimate
from alignray.ppo.masked import masked_mean, masked_var

PolicyLoss = Callable[[Tensor, Tensor, Tensor, Tensor, float], tuple[Tensor, dict[str, float]]]


def clipped_surrogate_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                           clip_eps: float) -> tuple[Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017), negated so that it is minimised.

    Per token, with ``ratio = exp(logprobs - old_logprobs)``:
    ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))``, the pessimistic of the two.

    stats:
    - ``clip_fraction``: share of valid tokens where the clipped term was the larger one,
      i.e. where the token contributes no gradient;
    - ``approx_kl``: mean k3 estimate of KL(old || new), ``(ratio - 1) - log ratio``, which
      is never negative (``EarlyStopOnKL`` reads it);
    - ``ratio_max``: the largest ratio; far from 1 on the first minibatch means the rollout
      log-probs do not match the trainer's.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).to(ratio.dtype), mask).item(),
            "approx_kl": masked_mean(kl_estimate(old_logprobs, logprobs, "k3"), mask).item(),
            "ratio_max": ratio[mask.bool()].max().item(),
        }
    return loss, stats


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                       clip_eps: float) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss: ``0.5 * mean(max((V - R)^2, (V_clip - R)^2))`` over valid tokens.

    ``V_clip = old_values + clip(values - old_values, -eps, eps)`` keeps the critic from
    moving far from the values used to compute the advantages. The 0.5 makes the gradient
    ``V - R``, as in the usual squared-error convention. All tensors ``[batch, T]``.
    stats: ``value_clip_fraction`` (share of tokens where the clipped error was the larger).
    """
    clipped_values = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    unclipped_error = (values - returns).square()
    clipped_error = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_error > unclipped_error).to(values.dtype), mask).item()
    return loss, {"value_clip_fraction": clip_fraction}


def entropy_from_logprobs(logprobs: Tensor) -> Tensor:
    """Entropy in nats of the categorical distribution at each position, ``[..., V] -> [...]``,
    from its normalised log-probs (``log_softmax``: the policy has them for its loss, so no
    second softmax over the vocabulary). Tokens of probability 0 (``-inf``) contribute 0."""
    weighted = torch.where(logprobs > float("-inf"), logprobs.exp() * logprobs, torch.zeros((), dtype=logprobs.dtype))
    return -weighted.sum(dim=-1)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 - Var(returns - values) / Var(returns)`` over valid tokens.

    1 is a perfect critic, 0 no better than a constant, negative worse; ``nan`` when the
    returns do not vary.
    """
    returns_var = masked_var(returns, mask)
    if returns_var == 0:
        return float("nan")
    return (1.0 - masked_var(returns - values, mask) / returns_var).item()


POLICY_LOSSES: dict[str, PolicyLoss] = {
    "clipped_surrogate": clipped_surrogate_loss,
}


def get_policy_loss(name: str) -> PolicyLoss:
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; known: {sorted(POLICY_LOSSES)}")
    return POLICY_LOSSES[name]
