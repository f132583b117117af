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
import zlib
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data
from omegaconf import DictConfig

from alignray.actors import runtime
from alignray.config import AlignrayConfig, RewardModelConfig
from alignray.core.artifacts import (CALIBRATION_FIGURE, EVAL_FILE, FEEDBACK_FILE, HELDOUT_FEEDBACK_FILE, LOSS_FIGURE,
                                METRICS_FILE, MODEL_DIR, PAIRS_FILE, POINTWISE_FILE, REWARD, SUMMARY_FILE)
from alignray.pretrain.base_model import resolve_base_model
from alignray.data.tweets import is_heldout
from alignray.feedback import PAIRS_SCHEMA, POINTWISE_SCHEMA, build_training_tables, read_feedback
from alignray.feedback.groups import (GROUP_PANEL, TRAINED_ON, cross_group_accuracy, group_training_tables,
                                      heldout_prompt_rows)
from alignray.core.metrics import plot_curves, read_metrics
from alignray.core.model_card import ModelCard, write_model_card
from alignray.reward.evaluation import annotator_groups, evaluate_against_panels, plot_calibration
from alignray.reward.model import (assemble_reward_ensemble, load_reward_model, minilm_backbone_path,
                                   reference_statistics, reward_model_card, reward_texts, save_normalization)
from alignray.reward.training import (build_reward_model, collate_reward_rows, reward_batch_loss,
                                      training_examples)
from alignray.core.tracking import tracking_settings
from alignray.data.validation import validate_table
from alignray.workflows.common import CONFIG_PATH, is_complete, mark_complete, phase_dir, run_app, start_app
from alignray.workflows.feedback import run_feedback
from alignray.workflows.ray_train import TrainLoopConfig, TrainTask, copy_final_model, fit, steps_per_epoch
from alignray.workflows.sft import run_sft

log = logging.getLogger("alignray.reward")
ENSEMBLE_DATA = ("all", "split")



def resolve_backbone(backbone: str, sft_model_path: str) -> str:
    if backbone == "sft":
        return sft_model_path
    if backbone == "minilm":
        return minilm_backbone_path()
    return backbone


def reference_texts(examples: pa.Table, size: int, seed: int) -> tuple[list[str], list[str]]:
    """Up to ``size`` distinct (prompt, response) texts of the training examples, drawn at
    random: the reference set whose raw rewards define the normalisation."""
    rows = examples.select(["prompt", "chosen", "rejected", "is_pair"]).to_pylist()
    texts = sorted({(r["prompt"], r["chosen"]) for r in rows}
                   | {(r["prompt"], r["rejected"]) for r in rows if r["is_pair"]})
    picked = np.random.default_rng(seed).permutation(len(texts))[:size]
    return [texts[i][0] for i in picked], [texts[i][1] for i in picked]


def training_order(prompts: list[str], seed: int, by_prompt: bool) -> np.ndarray:
    """The rows' training order: shuffled; with ``by_prompt``, the prompts shuffled and each
    prompt's rows together (shuffled among themselves), so a batch holds a few prompts whole
    and computes each of their responses once for all its pairs and targets."""
    rng = np.random.default_rng(seed)
    if not by_prompt:
        return rng.permutation(len(prompts))
    _, prompt_of_row = np.unique(np.asarray(prompts, dtype=object), return_inverse=True)
    prompt_rank = rng.permutation(int(prompt_of_row.max()) + 1 if len(prompts) else 0)[prompt_of_row]
    return np.lexsort((rng.random(len(prompts)), prompt_rank))


def split_examples(examples: pa.Table, heldout_fraction: float, seed: int,
                   by_prompt: bool = False) -> dict[str, pa.Table]:
    """Train / held-out by prompt (content hash, stable across runs), the train rows in
    :func:`training_order`; each row numbered by ``example_id`` in training order, as the
    loop requires."""
    heldout = np.array([is_heldout(p, heldout_fraction) for p in examples.column("prompt").to_pylist()], dtype=bool)
    tables = {"train": examples.filter(pa.array(~heldout)), "heldout": examples.filter(pa.array(heldout))}
    order = training_order(tables["train"].column("prompt").to_pylist(), seed, by_prompt)
    tables["train"] = tables["train"].take(pa.array(order))
    for split, table in tables.items():
        if table.num_rows == 0:
            raise ValueError(f"no {split} rows: {examples.num_rows} examples, heldout_fraction {heldout_fraction}")
        tables[split] = table.append_column("example_id", pa.array(np.arange(table.num_rows), pa.int64()))
    return tables


def reward_task(backbone: str, reward: RewardModelConfig) -> TrainTask:
    return TrainTask(
        name="reward",
        build_model=partial(build_reward_model, max_length=reward.max_length, disable_dropout=reward.disable_dropout,
                            freeze_backbone=reward.freeze_backbone, pooling=reward.pooling),
        collate=partial(collate_reward_rows, tokenizer_path=backbone, max_length=reward.max_length),
        loss=partial(reward_batch_loss, margin_scale=reward.margin, pointwise_weight=reward.pointwise_weight))


