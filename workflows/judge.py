"""A judge taught by people, as a Hydra app: a causal LM fine-tuned on a human gold set to
answer the rubric's pairwise question (RLAIF with a small human budget, the way JudgeLM and
Prometheus are trained).

    python -m alignray.workflows.judge                                  # embedded default: SFT and feedback phases first
    python -m alignray.workflows.judge teach_judge.labels=200           # a smaller human budget
    python -m alignray.workflows.judge teach_judge.base_model_path=<instruct model> teach_judge.rubric=chat

The gold set is ``teach_judge.labels`` human votes from the feedback folder's
``feedback.parquet``, one on each of as many pairwise items (alignray/judges/teaching.py);
each teaches both orders, in the text the judge reads when it labels. Ray Train workers drive
the DeepSpeed strategy through the shared loop (actors/trainer.py). Before and after teaching
the judge labels, on the Ray Data pool that labels feedback (actors/ai_labeller.py):
``calibration_pairs`` human pairs it was not taught on (their annotators' majority) and, when
the feedback folder has them, the held-out pairs of the held-out panel.

Output ``<workdir>/judge-<hash>/``: ``model/`` (a Hugging Face folder with its model card: set
it as ``feedback.ai_judge.model_path``, ``ppo.reward.judge.model_path`` or an evaluation's
``ai_judge.model_path``), ``metrics.jsonl``, ``loss.png``, ``eval.json`` (agreement before and
after), ``summary.json`` and the Ray Train run.
"""
from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pyarrow as pa
import ray.data
from omegaconf import DictConfig

from alignray.actors.ai_labeller import label_pairs
from alignray.actors.trainer import copy_final_model, fit
from alignray.config import AlignrayConfig, TeachJudgeConfig
from alignray.core.artifacts import (EVAL_FILE, FEEDBACK_FILE, HELDOUT_PAIRS_FILE, JUDGE, LOSS_FIGURE, METRICS_FILE,
                                     MODEL_DIR)
from alignray.core.metrics import plot_curves, read_metrics, trained_history
from alignray.core.model_card import ModelCard, write_model_card
from alignray.core.tracking import tracking_settings
from alignray.core.train_loop import TrainLoopConfig, TrainTask, steps_per_epoch
from alignray.data.splits import split_examples
from alignray.feedback.schema import read_feedback
from alignray.feedback.ai_share import judge_agreement
from alignray.feedback.heldout import pair_items
from alignray.feedback.rlaif import answer_token_ids
from alignray.judges.calibration import agreement_with, gold_items
from alignray.judges.rubric import load_rubric
from alignray.judges.teaching import (collate_teaching_rows, gold_set, teaching_rows, tokenize_teaching_rows,
                                      verdict_loss, votes_on)
from alignray.models.modeling import load_tokenizer, position_limit
from alignray.sft.training import build_sft_model
from alignray.workflows.common import CONFIG_PATH, is_complete, mark_complete, phase_dir, run_app, start_app
from alignray.workflows.phases import run_phase

log = logging.getLogger("alignray.judge")


def judge_task(teach: TeachJudgeConfig, answer_ids: list[int]) -> TrainTask:
    return TrainTask(name="judge", build_model=partial(build_sft_model, lora=teach.lora), collate=collate_teaching_rows,
                     loss=partial(verdict_loss, answer_ids=answer_ids))


def teaching_datasets(gold: pa.Table, tokenizer, limit: int | None, teach: TeachJudgeConfig,
                      seed: int) -> tuple[dict, int]:
    """Train and held-out rows (split by prompt), tokenised as the judge reads them (``limit``:
    its positions); and the widest row's tokens."""
    rubric = load_rubric(teach.rubric)
    datasets, width = {}, 0
    for split, table in split_examples(gold, teach.heldout_fraction, seed).items():
        tokens = tokenize_teaching_rows(teaching_rows(table), tokenizer, rubric, teach.max_reply_tokens, limit)
        rows = [{name: column[i] for name, column in tokens.items()} for i in range(len(tokens["target"]))]
        datasets[split], width = ray.data.from_items(rows), max(width, tokens["input_ids"].shape[1])
    return datasets, width


