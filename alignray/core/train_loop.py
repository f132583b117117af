"""The settings and the arithmetic of the shared training loop (actors/trainer.py runs it on
Ray Train): what a phase trains (`TrainTask`), how long and how (`TrainLoopConfig`), and where
training stands in the data (`DataPosition`). Pure: no Ray."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from alignray.config.training import DeepSpeedConfig, TrainingConfig

# One held-out evaluation sized by default (TrainingConfig.eval_rows=None) to about this many
# FLOPs of forward passes, 2 x parameters x tokens per row: ~20-40 s of fp32 on two CPU cores.
# The embedded 4M model reads every row it has (1,505); SmolLM2-135M at 128 tokens a row, 64.
EVAL_FLOP_BUDGET = 2e12
MIN_EVAL_ROWS = 64


@dataclass(frozen=True)
class TrainTask:
    """What a phase trains and how. Every callable must be picklable (a module-level
    function or a `functools.partial` of one): it travels to the workers."""
    name: str
    build_model: Callable[[str], torch.nn.Module]  # model folder -> model to train
    collate: Callable[[dict[str, np.ndarray], torch.device], dict[str, torch.Tensor]]
    loss: Callable[[Any, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class TrainLoopConfig:
    model_path: str
    deepspeed: DeepSpeedConfig
    lr: float
    warmup_steps: int
    global_batch_size: int  # rows per optimizer step, split evenly over the workers
    steps_per_epoch: int  # full global batches in the training set
    epochs: int
    max_steps: int  # 0: all epochs
    eval_every: int  # steps; 0: only at the end of each epoch
    checkpoint_every: int  # steps; 0: only at the end of each epoch
    log_every: int
    seed: int
    metrics_dir: str  # rank 0 writes metrics.jsonl here (a shared folder on a cluster)
    # A drill for resume: stop right after this step, as if the job were killed (no
    # checkpoint, no evaluation at that step). 0: off.
    interrupt_after_steps: int = 0
    threads: int = 0  # torch threads on CPU (cluster.train_threads); 0: cores / local workers
    resume: bool = True  # False: an earlier run's checkpoints and metrics in the folder are removed first
    eval_rows: int = 0  # held-out rows each evaluation reads; 0: all

    @classmethod
    def of(cls, settings: TrainingConfig, *, model_path: str, steps_per_epoch: int, seed: int,
           metrics_dir: str, tokens_per_row: int) -> TrainLoopConfig:
        """The loop's settings from a phase's training keys (`sft`, `reward_model`, `dpo`)
        and what the phase measured of its data (``tokens_per_row``: a held-out row's
        longest, both sides of a pair together)."""
        return cls(model_path=model_path, deepspeed=settings.deepspeed, lr=settings.lr,
                   eval_rows=eval_row_cap(settings.eval_rows, model_path, tokens_per_row),
                   warmup_steps=settings.warmup_steps, global_batch_size=settings.batch_size,
                   steps_per_epoch=steps_per_epoch, epochs=settings.epochs, max_steps=settings.max_steps,
                   eval_every=settings.eval_every, checkpoint_every=settings.checkpoint_every,
                   log_every=settings.log_every, seed=seed, metrics_dir=metrics_dir,
                   interrupt_after_steps=settings.interrupt_after_steps, resume=settings.resume)

    @property
    def total_steps(self) -> int:
        all_epochs = self.steps_per_epoch * self.epochs
        return min(all_epochs, self.max_steps) if self.max_steps else all_epochs


def eval_row_cap(setting: int | None, model_path: str, tokens_per_row: int) -> int:
    """Held-out rows one evaluation reads: ``setting`` where given (0: all), else sized to the
    model, as many as fit EVAL_FLOP_BUDGET and at least MIN_EVAL_ROWS. A 135M model over all
    1,505 held-out tweets took 7 minutes an evaluation on 2 cores, longer than its training."""
    if setting is not None:
        return setting
    from transformers import AutoConfig, AutoModel
    with torch.device("meta"):  # shapes only: no memory, no weights read
        parameters = AutoModel.from_config(AutoConfig.from_pretrained(model_path)).num_parameters()
    return max(MIN_EVAL_ROWS, int(EVAL_FLOP_BUDGET / (2 * parameters * max(tokens_per_row, 1))))


@dataclass(frozen=True)
class DataPosition:
    """Where training stands in the data: ``batches_done`` global batches of ``epoch``."""
    epoch: int = 0
    batches_done: int = 0


def rows_within_budget(train_rows: int, global_batch_size: int, max_steps: int) -> int:
    """How many training rows the loop can reach: all of them, unless ``max_steps`` ends
    training inside the first epoch, which trains rows ``[0, max_steps * B)`` only (the
    order is fixed). A phase that precomputes something per row needs it for those alone."""
    if max_steps and max_steps * global_batch_size < train_rows:
        return max_steps * global_batch_size
    return train_rows


def steps_per_epoch(train_rows: int, global_batch_size: int) -> int:
    steps = train_rows // global_batch_size
    if steps == 0:
        raise ValueError(f"{train_rows} training rows make no full global batch of {global_batch_size}")
    return steps