def train_reward_model(examples: pa.Table, backbone: str, cfg: AlignrayConfig, out_dir: Path, seed: int) -> Path:
    """Train on ``examples`` with the shared Ray Train loop (``cluster.num_workers``
    workers, DeepSpeed); returns ``<out_dir>/model``, not yet normalised. An interrupted
    run in ``out_dir`` resumes from its last checkpoint."""
    reward = cfg.reward_model
    tables = split_examples(examples, reward.heldout_fraction, seed, reward.batch_by_prompt)
    loop = TrainLoopConfig.of(reward, model_path=backbone, seed=seed, metrics_dir=str(out_dir),
                              steps_per_epoch=steps_per_epoch(tables["train"].num_rows, reward.batch_size))
    datasets = {split: ray.data.from_arrow(table) for split, table in tables.items()}
    result = fit(reward_task(backbone, reward), loop, datasets, cfg.cluster, out_dir, tracking_settings(cfg))
    return copy_final_model(result, out_dir)


def member_examples(examples: pa.Table, member: int, members: int, data: str) -> pa.Table:
    """What ensemble member ``member`` of ``members`` trains on: every example ("all": the
    members differ by seed, so by head initialisation and order), or the examples of its
    share of the prompts ("split": each prompt goes to one member, by content hash)."""
    if data not in ENSEMBLE_DATA:
        raise ValueError(f"reward_model.ensemble_data must be one of {ENSEMBLE_DATA}, not {data!r}")
    if data == "all" or members == 1:
        return examples
    shares = [zlib.crc32(prompt.encode()) % members for prompt in examples.column("prompt").to_pylist()]
    return examples.filter(pa.array(np.asarray(shares) == member))


def member_folders(out_dir: Path, members: int) -> list[Path]:
    """Where each member trains: the phase folder itself for a single model (its model is
    ``<out>/model``), ``<out>/member-<i>/`` for an ensemble (assembled into ``<out>/model``)."""
    if members < 1:
        raise ValueError(f"reward_model.ensemble_size must be >= 1, not {members}")
    return [out_dir] if members == 1 else [out_dir / f"member-{i}" for i in range(members)]


def train_members(examples: pa.Table, backbone: str, cfg: AlignrayConfig, out_dir: Path) -> Path:
    """The ``reward_model.ensemble_size`` members, member ``i`` with seed ``seed + i`` (so
    member 0 is the single model of the same settings); returns the model folder."""
    reward = cfg.reward_model
    folders = member_folders(out_dir, reward.ensemble_size)
    models = [train_reward_model(member_examples(examples, i, len(folders), reward.ensemble_data), backbone, cfg,
                                 folder, cfg.seed + i) for i, folder in enumerate(folders)]
    return models[0] if len(models) == 1 else assemble_reward_ensemble(models, out_dir / MODEL_DIR)


# ----------------------------------------------------------------------------- after training
def normalize_saved_model(model_dir: Path, examples: pa.Table, reference_size: int, seed: int) -> dict:
    """Measure the raw reward on the reference set and store its mean and std with the model."""
    reward_model = load_reward_model(model_dir)
    prompts, responses = reference_texts(examples, reference_size, seed)
    mean, std = reference_statistics(reward_model, prompts, responses)
    save_normalization(reward_model, mean, std)
    return {"mean": mean, "std": std, "reference_texts": len(prompts)}


def evaluation_panels(heldout: pa.Table, training_annotators: set[str]) -> dict[str, list[str]]:
    """Who judges: the annotators whose feedback trained the model (their consensus), the
    others (held out: 6-10 on the embedded default), and each annotator group."""
    ids = sorted(set(heldout.column("annotator_id").to_pylist()))
    panels = {"training_annotators": [i for i in ids if i in training_annotators],
              "heldout_annotators": [i for i in ids if i not in training_annotators]}
    panels |= {f"{GROUP_PANEL}{group}": members for group, members in annotator_groups(heldout).items()}
    return {name: members for name, members in panels.items() if members}


def evaluate_reward_model(model_dir: Path, heldout: pa.Table, training_annotators: set[str],
                          bins: int) -> tuple[dict, dict, dict]:
    """Accuracy and calibration per panel (raw rewards: the Bradley-Terry probability
    ``sigmoid(r_a - r_b)`` is defined on the scale the model was trained on). For an
    ensemble, third, each member's accuracy against the held-out annotators and the mean
    disagreement (normalised units) on the held-out texts; empty for a single model."""
    reward_model = load_reward_model(model_dir)
    panels = evaluation_panels(heldout, training_annotators)
    scored = {}

    def raw_scores(prompts, responses):
        # evaluate_against_panels scores the same distinct texts each time: score them once.
        if "members" not in scored:
            scored["members"] = reward_model.member_scores(reward_texts(reward_model.tokenizer, prompts,
                                                                        responses)).numpy()
        return scored["members"]

    figures, tables = evaluate_against_panels(lambda p, r: raw_scores(p, r).mean(axis=0), heldout, panels, bins)
    ensemble = {}
    if len(reward_model.members) > 1:
        heldout_panel = {"heldout_annotators": panels["heldout_annotators"]} if "heldout_annotators" in panels else {}
        ensemble["member_heldout_accuracies"] = [
            evaluate_against_panels(lambda p, r, i=i: raw_scores(p, r)[i], heldout, heldout_panel, bins)[0]
            .get("heldout_annotators", {}).get("accuracy") for i in range(len(reward_model.members))]
        ensemble["mean_disagreement"] = float(scored["members"].std(axis=0).mean() / reward_model.std)
    return figures, tables, ensemble


