"""DPO (with IPO and cDPO): a policy trained directly on the feedback's preference pairs."""
from __future__ import annotations

from dataclasses import dataclass, field

from alignray.config.training import DeepSpeedConfig


@dataclass
class DPOConfig:
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
    lr: float = 1e-4
    warmup_steps: int = 10
    epochs: int = 1
    batch_size: int = 32  # global: pairs per optimizer step, split across the workers
    max_steps: int = 300  # 0 means: run all epochs
    heldout_fraction: float = 0.05  # of the prompts: their pairs give the held-out loss and accuracy
    eval_every: int = 100  # steps; also before training and at the end of each epoch
    checkpoint_every: int = 100  # steps; also at the end of each epoch and of training
    log_every: int = 10
    # Prompt and response lengths are data.max_prompt_tokens and data.max_response_tokens,
    # as in SFT and generation.
    resume: bool = True  # run control: continue an interrupted run with the same settings
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
