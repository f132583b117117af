"""DPO (with IPO and cDPO): a policy trained directly on the feedback's preference pairs."""
from __future__ import annotations

from dataclasses import dataclass

from alignray.config.training import TrainingConfig


@dataclass
class DPOConfig(TrainingConfig):
    # The training-loop keys: TrainingConfig; batch_size counts pairs per optimizer step.
    lr: float = 1e-4
    warmup_steps: int = 10
    # Inputs of workflows/dpo.py; empty: the SFT and feedback phases' outputs. The policy
    # and the frozen reference both start from the SFT model; the pairs are the feedback
    # folder's pairs.parquet (the reward model's pairs), weighted by annotator quality.
    sft_model_path: str = ""
    feedback_dir: str = ""
    # sigmoid: DPO (with label_smoothing > 0: cDPO, for labels flipped with that
    # probability); ipo: IPO, whose target margin is 1 / (2 beta). See alignray/dpo/training.py.
    loss_type: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0  # in [0, 0.5); sigmoid only
    heldout_fraction: float = 0.05  # of the prompts: their pairs give the held-out loss and accuracy
    # Prompt and response lengths are data.max_prompt_tokens and data.max_response_tokens,
    # as in SFT and generation.
