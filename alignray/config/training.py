"""What every trained model shares: the DeepSpeed strategy, and the training-loop settings
of the phases that train on a dataset (SFT, the reward model, DPO)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from alignray.config.lora import LoRAConfig


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    offload_optimizer: bool = False  # ZeRO-Offload of optimizer state to CPU memory
    # "auto": bf16 on a GPU that supports it, fp32 on CPU.
    precision: str = "auto"
    gradient_clipping: float = 1.0
    # Recompute activations in the backward pass instead of keeping them: less memory for
    # longer sequences or larger micro-batches, about a third more compute.
    activation_checkpointing: bool = False
    weight_decay: float = 0.0


@dataclass
class TrainingConfig:
    """The Ray Train loop's settings (actors/trainer.py), the same keys under `sft`,
    `reward_model` and `dpo`; each phase's class overrides the defaults it differs in."""
    lr: float = 3e-4
    warmup_steps: int = 20
    epochs: int = 1
    # Rows per optimizer step, split evenly over cluster.num_workers: the same settings train
    # the same global batches on 1 or N workers.
    batch_size: int = 32
    max_steps: int = 300  # 0 means: run all epochs
    eval_every: int = 100  # steps; the held-out loss is also measured before training and after each epoch
    # Held-out rows each evaluation reads (the first ones, in a fixed order); None: sized to the
    # model (alignray/core/train_loop.py eval_row_cap: all 1,505 for the embedded model); 0: all.
    eval_rows: Optional[int] = None
    checkpoint_every: int = 100  # steps; 0: only at the end of each epoch and of training
    log_every: int = 10  # steps between progress lines
    # Run control, not part of what the phase produces (left out of its output hash, as are
    # log_every and interrupt_after_steps: alignray.core.artifacts.run_control):
    # resume=true continues from the last checkpoint of an interrupted run with the same
    # settings; false starts over.
    resume: bool = True
    # A drill: stop after this step as if the job were killed (0: off); see `resume`.
    interrupt_after_steps: int = 0
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # off by default

