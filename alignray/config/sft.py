"""Phase 2: supervised fine-tuning on demonstrations."""
from __future__ import annotations

from dataclasses import dataclass, field

from alignray.config.training import DeepSpeedConfig


@dataclass
class SFTConfig:
    epochs: int = 1
    lr: float = 3e-4
    warmup_steps: int = 20
    # Demonstrations per optimizer step, split evenly over cluster.num_workers: the same
    # settings train the same global batches on 1 or N workers.
    batch_size: int = 32
    max_steps: int = 300  # 0 means: run all epochs
    eval_every: int = 100  # steps; the held-out loss is also measured before training and after each epoch
    checkpoint_every: int = 100  # steps; also at the end of each epoch and of training
    log_every: int = 10  # steps between progress lines
    max_examples: int = 0  # 0 means all demonstrations
    # Run control, not part of what the phase produces (left out of its output hash):
    # resume=true continues from the last checkpoint of an interrupted run with the same
    # settings; false starts over.
    resume: bool = True
    # A drill: stop after this step as if the job were killed (0: off); see `resume`.
    interrupt_after_steps: int = 0
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

