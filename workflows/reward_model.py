"""Phase 3b: train the reward model on the feedback tables, normalise it, evaluate it.

    python -m alignray.workflows.reward_model                      # embedded default: SFT and feedback phases first
    python -m alignray.workflows.reward_model reward_model.sft_model_path=<folder> reward_model.feedback_dir=<folder>
    python -m alignray.workflows.reward_model reward_model.backbone=minilm cluster=cpu_test   # MiniLM, two workers

An ``AutoModelForSequenceClassification(num_labels=1)`` on any backbone is trained with Ray
Train's ``TorchTrainer`` through the project's DeepSpeed strategy, fed by Ray Data, on
Bradley-Terry pairs plus pointwise targets (alignray/reward/losses.py). After training its
raw output is measured on a reference set and the mean and std are stored in its config
(alignray/reward/model.py), then it is evaluated on held-out pairwise feedback.

The feedback folder holds (names below): the training tables ``pairs.parquet`` and
``pointwise.parquet`` (alignray.feedback.aggregate schemas); optionally ``heldout_feedback.parquet``,
raw feedback on held-out items for evaluation; optionally ``feedback.parquet``, the raw
training feedback, to retrain with every annotator kept and measure what excluding the
flagged ones changed. Without a held-out file the raw feedback's rows on the prompts held
out from training are the held-out feedback (collected feedback: alignray/feedback/groups.py).

Each annotator group of the held-out feedback is a panel (``group:<name>``): the model's
accuracy against each group's majority, gathered in eval.json's ``accuracy_by_group``.
With ``reward_model.cross_group=true`` one more model is trained on each group's feedback
alone (``trained_on:<group>``, in ``group-<name>/``), scored against every group.

With ``reward_model.ensemble_size=K`` > 1 it trains K members (seeds ``seed + i``; every
example or a 1/K share of the prompts each, ``reward_model.ensemble_data``), scored as one
reward model: the mean of their rewards, and their disagreement.

Output ``<workdir>/reward-<hash>/``: ``model/`` (the folder ``load_reward_model`` reads: a
Hugging Face folder, or for an ensemble ``member-<i>/`` Hugging Face folders and
``reward_ensemble.json``), ``metrics.jsonl`` and ``loss.png`` (per member in
``member-<i>/`` for an ensemble), ``calibration.png``, ``eval.json``, ``summary.json``.
"""
from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path

import hydra
import pyarrow as pa
import ray.data
from omegaconf import DictConfig

from alignray.actors import runtime
from alignray.config import AlignrayConfig, RewardModelConfig
from alignray.core.artifacts import (CALIBRATION_FIGURE, EVAL_FILE, FEEDBACK_FILE, MODEL_DIR, REWARD,
                                SUMMARY_FILE)
from alignray.feedback.schema import read_feedback
from alignray.feedback.groups import TRAINED_ON, annotator_groups, cross_group_accuracy, group_training_tables
from alignray.core.model_card import ModelCard, write_model_card
from alignray.reward.evaluation import plot_calibration
from alignray.reward.model import (assemble_reward_ensemble, reward_model_card)
from alignray.reward.training import (build_reward_model, collate_reward_rows, reward_batch_loss,
                                      training_examples)
from alignray.core.tracking import tracking_settings
from alignray.workflows.common import (CONFIG_PATH, is_complete, mark_complete, phase_dir, run_app,
                                       start_app)
from alignray.actors.trainer import copy_final_model, fit
from alignray.core.train_loop import TrainLoopConfig, TrainTask, steps_per_epoch
from alignray.workflows.phases import run_phase
from alignray.data.splits import split_examples
from alignray.reward.dataset import (annotators_of, heldout_feedback_of, member_examples, member_folders,
                                     read_training_tables, unfiltered_tables)
from alignray.reward.model import resolve_backbone
from alignray.reward.heldout import evaluate_reward_model, final_losses
from alignray.reward.model import normalize_saved_model

log = logging.getLogger("alignray.reward")


def reward_task(backbone: str, reward: RewardModelConfig) -> TrainTask:
    return TrainTask(
        name="reward",
        build_model=partial(build_reward_model, max_length=reward.max_length, disable_dropout=reward.disable_dropout,
                            freeze_backbone=reward.freeze_backbone, pooling=reward.pooling, lora=reward.lora),
        collate=partial(collate_reward_rows, tokenizer_path=backbone, max_length=reward.max_length),
        loss=partial(reward_batch_loss, margin_scale=reward.margin, pointwise_weight=reward.pointwise_weight))


