"""DPO, IPO and cDPO: the SFT model trained directly on the feedback's preference pairs, as a
Hydra app (offline alignment beside PPO: no reward model, no sampling).

    python -m alignray.workflows.dpo                                 # embedded default: SFT and feedback phases first
    python -m alignray.workflows.dpo dpo.loss_type=ipo               # IPO
    python -m alignray.workflows.dpo dpo.label_smoothing=0.1         # cDPO: labels taken as 10% flipped
    python -m alignray.workflows.dpo dpo.sft_model_path=<folder> dpo.feedback_dir=<folder> cluster=cpu_test

The pairs are the feedback folder's ``pairs.parquet``, the table the reward model trains
on (ties as two half-weight pairs, rankings expanded), each pair weighted by its
annotator-quality weight; pairs of weight 0 (excluded annotators) are dropped and counted.
Ray Data tokenises them (`map_batches`) and computes the frozen reference's log-probs of
every response once, before training (an actor pool of one `ReferenceLogprobs`), for the
training pairs ``dpo.max_steps`` reaches (a budget under one epoch trains only the first
``max_steps * batch_size`` pairs of the fixed order; the rest are counted, not scored); Ray Train
workers then drive the DeepSpeed strategy through the shared loop (actors/trainer.py).
The losses are in alignray/dpo/training.py.

Output ``<workdir>/dpo-<hash>/``: ``model/`` (the policy, Hugging Face format, with its
model card), ``metrics.jsonl`` (train and held-out loss, implicit-reward accuracy and
margin), ``loss.png``, ``summary.json`` and the Ray Train run (``ray_train/``). A rerun with
the same settings reuses a finished folder and resumes an interrupted one.
"""
from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path

import hydra
import pyarrow as pa
import pyarrow.compute as pc
import ray.data
from omegaconf import DictConfig

from alignray.config import AlignrayConfig, DPOConfig
from alignray.core.artifacts import DPO, LOSS_FIGURE, METRICS_FILE, SUMMARY_FILE
from alignray.dpo.training import (ReferenceLogprobs, build_policy, check_loss_settings, collate_pair_rows, dpo_batch_loss,
                          tokenize_pairs_batch)
from alignray.core.metrics import plot_curves, read_metrics
from alignray.core.model_card import ModelCard, write_model_card
from alignray.models.modeling import check_position_limit
from alignray.sft.training import sequence_length
from alignray.workflows.common import (CONFIG_PATH, is_complete, mark_complete, phase_dir, run_app,
                                       start_app)
from alignray.actors.trainer import copy_final_model, fit
from alignray.core.train_loop import TrainLoopConfig, TrainTask, rows_within_budget, steps_per_epoch
from alignray.core.metrics import trained_history
from alignray.data.splits import split_examples
from alignray.reward.dataset import read_training_tables
from alignray.workflows.phases import run_phase

log = logging.getLogger("alignray.dpo.training")

BATCH_ROWS = 256  # pairs per Ray Data batch (tokenising, reference log-probs)


def dpo_output_dir(cfg: AlignrayConfig, sft_model: str, feedback_dir: Path) -> Path:
    """Named by what alignray.core.artifacts.DPO declares decides the policy."""
    return phase_dir(cfg, DPO, sft_model=str(Path(sft_model).resolve()), feedback=str(feedback_dir.resolve()))


def weighted_pairs(feedback_dir: Path) -> tuple[pa.Table, dict]:
    """The validated pairs table with weight > 0, and the counts (read = kept + weight 0)."""
    pairs, _ = read_training_tables(feedback_dir)
    kept = pairs.filter(pc.greater(pairs.column("weight"), 0.0))
    counts = {"pairs_read": pairs.num_rows, "pairs_kept": kept.num_rows,
              "pairs_weight_zero": pairs.num_rows - kept.num_rows}
    if kept.num_rows == 0:
        raise ValueError(f"{feedback_dir}: no pair of positive weight among {pairs.num_rows}")
    return kept.select(["prompt", "chosen", "rejected", "weight"]), counts