def read_training_tables(feedback_dir: Path) -> tuple[pa.Table, pa.Table]:
    pairs, _ = validate_table(pq.read_table(feedback_dir / PAIRS_FILE), PAIRS_SCHEMA, str(feedback_dir / PAIRS_FILE))
    pointwise_path = feedback_dir / POINTWISE_FILE
    pointwise = (validate_table(pq.read_table(pointwise_path), POINTWISE_SCHEMA, str(pointwise_path))[0]
                 if pointwise_path.exists() else POINTWISE_SCHEMA.empty_table())
    return pairs, pointwise


def annotators_of(*tables: pa.Table) -> set[str]:
    return {a for table in tables for a in table.column("annotator_id").to_pylist() if a is not None}


def with_pair_accuracy(record: dict) -> dict:
    """The loop logs sums per unit; the weighted pair accuracy is their ratio."""
    for prefix in ("", "heldout_"):
        if record.get(f"{prefix}pair_weight"):
            record = record | {f"{prefix}pair_accuracy": record[f"{prefix}pair_right"] / record[f"{prefix}pair_weight"]}
    return record


def final_losses(folders: list[Path]) -> dict:
    """Each member's training curves plotted in its folder; the last train and held-out
    losses, averaged over the members."""
    finals = []
    for folder in folders:
        records = [with_pair_accuracy(r) for r in read_metrics(folder / METRICS_FILE)]
        plot_curves(records, ["loss", "heldout_loss", "pair_accuracy", "heldout_pair_accuracy"],
                    folder / LOSS_FIGURE, title="reward model training")
        finals.append((next(r["loss"] for r in reversed(records) if "loss" in r),
                       next(r["heldout_loss"] for r in reversed(records) if "heldout_loss" in r)))
    return {"final_train_loss": float(np.mean([train for train, _ in finals])),
            "final_heldout_loss": float(np.mean([heldout for _, heldout in finals]))}


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


def unfiltered_tables(feedback: pa.Table, pairs: pa.Table, pointwise: pa.Table) -> tuple[pa.Table, pa.Table] | None:
    """The training tables rebuilt from the raw feedback with every annotator at weight 1,
    or None when that changes nothing (nobody was excluded or down-weighted)."""
    everyone = build_training_tables(feedback, None)

    def extent(table):
        return table.num_rows, round(pc.sum(table.column("weight")).as_py() or 0.0, 6)

    if extent(everyone.pairs) == extent(pairs) and extent(everyone.pointwise) == extent(pointwise):
        return None
    return everyone.pairs, everyone.pointwise


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


def heldout_feedback_of(feedback_dir: Path, feedback: pa.Table | None, heldout_fraction: float) -> pa.Table | None:
    """The held-out feedback: the feedback phase's held-out file (simulated feedback), else
    the raw feedback's rows on the prompts held out from training (collected feedback)."""
    path = feedback_dir / HELDOUT_FEEDBACK_FILE
    if path.exists():
        return read_feedback(path)[0]
    if feedback is None:
        return None
    rows = heldout_prompt_rows(feedback, heldout_fraction)
    return rows if rows.num_rows else None


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


def upstream_inputs(cfg: AlignrayConfig, phase: str = "reward_model") -> tuple[str, str]:
    """The SFT model and the feedback folder: given in the ``phase`` config group
    (``sft_model_path``, ``feedback_dir``), or the upstream phases' outputs (run, or reused
    when complete)."""
    sft_model = getattr(cfg, phase).sft_model_path or str(run_sft(cfg, resolve_base_model(cfg.model, cfg.cache_dir, cfg.seed))
                                                 / MODEL_DIR)
    feedback_dir = getattr(cfg, phase).feedback_dir or str(run_feedback(cfg, sft_model))
    return sft_model, feedback_dir


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> str:
    config = start_app(cfg, "reward_model")
    with runtime.ray_session(config.cluster):
        out = run_reward_model(config, *upstream_inputs(config))
    log.info("reward model summary:\n%s", json.dumps(json.loads((out / SUMMARY_FILE).read_text()), indent=2))
    return str(out)


if __name__ == "__main__":
    run_app(main)
