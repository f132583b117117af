"""The DeepSpeed strategy every trainable model goes through."""
from __future__ import annotations

from dataclasses import dataclass


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
