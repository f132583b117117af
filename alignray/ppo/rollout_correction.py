"""Correcting for the gap between the rollout workers' and the trainer's log-probs.

The pool samples with its own copy of the weights, often in another precision (bf16 on a
GPU) and another kernel (the static decoder), so the behaviour policy that drew a token is
not exactly the policy the trainer scores it with. PPO's ratio against the sampler's
log-probs then mixes that gap into the update. With a correction on, the ratio is taken
against the trainer's own log-probs of the sampled tokens (the "old" policy, before the
update), and each token's loss is reweighted by the importance ratio
``r = pi_trainer(token) / pi_rollout(token)``, truncated or masked (Yao et al. 2025's
truncated importance sampling, the setting verl, OpenRLHF and prime-rl now carry):

- ``token_tis``: weight ``min(r, cap)`` per token;
- ``token_mask``: tokens with ``r`` outside ``[1/cap, cap]`` are dropped from the loss;
- ``sequence_tis``: one weight per response, ``min(prod r, cap)``, on all its tokens;
- ``sequence_mask``: responses whose geometric-mean ratio ``exp(mean log r)`` is outside
  ``[1/cap, cap]`` are dropped (the mean, not the sum: a long response is not dropped
  for its length alone).

A weight of 0 means "not in the loss": the policy loss leaves those tokens out of its
mask, so a dropped token does not count in ``token_mean``'s denominator either.
"""
from __future__ import annotations

import torch
from torch import Tensor

from alignray.ppo.kl import LOG_RATIO_CLAMP
from alignray.ppo.masked import masked_mean, masked_sum, valid_only

MODES = ("none", "token_tis", "token_mask", "sequence_tis", "sequence_mask")


def correction_weights(trainer_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, mode: str,
                       cap: float) -> tuple[Tensor, dict[str, float]]:
    """Per-token loss weights ``[B, T]`` (0 on padding) for ``mode``, and their statistics:

    - ``rollout_correction/weight_mean``: the mean weight over valid tokens;
    - ``rollout_correction/truncated_share`` (TIS modes): share of valid tokens whose weight hit the cap;
    - ``rollout_correction/dropped_share`` (mask modes): share of valid tokens left out of the loss.
    """
    if mode not in MODES:
        raise ValueError(f"unknown ppo.rollout_correction.mode {mode!r}; known: {list(MODES)}")
    if mode != "none" and not cap > 1.0:
        raise ValueError(f"ppo.rollout_correction.cap must be above 1, got {cap}")
    mask = mask.bool()
    log_ratio = valid_only((trainer_logprobs - rollout_logprobs).float().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP),
                           mask)
    log_cap = torch.log(torch.tensor(cap))
    if mode == "none":
        weights = torch.ones_like(log_ratio)
    elif mode == "token_tis":
        weights = torch.exp(log_ratio.clamp(max=log_cap))
    elif mode == "token_mask":
        weights = (log_ratio.abs() <= log_cap).float()
    elif mode == "sequence_tis":
        sequence = masked_sum(log_ratio, mask, dim=1).clamp(-LOG_RATIO_CLAMP, log_cap)
        weights = torch.exp(sequence).unsqueeze(1).expand_as(log_ratio)
    else:  # sequence_mask
        keep = masked_mean(log_ratio, mask, dim=1).abs() <= log_cap
        weights = keep.float().unsqueeze(1).expand_as(log_ratio)
    weights = valid_only(weights, mask).contiguous()
    stats = {"rollout_correction/weight_mean": masked_mean(weights, mask).item()}
    if mode.endswith("_tis"):
        at_cap = weights >= cap * (1 - 1e-6)
        stats["rollout_correction/truncated_share"] = masked_mean(at_cap.float(), mask).item()
    elif mode.endswith("_mask"):
        stats["rollout_correction/dropped_share"] = masked_mean((weights == 0).float(), mask).item()
    return weights, stats
