"""PPO settings that cannot work together, refused before any actor starts."""
from __future__ import annotations

from alignray.config import PPOConfig
from alignray.ppo.advantages import estimator_spec
from alignray.ppo.kl import KL_ESTIMATORS
from alignray.ppo.losses import AGGREGATIONS, POLICY_LOSSES


def check_algorithm(ppo: PPOConfig) -> None:
    """Refuse settings that cannot work together before any actor starts."""
    if ppo.policy_lag not in (0, 1):
        raise ValueError(f"ppo.policy_lag must be 0 or 1, not {ppo.policy_lag}")
    if ppo.samples_per_prompt < 1:
        raise ValueError(f"ppo.samples_per_prompt must be at least 1, not {ppo.samples_per_prompt}")
    if ppo.policy.loss not in POLICY_LOSSES:
        raise ValueError(f"ppo.policy.loss must be one of {sorted(POLICY_LOSSES)}, not {ppo.policy.loss!r}")
    if ppo.kl.estimator not in KL_ESTIMATORS:
        raise ValueError(f"ppo.kl.estimator must be one of {sorted(KL_ESTIMATORS)}, not {ppo.kl.estimator!r}")
    if ppo.policy.loss_aggregation not in AGGREGATIONS:
        raise ValueError(f"ppo.policy.loss_aggregation must be one of {AGGREGATIONS}, "
                         f"not {ppo.policy.loss_aggregation!r}")
    if ppo.kl.placement not in ("reward", "loss"):
        raise ValueError(f"ppo.kl.placement must be reward or loss, not {ppo.kl.placement!r}")
    if estimator_spec(ppo.advantage_estimator).needs_groups and ppo.samples_per_prompt < 2:
        raise ValueError(f"ppo.advantage_estimator={ppo.advantage_estimator} compares the responses to one "
                         f"prompt: set ppo.samples_per_prompt >= 2 (it is {ppo.samples_per_prompt})")
