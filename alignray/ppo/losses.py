"""PPO losses for the policy and the value critic, the KL as a loss term, and the
diagnostics logged with them.

Policy losses are registered by name and share one call,
``loss_fn(logprobs, old_logprobs, advantages, mask, clip_eps, aggregation, normalizer, weights) -> (loss, stats)``,
all tensors ``[batch, T]``; ``loss`` is a scalar to minimise (the valid tokens' losses,
each times its ``weights`` entry, aggregated as :func:`aggregate` says; a token of weight 0
is left out, as padding is) and ``stats`` a dict of floats for logging. The weights are the
rollout correction's (alignray/ppo/rollout_correction.py); None weighs every token 1.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from alignray.ppo.kl import LOG_RATIO_CLAMP, kl_estimate
from alignray.ppo.masked import masked_mean, masked_sum, masked_var, valid_only

PolicyLoss = Callable[..., tuple[Tensor, dict[str, float]]]
AGGREGATIONS = ("token_mean", "seq_mean", "constant")


def aggregate(per_token: Tensor, mask: Tensor, aggregation: str = "token_mean",
              normalizer: float | None = None) -> Tensor:
    """A per-token loss ``[batch, T]`` as one scalar over the valid tokens:

    - ``token_mean``: the mean over every valid token of the batch (long responses weigh more);
    - ``seq_mean``: each response's token mean, then the mean over responses (each weighs the same);
    - ``constant``: the sum over valid tokens divided by ``rows x normalizer`` (Dr. GRPO, with
      the longest allowed response as the normaliser: no length bias either way).
    """
    if aggregation == "token_mean":
        return masked_mean(per_token, mask)
    if aggregation == "seq_mean":
        return masked_mean(per_token, mask, dim=1).mean()
    if aggregation == "constant":
        if not normalizer or normalizer <= 0:
            raise ValueError(f"the constant aggregation needs a positive normaliser, got {normalizer}")
        return masked_sum(per_token, mask) / (per_token.shape[0] * normalizer)
    raise ValueError(f"unknown loss aggregation {aggregation!r}; known: {list(AGGREGATIONS)}")


def _clipped_objective(log_ratio: Tensor, old_logprobs: Tensor, logprobs: Tensor, advantages: Tensor, mask: Tensor,
                       clip_eps: float, aggregation: str, normalizer: float | None,
                       weights: Tensor | None) -> tuple[Tensor, dict[str, float]]:
    """``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))`` per token, weighted and
    aggregated; the stats of :func:`clipped_surrogate_loss`. The log-ratio is masked (padding
    may hold -inf or nan: multiplying them by a zero gradient would give nan) and clamped before exp."""
    ratio = torch.exp(valid_only(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP), mask))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    if weights is not None:
        mask = mask.bool() & (weights > 0)
        per_token = per_token * weights
    loss = aggregate(per_token, mask, aggregation, normalizer)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).to(ratio.dtype), mask).item(),
            "approx_kl": masked_mean(kl_estimate(old_logprobs, logprobs, "k3"), mask).item(),
            "ratio_max": valid_only(ratio, mask).max().item(),
        }
    return loss, stats


def clipped_surrogate_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                           clip_eps: float, aggregation: str = "token_mean", normalizer: float | None = None,
                           weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017), negated so that it is minimised.

    Per token, with ``ratio = exp(logprobs - old_logprobs)``:
    ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))``, the pessimistic of the two,
    aggregated over the valid tokens by ``aggregation`` (:func:`aggregate`).

    stats:
    - ``clip_fraction``: share of valid tokens where the clipped term was the larger one,
      i.e. where the token contributes no gradient;
    - ``approx_kl``: mean k3 estimate of KL(old || new), ``(ratio - 1) - log ratio``, which
      is never negative (``EarlyStopOnKL`` reads it);
    - ``ratio_max``: the largest ratio; far from 1 on the first minibatch means the rollout
      log-probs do not match the trainer's.
    """
    return _clipped_objective(logprobs - old_logprobs, old_logprobs, logprobs, advantages, mask, clip_eps,
                              aggregation, normalizer, weights)


def gspo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float,
              aggregation: str = "seq_mean", normalizer: float | None = None,
              weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """GSPO (Zheng et al. 2025): the clipped surrogate on the ratio of whole responses,
    ``s = exp(mean of the response's token log-ratios)``, clipped per response.

    In GSPO's token form every token carries the value ``s`` of its response and the
    gradient ``s * grad log pi(token)``; with ``seq_mean`` aggregation (GSPO's own) and one
    advantage per response that is exactly the gradient of the sequence-level objective.
    ``ratio_max`` is the largest response ratio; GSPO clips far tighter than PPO (its paper:
    3e-4 to 4e-4), since ``s`` is a geometric mean.
    """
    kept = mask if weights is None else mask.bool() & (weights > 0)  # a dropped token is not in the ratio either
    response_log_ratio = masked_mean(logprobs - old_logprobs, kept, dim=1)
    log_ratio = logprobs - logprobs.detach() + response_log_ratio.detach().unsqueeze(1)
    return _clipped_objective(log_ratio, old_logprobs, logprobs, advantages, mask, clip_eps, aggregation, normalizer,
                              weights)


def kl_loss(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: str, aggregation: str = "token_mean",
            normalizer: float | None = None) -> Tensor:
    """KL(policy || reference) as a loss term (GRPO puts it there rather than in the reward):
    the per-token ``estimator`` (k1/k2/k3, ``alignray.ppo.kl``) on the current log-probs,
    aggregated like the policy loss. Padding is zeroed first, so it carries no gradient."""
    per_token = kl_estimate(valid_only(logprobs, mask), valid_only(ref_logprobs, mask), estimator)
    return aggregate(per_token, mask, aggregation, normalizer)


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                       clip_eps: float) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss: ``0.5 * mean(max((V - R)^2, (V_clip - R)^2))`` over valid tokens.

    ``V_clip = old_values + clip(values - old_values, -eps, eps)`` keeps the critic from
    moving far from the values used to compute the advantages. The 0.5 makes the gradient
    ``V - R``, as in the usual squared-error convention. All tensors ``[batch, T]``.
    stats: ``value_clip_fraction`` (share of tokens where the clipped error was the larger).
    """
    # Padding may hold anything: selected away before the squares, whose gradient would
    # multiply it by zero (inf x 0 = nan).
    values, old_values, returns = (valid_only(t, mask) for t in (values, old_values, returns))
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
    "gspo": gspo_loss,
}


def get_policy_loss(name: str) -> PolicyLoss:
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; known: {sorted(POLICY_LOSSES)}")
    return POLICY_LOSSES[name]