def agreement_of(model_path: str, teach: TeachJudgeConfig, cluster, calibration: dict,
                 heldout: pd.DataFrame | None) -> dict:
    """The judge at ``model_path`` on the calibration pairs (their majority of the training
    annotators) and the held-out panel's pairs, labelled on the feedback phase's actor pool."""
    items = list(calibration) + ([] if heldout is None else pair_items(heldout))
    rows = label_pairs(items, model_path, batch_size=32, max_reply_tokens=teach.max_reply_tokens,
                       use_gpu=cluster.use_gpu, rubric=teach.rubric)
    verdicts = {item: {"status": "judged", "preference_a": float(row["preference_a"])} for item, row in zip(items, rows)}
    result = {"calibration": agreement_with(calibration, verdicts),
              "mean_position_bias_log_odds": float(np.mean([row["position_bias"] for row in rows]))}
    if heldout is not None:
        result["heldout_panel"] = judge_agreement(heldout, {item: v["preference_a"] for item, v in verdicts.items()})
    return result


def calibration_set(feedback: pa.Table, gold: pa.Table, teach: TeachJudgeConfig, seed: int) -> dict:
    """Human pairs outside the gold set with their training annotators' majority (its votes are
    human labels too: ``votes_on`` counts them)."""
    taught = list(zip(*(gold.column(c).to_pylist() for c in ("prompt", "response_a", "response_b"))))
    return gold_items(feedback, taught, teach.calibration_pairs, seed + 3)


def run_judge(cfg: AlignrayConfig, base_model: str, feedback_dir: str | Path) -> Path:
    """Teach the judge; returns the phase folder (reused when complete), the judge in
    ``<out>/model``. Needs a connected Ray."""
    teach, feedback_dir = cfg.teach_judge, Path(feedback_dir)
    out = phase_dir(cfg, JUDGE, base_model=str(base_model), feedback=str(feedback_dir.resolve()))
    if is_complete(out):
        log.info("the judge for these settings exists: %s", out)
        return out
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, limit = load_tokenizer(base_model, padding_side="right"), position_limit(base_model)
    answer_ids = answer_token_ids(tokenizer)  # fails now if " A" and " B" share a token
    feedback = read_feedback(feedback_dir / FEEDBACK_FILE, strict=False)[0]
    gold = gold_set(feedback, teach.labels, cfg.seed)
    calibration = calibration_set(feedback, gold, teach, cfg.seed)
    heldout_path = feedback_dir / HELDOUT_PAIRS_FILE
    heldout = pd.read_parquet(heldout_path) if heldout_path.exists() else None
    untaught = agreement_of(base_model, teach, cfg.cluster, calibration, heldout)

    datasets, width = teaching_datasets(gold, tokenizer, limit, teach, cfg.seed)
    train_rows = datasets["train"].count()
    loop = TrainLoopConfig.of(teach, model_path=base_model, steps_per_epoch=steps_per_epoch(train_rows, teach.batch_size),
                              seed=cfg.seed, metrics_dir=str(out), tokens_per_row=width)
    log.info("teaching the judge %s on %d human labels (%d rows, both orders; %d held out), %d steps", base_model,
             gold.num_rows, train_rows, datasets["heldout"].count(), loop.total_steps)
    model_dir = copy_final_model(fit(judge_task(teach, answer_ids), loop, datasets, cfg.cluster, out,
                                     tracking_settings(cfg)), out)
    taught = agreement_of(str(model_dir), teach, cfg.cluster, calibration, heldout)
    evaluation = {"untaught": untaught, "taught": taught, "labels": gold.num_rows,
                  "calibration_votes": votes_on(feedback, calibration),
                  "winners": dict(zip(*np.unique(gold.column("winner").to_pylist(), return_counts=True)))}
    (out / EVAL_FILE).write_text(json.dumps(evaluation, indent=2, default=int))
    summary = summarise(out, loop) | {"base_model": base_model, "feedback_dir": str(feedback_dir),
                                      "model": str(model_dir), "labels": gold.num_rows, "rubric": teach.rubric,
                                      "calibration_agreement": {"untaught": untaught["calibration"]["agreement"],
                                                                "taught": taught["calibration"]["agreement"]},
                                      "wall_time_s": round(time.monotonic() - started, 1)}
    if heldout is not None:
        summary["heldout_panel_agreement"] = {name: result["heldout_panel"]["agreement_with_heldout_raters"]
                                              for name, result in (("untaught", untaught), ("taught", taught))}
    write_model_card(model_dir, judge_card(teach, loop, summary))
    mark_complete(out, summary)
    log.info("judge taught on %d labels in %.0f s: agreement with people on %d untaught pairs %.3f -> %.3f; %s",
             gold.num_rows, summary["wall_time_s"], taught["calibration"]["items"],
             untaught["calibration"]["agreement"], taught["calibration"]["agreement"], model_dir)
    return out


