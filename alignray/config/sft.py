"""Phase 2: supervised fine-tuning on demonstrations."""
from __future__ import annotations

from dataclasses import dataclass, field

from alignray.config.training import DeepSpeedConfig


@dataclass
class SFTConfig:
    epochs: int = 1
    lr: float = 3e-4
    warmup_steps: int = 20
    batch_size: int = 32  # per worker
    max_steps: int = 300  # 0 means: run all epochs
    eval_every: int = 100
    checkpoint_every: int = 100
    max_examples: int = 0  # 0 means all demonstrations
    resume: bool = True
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
