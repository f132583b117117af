"""The names of the files and folders one phase writes and another reads (a later phase, the
evaluation or the run report), each named once, and the mark of a finished phase folder.

| name | written by | read by |
|---|---|---|
| ``DONE_FILE``, ``SUMMARY_FILE`` | every phase, last | reuse of a finished phase; the run report |
| ``MODEL_DIR`` | pretraining, SFT, reward model, DPO (and each Ray Train checkpoint) | the next phases |
| ``POLICY_DIR`` | PPO | the evaluation |
| ``METRICS_FILE`` | every training loop (``alignray.metrics``) | the phase's plots; the run report |
| ``EVAL_FILE``, ``SAMPLES_FILE`` | reward model (eval only), evaluation | the run report |
| ``PROMPTS_FILE``, ``DEMONSTRATIONS_FILE`` | the embedded data | SFT, feedback, PPO, evaluation |
| the feedback files | feedback | reward model, DPO (``PAIRS_FILE``) |
| the figures | each phase | the run report |
"""
from __future__ import annotations

import json
from pathlib import Path

DONE_FILE = "DONE"  # written last: a folder without it is an interrupted run
SUMMARY_FILE = "summary.json"  # a phase's headline figures and the paths it produced
MODEL_DIR = "model"  # a Hugging Face model folder
POLICY_DIR = "policy"  # PPO's final policy, a Hugging Face model folder
METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step
EVAL_FILE = "eval.json"
SAMPLES_FILE = "samples.jsonl"  # the evaluation's responses side by side

# The embedded data, one file per split ("train", "heldout"): PROMPTS_FILE.format(split="train").
PROMPTS_FILE = "prompts_{split}.parquet"
DEMONSTRATIONS_FILE = "demonstrations_{split}.parquet"

FEEDBACK_FILE = "feedback.parquet"  # every accepted feedback row (FEEDBACK_SCHEMA)
PAIRS_FILE = "pairs.parquet"  # preference pairs for training (PAIRS_SCHEMA)
POINTWISE_FILE = "pointwise.parquet"  # pointwise targets for training (POINTWISE_SCHEMA)
HELDOUT_FEEDBACK_FILE = "heldout_feedback.parquet"  # held-out prompts, judged by both panels
HELDOUT_PAIRS_FILE = "heldout_pairs.parquet"  # the same, one row per pair with each panel's vote share

LOSS_FIGURE = "loss.png"  # pretraining, SFT, reward model, DPO
CALIBRATION_FIGURE = "calibration.png"  # reward model
AGREEMENT_FIGURE = "agreement.png"  # feedback
RATINGS_FIGURE = "ratings.png"  # feedback
ELO_FIGURE = "elo_vs_bradley_terry.png"  # feedback
CURVES_FIGURE = "curves.png"  # PPO
STAGE_TIMES_FIGURE = "stage_times.png"  # PPO
MONITOR_FILE = "monitor.json"  # PPO: the over-optimisation monitor's checks and alarms
OVEROPTIMISATION_FIGURE = "overoptimisation.png"  # PPO: proxy reward and judge against KL


def is_complete(out_dir: Path) -> bool:
    """A phase writes DONE last, so a folder without it is an interrupted run."""
    return (Path(out_dir) / DONE_FILE).exists()


def mark_complete(out_dir: Path, summary: dict) -> None:
    out_dir = Path(out_dir)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / DONE_FILE).write_text("ok\n")
