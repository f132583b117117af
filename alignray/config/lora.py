"""LoRA on a trained role (SFT, the reward model, DPO, the PPO policy and critic)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoRAConfig:
    """peft's LoRA (alignray/models/lora.py): the base weights stay frozen and only low-rank
    adapters train (with the score heads, which are new). rank 0: off, every weight trains."""
    rank: int = 0
    alpha: float = 16.0  # the adapter's update is scaled by alpha / rank
    dropout: float = 0.0  # on the adapters' input; PPO's roles turn every dropout off
    # peft's "all-linear" (every linear layer except the output head), or module names
    # separated by commas ("q_proj,v_proj", "c_attn").
    target_modules: str = "all-linear"

    @property
    def enabled(self) -> bool:
        return self.rank > 0