def train_reward_model(examples: pa.Table, backbone: str, cfg: AlignrayConfig, out_dir: Path, seed: int) -> Path:
    """Train on ``examples`` with the shared Ray Train loop (``cluster.num_workers``
    workers, DeepSpeed); returns ``<out_dir>/model``, not yet normalised. An interrupted
    run in ``out_dir`` resumes from its last checkpoint."""
    reward = cfg.reward_model
    tables = split_examples(examples, reward.heldout_fraction, seed, reward.batch_by_prompt)
    loop = TrainLoopConfig.of(reward, model_path=backbone, seed=seed, metrics_dir=str(out_dir),
                              steps_per_epoch=steps_per_epoch(tables["train"].num_rows, reward.batch_size),
                              tokens_per_row=2 * reward.max_length)
    datasets = {split: ray.data.from_arrow(table) for split, table in tables.items()}
    result = fit(reward_task(backbone, reward), loop, datasets, cfg.cluster, out_dir, tracking_settings(cfg))
    return copy_final_model(result, out_dir)


def train_members(examples: pa.Table, backbone: str, cfg: AlignrayConfig, out_dir: Path) -> Path:
    """The ``reward_model.ensemble_size`` members, member ``i`` with seed ``seed + i`` (so
    member 0 is the single model of the same settings); returns the model folder."""
    reward = cfg.reward_model
    folders = member_folders(out_dir, reward.ensemble_size)
    models = [train_reward_model(member_examples(examples, i, len(folders), reward.ensemble_data), backbone, cfg,
                                 folder, cfg.seed + i) for i, folder in enumerate(folders)]
    return models[0] if len(models) == 1 else assemble_reward_ensemble(models, out_dir / MODEL_DIR)


# ----------------------------------------------------------------------------- after training


def train_normalize_evaluate(pairs: pa.Table, pointwise: pa.Table, heldout: pa.Table | None, backbone: str,
                             cfg: AlignrayConfig, out_dir: Path) -> dict:
    """One reward model: train, normalise, evaluate; figures go to ``out_dir``."""
    started = time.monotonic()
    reward = cfg.reward_model
    examples = training_examples(pairs, pointwise, reward.votes, keep_margins=reward.margin != 0)
    model_dir = train_members(examples, backbone, cfg, out_dir)
    train_s = time.monotonic() - started
    result = {"pairs": pairs.num_rows, "pointwise": pointwise.num_rows, "examples": examples.num_rows,
              "train_s": round(train_s, 1), "ensemble_size": reward.ensemble_size,
              "normalization": normalize_saved_model(model_dir, examples, reward.reference_size, cfg.seed)}
    result |= final_losses(member_folders(out_dir, reward.ensemble_size))
    if heldout is not None:
        figures, calibration, ensemble = evaluate_reward_model(model_dir, heldout, annotators_of(pairs, pointwise),
                                                               reward.calibration_bins)
        plot_calibration(calibration, out_dir / CALIBRATION_FIGURE)
        result["heldout"] = figures
        result |= ensemble
    write_model_card(model_dir, reward_card(backbone, cfg, result))
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def reward_card(backbone: str, cfg: AlignrayConfig, result: dict) -> ModelCard:
    """The model card of a trained reward model: its data, settings and held-out figures."""
    reward = cfg.reward_model
    settings = {key: getattr(reward, key) for key in ("lr", "epochs", "max_steps", "batch_size", "margin", "pointwise_weight",
                                             "votes", "batch_by_prompt", "max_length", "pooling", "reference_size",
                                             "ensemble_size", "ensemble_data")}
    metrics = {"final_train_loss": result["final_train_loss"], "final_heldout_loss": result["final_heldout_loss"]}
    metrics |= {f"{panel}_pair_accuracy": figures["accuracy"] for panel, figures in result.get("heldout", {}).items()}
    data = (f"{result['pairs']} preference pairs and {result['pointwise']} pointwise targets (the feedback "
            "phase's training tables: Bradley-Terry loss on pairs, regression on pointwise targets). "
            "Accuracies are on held-out pairwise feedback, per annotator panel.")
    return reward_model_card(result["normalization"]["mean"], result["normalization"]["std"],
                             reward.ensemble_size, reward.pooling, base_model=backbone,
                             data=data, config=settings | {"seed": cfg.seed}, metrics=metrics)


