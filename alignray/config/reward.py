"""Phase 3b: the reward model."""
from __future__ import annotations

from dataclasses import dataclass, field

from alignray.config.training import DeepSpeedConfig


@dataclass
class RewardConfig:
    backbone: str = "sft"  # "sft" (the SFT model), "minilm", or a path / hub id
    lr: float = 1e-4
    epochs: int = 2
    batch_size: int = 32
    max_steps: int = 0
    margin: float = 0.0
    pointwise_weight: float = 0.5
    max_length: int = 64
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