def pair_dataset(table: pa.Table, sft_model: str, cfg: AlignrayConfig) -> ray.data.Dataset:
    """Tokenised pairs with the reference's log-probs, computed once here (Ray Data), in
    ``example_id`` order as the loop requires, kept in the object store for every epoch."""
    dataset = ray.data.from_arrow(table).repartition(max(1, min(16, table.num_rows // BATCH_ROWS)))
    dataset.context.execution_options.preserve_order = True
    tokens = dataset.map_batches(
        tokenize_pairs_batch, batch_size=BATCH_ROWS, batch_format="numpy",
        fn_kwargs={"model_path": sft_model, "max_prompt_tokens": cfg.data.max_prompt_tokens,
                   "max_response_tokens": cfg.data.max_response_tokens})
    use_gpu = cfg.cluster.use_gpu
    scored = tokens.map_batches(
        ReferenceLogprobs, fn_constructor_kwargs={"model_path": sft_model, "device": "cuda" if use_gpu else "cpu"},
        batch_size=BATCH_ROWS, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1),
        num_gpus=1 if use_gpu else 0, num_cpus=cfg.cluster.cpus_per_worker)
    scored = scored.materialize()
    scored.context.enable_progress_bars = False  # read once per epoch and evaluation
    return scored


def truncated_responses(dataset: ray.data.Dataset) -> dict[str, int]:
    """Pairs, and responses cut to ``data.max_response_tokens`` (prompts to their cap), per side."""
    counts: dict[str, int] = {"pairs": 0}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        counts["pairs"] += len(batch["example_id"])
        for name in ("chosen_response_truncated", "rejected_response_truncated", "chosen_prompt_truncated"):
            counts[name] = counts.get(name, 0) + int(batch[name].sum())
    return counts


def dpo_task(dpo: DPOConfig) -> TrainTask:
    return TrainTask(name="dpo", build_model=partial(build_policy, lora=dpo.lora), collate=collate_pair_rows,
                     loss=partial(dpo_batch_loss, beta=dpo.beta, loss_type=dpo.loss_type,
                                  label_smoothing=dpo.label_smoothing))


def run_dpo(cfg: AlignrayConfig, sft_model: str, feedback_dir: str | Path) -> Path:
    """Train the policy on the pairs; returns the phase folder (reused when complete), the
    policy in ``<out>/model``. Needs a connected Ray."""
    dpo = cfg.dpo
    check_loss_settings(dpo.beta, dpo.loss_type, dpo.label_smoothing)
    feedback_dir = Path(feedback_dir)
    out = dpo_output_dir(cfg, sft_model, feedback_dir)
    if is_complete(out):
        log.info("DPO output for these settings exists: %s", out)
        return out
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    check_position_limit(sft_model, sequence_length(cfg.data.max_prompt_tokens, cfg.data.max_response_tokens),
                         "data.max_prompt_tokens + data.max_response_tokens + 1")
    pairs, counts = weighted_pairs(feedback_dir)
    tables = split_examples(pairs, dpo.heldout_fraction, cfg.seed)
    reached = rows_within_budget(tables["train"].num_rows, dpo.batch_size, dpo.max_steps)
    counts["train_pairs_beyond_max_steps"] = tables["train"].num_rows - reached
    tables["train"] = tables["train"].slice(0, reached)
    datasets = {split: pair_dataset(table, sft_model, cfg) for split, table in tables.items()}
    counts |= {split: truncated_responses(dataset) for split, dataset in datasets.items()}
    loop = TrainLoopConfig.of(dpo, model_path=sft_model, seed=cfg.seed, metrics_dir=str(out),
                              steps_per_epoch=steps_per_epoch(tables["train"].num_rows, dpo.batch_size),
                              tokens_per_row=2 * sequence_length(cfg.data.max_prompt_tokens, cfg.data.max_response_tokens))
    log.info("DPO data: %s; %d global batches of %d per epoch", json.dumps(counts), loop.steps_per_epoch,
             loop.global_batch_size)
    model_dir = copy_final_model(fit(dpo_task(dpo), loop, datasets, cfg.cluster, out), out)

    summary = summarise(out, loop) | {"sft_model": sft_model, "feedback_dir": str(feedback_dir), "model": str(model_dir),
                                      "data": counts, "workers": cfg.cluster.num_workers,
                                      "wall_time_s": round(time.monotonic() - started, 1)}
    write_model_card(model_dir, dpo_card(cfg, loop, summary))
    mark_complete(out, summary)
    print(f"DPO ({dpo.loss_type}, beta {dpo.beta}, label smoothing {dpo.label_smoothing}): held-out implicit-reward "
          f"accuracy {summary['heldout_reward_accuracy']:.3f}, loss {summary['heldout_loss_start']:.4f} -> "
          f"{summary['heldout_loss']:.4f} in {summary['wall_time_s']:.0f} s; policy in {model_dir}", flush=True)
    return out


def summarise(out: Path, loop: TrainLoopConfig) -> dict:
    """Held-out loss before and after, the final held-out and train figures, and the curves as PNG."""
    records = trained_history(read_metrics(out / METRICS_FILE))
    plot_curves(records, ["loss", "heldout_loss", "reward_accuracy", "heldout_reward_accuracy", "reward_margin",
                          "heldout_reward_margin"], out / LOSS_FIGURE, title="DPO: loss and implicit rewards")
    heldout = [r for r in records if "heldout_loss" in r]
    train = [r for r in records if "loss" in r]
    summary = {"steps": loop.total_steps, "global_batch_size": loop.global_batch_size,
               "heldout_loss_start": heldout[0]["heldout_loss"]}
    summary |= {key: heldout[-1][key] for key in ("heldout_loss", "heldout_reward_accuracy", "heldout_reward_margin")}
    summary |= {f"train_{key}": train[-1][key] for key in ("loss", "reward_accuracy", "reward_margin")}
    return summary


def dpo_card(cfg: AlignrayConfig, loop: TrainLoopConfig, summary: dict) -> ModelCard:
    dpo = cfg.dpo
    method = {"ipo": "IPO"}.get(dpo.loss_type, "cDPO" if dpo.label_smoothing else "DPO")
    data = summary["data"]
    return ModelCard(
        title=f"alignray {method} policy", tags=["dpo", "rlhf", dpo.loss_type], base_model=summary["sft_model"],
        description=f"A causal language model trained with {method} (`dpo.loss_type={dpo.loss_type}`, beta {dpo.beta}, "
                    f"label smoothing {dpo.label_smoothing}) from the SFT model, which is also the frozen reference.",
        data=f"{data['train']['pairs']} preference pairs of the feedback phase's `pairs.parquet` (weighted by "
             f"annotator quality; {data['pairs_weight_zero']} of weight 0 dropped, "
             f"{data['train_pairs_beyond_max_steps']} beyond the step budget); {data['heldout']['pairs']} "
             "pairs of held-out prompts give the held-out figures.",
        config={"loss_type": dpo.loss_type, "beta": dpo.beta, "label_smoothing": dpo.label_smoothing, "lr": loop.lr,
                "global_batch_size": loop.global_batch_size, "steps": loop.total_steps, "epochs": loop.epochs,
                "workers": summary["workers"], "seed": loop.seed},
        metrics={key: summary[key] for key in ("heldout_loss_start", "heldout_loss", "heldout_reward_accuracy",
                                               "heldout_reward_margin", "train_reward_accuracy")})


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> str:
    config = start_app(cfg, "dpo")
    out = run_phase(config, "dpo")
    print(json.dumps(json.loads((out / SUMMARY_FILE).read_text()), indent=2))
    return str(out)


if __name__ == "__main__":
    run_app(main)