def run_reward_model(cfg: AlignrayConfig, backbone_path: str, feedback_dir: str | Path) -> Path:
    """Train, normalise and evaluate the reward model; returns the phase folder (reused
    when complete). The model is ``<out>/model``."""
    feedback_dir = Path(feedback_dir)
    out = phase_dir(cfg, REWARD, backbone=backbone_path, feedback=feedback_dir.resolve())
    if is_complete(out):
        log.info("reusing the reward model in %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    pairs, pointwise = read_training_tables(feedback_dir)
    feedback = read_feedback(feedback_dir / FEEDBACK_FILE, strict=False)[0] if (feedback_dir / FEEDBACK_FILE).exists() \
        else None
    heldout = heldout_feedback_of(feedback_dir, feedback, cfg.reward_model.heldout_fraction)
    backbone = resolve_backbone(cfg.reward_model.backbone, backbone_path)
    with runtime.ray_session(cfg.cluster):
        evaluation = {"model": train_normalize_evaluate(pairs, pointwise, heldout, backbone, cfg, out)}
        evaluation |= comparison_models(cfg, feedback, pairs, pointwise, heldout, backbone, out)
    if "with_flagged_annotators" in evaluation and heldout is not None:
        evaluation["accuracy_gained_by_excluding_flagged"] = {
            panel: figures["accuracy"] - evaluation["with_flagged_annotators"]["heldout"][panel]["accuracy"]
            for panel, figures in evaluation["model"]["heldout"].items()}
    if heldout is not None and annotator_groups(heldout):
        evaluation["accuracy_by_group"] = cross_group_accuracy(evaluation)
    (out / EVAL_FILE).write_text(json.dumps(evaluation, indent=2))
    headline = _headline(evaluation)
    log.info("reward model %s; %s", ", ".join(f"{k} {v:.3f}" for k, v in headline.items()), out / MODEL_DIR)
    mark_complete(out, {"model": str(out / MODEL_DIR), "backbone": backbone, "feedback_dir": str(feedback_dir),
                        "workers": cfg.cluster.num_workers, **headline})
    return out


def comparison_models(cfg: AlignrayConfig, feedback: pa.Table | None, pairs: pa.Table, pointwise: pa.Table,
                      heldout: pa.Table | None, backbone: str, out: Path) -> dict:
    """The opt-in comparisons, each a reward model of the same settings: with the flagged
    annotators kept (``compare_unfiltered``) and on each annotator group's feedback alone
    (``cross_group``, with held-out feedback to judge them)."""
    runs = {}
    if feedback is None:
        return runs
    comparison = unfiltered_tables(feedback, pairs, pointwise) if cfg.reward_model.compare_unfiltered else None
    if comparison is not None:
        # Same feedback, same settings, flagged annotators kept: what excluding them bought.
        (out / "unfiltered").mkdir(exist_ok=True)
        runs["with_flagged_annotators"] = train_normalize_evaluate(*comparison, heldout, backbone, cfg,
                                                                   out / "unfiltered")
    if cfg.reward_model.cross_group and heldout is not None:
        for group, tables in group_training_tables(feedback, pairs, pointwise).items():
            folder = out / f"group-{group}"
            folder.mkdir(exist_ok=True)
            runs[f"{TRAINED_ON}{group}"] = train_normalize_evaluate(*tables, heldout, backbone, cfg, folder)
    return runs


def _headline(evaluation: dict) -> dict:
    """Held-out pairwise accuracy per model and panel, for the summary and the console."""
    return {f"{run}_{panel}_accuracy": figures["accuracy"]
            for run, result in evaluation.items() if isinstance(result, dict) and "heldout" in result
            for panel, figures in result["heldout"].items()}


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> str:
    config = start_app(cfg, "reward_model")
    out = run_phase(config, "reward")
    log.info("reward model summary:\n%s", json.dumps(json.loads((out / SUMMARY_FILE).read_text()), indent=2))
    return str(out)


if __name__ == "__main__":
    run_app(main)
