"""Phase 4: PPO against the reward model."""
from __future__ import annotations

from dataclasses import dataclass, field

from alignray.config.training import DeepSpeedConfig


@dataclass
class KLConfig:
    controller: str = "fixed"  # fixed | adaptive
    coef: float = 0.2
    target: float = 4.0
    horizon: int = 640
    estimator: str = "k1"


@dataclass
class PPOConfig:
    steps: int = 40
    prompts_per_step: int = 64
    max_new_tokens: int = 24
    temperature: float = 1.0
    top_p: float = 1.0
    epochs: int = 4
    minibatches: int = 4
    lr: float = 1e-5
    critic_lr: float = 5e-5
    clip_eps: float = 0.2
    value_clip_eps: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    kl: KLConfig = field(default_factory=KLConfig)
    rollout_workers: int = 2
    deepspeed: DeepSpeedConfig = field(default_factory=lambda: DeepSpeedConfig(zero_stage=0))