def summarise(out: Path, loop: TrainLoopConfig) -> dict:
    """Held-out loss and accuracy before and after, and the curves as PNG."""
    records = trained_history(read_metrics(out / METRICS_FILE))
    plot_curves(records, ["loss", "heldout_loss", "accuracy", "heldout_accuracy"], out / LOSS_FIGURE,
                title="Judge teaching: the answer's loss and accuracy on the gold set")
    heldout = [r for r in records if "heldout_loss" in r]
    return {"steps": loop.total_steps, "global_batch_size": loop.global_batch_size,
            "heldout_loss_start": heldout[0]["heldout_loss"], "heldout_loss": heldout[-1]["heldout_loss"],
            "heldout_accuracy_start": heldout[0].get("heldout_accuracy"),
            "heldout_accuracy": heldout[-1].get("heldout_accuracy")}


def judge_card(teach: TeachJudgeConfig, loop: TrainLoopConfig, summary: dict) -> ModelCard:
    agreement = summary["calibration_agreement"]
    return ModelCard(
        title="alignray judge taught by people", tags=["judge", "rlaif", "reward-model"],
        base_model=summary["base_model"],
        description=f"A causal LM taught to answer the `{teach.rubric}` rubric's pairwise question (which reply is "
                    "better, A or B) as people did. Use it as a `local` AI judge: its verdict is the next-token "
                    "log-probability of ' A' against ' B', both orders asked, the position bias cancelled.",
        data=f"{summary['labels']} human pairwise labels (one vote on one item each), both orders of each; agreement "
             f"with people on human pairs it was not taught on: {agreement['untaught']:.3f} before, "
             f"{agreement['taught']:.3f} after.",
        config={"labels": teach.labels, "lr": loop.lr, "epochs": loop.epochs, "global_batch_size": loop.global_batch_size,
                "steps": loop.total_steps, "rubric": teach.rubric, "max_reply_tokens": teach.max_reply_tokens,
                "seed": loop.seed},
        metrics={"calibration_agreement_untaught": agreement["untaught"], "calibration_agreement": agreement["taught"],
                 **{f"heldout_panel_agreement_{k}": v for k, v in summary.get("heldout_panel_agreement", {}).items()}},
        usage="feedback.ai_judge.model_path=<this folder> (with feedback.ai_share), ppo.reward.kind=judge "
              "ppo.reward.judge.model_path=<this folder>, or eval.judge.kind=ai_judge "
              "eval.judge.ai_judge.model_path=<this folder>")


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> str:
    """The judge's folder; its agreement before and after teaching is in the log and ``eval.json``."""
    return str(run_phase(start_app(cfg, "judge"), "judge") / MODEL_DIR)


if __name__ == "__main__":
    run_app(main)
