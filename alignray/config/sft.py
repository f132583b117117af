"""Phase 2: supervised fine-tuning on demonstrations."""
from __future__ import annotations

from dataclasses import dataclass

from alignray.config.training import TrainingConfig


@dataclass
class SFTConfig(TrainingConfig):
    # The training-loop keys (lr, batch_size, ...) and their defaults: TrainingConfig.
    max_examples: int = 0  # 0 means all demonstrations
