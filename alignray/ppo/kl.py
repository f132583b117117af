"""Per-token KL between the policy and the frozen reference, and the controllers that set
the weight of that KL in the reward.

Estimators (Schulman, "Approximating KL divergence", 2020), for tokens sampled from the
policy, with ``log r = ref_logprob - logprob``:

- ``k1 = -log r``          unbiased, high variance, can be negative per token;
- ``k2 = 0.5 (log r)^2``   biased, low variance, never negative;
- ``k3 = (r - 1) - log r`` unbiased, low variance, never negative.

``log r`` is clamped to ``[-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP]`` first (as OpenRLHF and verl
clamp theirs), so one token the two models disagree on wildly cannot overflow ``exp`` and
turn a step into inf or NaN.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

LOG_RATIO_CLAMP = 20.0  # nats: exp(20) ~ 5e8, far past any ratio a sound update produces
# name -> per-token estimate as a function of log r = ref_logprob - logprob
KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {
    "k1": lambda log_ratio: -log_ratio,
    "k2": lambda log_ratio: 0.5 * log_ratio.square(),
    "k3": lambda log_ratio: torch.expm1(log_ratio) - log_ratio,
}


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference), same shape as the inputs ``[batch, T]``.

    ``logprobs`` are the log-probs of the sampled tokens under the distribution they were
    sampled from; padded positions are not masked here (the caller masks).
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; known: {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind]((ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


class KLController:
    """Holds the current KL coefficient; checkpointed through ``state_dict``."""

    def __init__(self, coef: float):
        if coef < 0:
            raise ValueError(f"KL coefficient must be non-negative, got {coef}")
        self.coef = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adjust the coefficient after a PPO step (the base class keeps it fixed)."""

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coef = float(state["coef"])


class FixedKLController(KLController):
    """A constant coefficient."""


class AdaptiveKLController(KLController):
    """Proportional controller of Ziegler et al. (2019) that steers the KL towards ``target``.

    After a step whose mean per-sequence KL was ``current_kl`` over ``n_steps`` samples:
    ``error = clip(current_kl / target - 1, -0.2, 0.2)`` and
    ``coef *= 1 + error * n_steps / horizon``. The clip bounds how fast the coefficient can
    move, so one noisy batch cannot swing it; ``horizon`` is in samples.
    """

    MAX_RELATIVE_ERROR = 0.2

    def __init__(self, init_coef: float, target: float, horizon: int):
        super().__init__(init_coef)
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got {target}, {horizon}")
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = current_kl / self.target - 1.0
        error = max(-self.MAX_RELATIVE_ERROR, min(self.MAX_RELATIVE_ERROR, error))
        self.coef *= 1.0 + error * n_steps / self.horizon


def make_kl_controller(kind: str, coef: float, target: float | None = None,
                       horizon: int | None = None) -> KLController:
    """``"fixed"`` keeps ``coef``; ``"adaptive"`` starts at ``coef`` and needs target and horizon.

    The arguments match ``alignray.config.ppo.KLConfig`` (controller, coef, target, horizon).
    """
    if kind == "fixed":
        return FixedKLController(coef)
    if kind == "adaptive":
        if target is None or horizon is None:
            raise ValueError("the adaptive KL controller needs target and horizon")
        return AdaptiveKLController(coef, target, horizon)
    raise ValueError(f"unknown KL controller {kind!r}; known: ['adaptive', 'fixed']")
