"""Phase 2: supervised fine-tuning on human demonstrations, as a Hydra app.

    python -m alignray.workflows.sft                                  # embedded default, local Ray
    python -m alignray.workflows.sft cluster=cpu_test                 # two Ray Train workers on CPU
    python -m alignray.workflows.sft cluster=multi_gpu sft.deepspeed.zero_stage=3
    python -m alignray.workflows.sft data=files data.demonstrations_path=/data/demos.parquet

Demonstrations (parquet: ``prompt``, ``response``, optional ``system``, ``source``) are
validated against `DEMONSTRATION_SCHEMA`: a malformed file stops the run with the file,
row and field of each error; empty or over-long rows are counted and reported. Ray Data
tokenises them (`map_batches`) and feeds the Ray Train workers, each of
which drives the DeepSpeed strategy (actors/trainer.py). The loss covers response
tokens only.

Output, in ``<workdir>/sft-<hash>/``: ``model/`` (Hugging Face format), ``metrics.jsonl``
(train loss, tokens/s, held-out loss before training and after every evaluation),
``loss.png``, ``summary.json`` (base vs SFT held-out loss, wall time, data counts) and the
Ray Train run with its checkpoints (``ray_train/``). A rerun with the same settings reuses
a finished folder and resumes an interrupted one.
"""
from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from omegaconf import DictConfig

from alignray.core.artifacts import DEMONSTRATIONS_FILE, LOSS_FIGURE, METRICS_FILE, SFT
from alignray.config import AlignrayConfig, SFTConfig
from alignray.data.prompts import read_demonstrations
from alignray.data.tweets import is_heldout
from alignray.core.metrics import plot_curves, read_metrics
from alignray.core.model_card import ModelCard, write_model_card
from alignray.models.modeling import check_position_limit
from alignray.sft.training import build_sft_model, collate_token_rows, response_token_loss, sequence_length, tokenize_batch
from alignray.core.tracking import tracking_settings
from alignray.workflows.phases import run_phase
from alignray.workflows.common import (CONFIG_PATH, embedded_data_dir, is_complete, mark_complete, phase_dir, run_app,
                                       start_app)
from alignray.actors.trainer import copy_final_model, fit
from alignray.core.train_loop import TrainLoopConfig, TrainTask, steps_per_epoch
from alignray.core.metrics import trained_history

log = logging.getLogger("alignray.sft.training")
TOKENIZE_BATCH_ROWS = 512


def sft_task(sft: SFTConfig) -> TrainTask:
    return TrainTask(name="sft", build_model=partial(build_sft_model, lora=sft.lora), collate=collate_token_rows,
                     loss=response_token_loss)


def sft_output_dir(cfg: AlignrayConfig, base_model_path: str) -> Path:
    """The folder is named by everything that decides the SFT model (alignray.core.artifacts.SFT:
    the seed, data and SFT settings, the base model), run control left out (so
    ``resume=false`` or a drill does not move it)."""
    return phase_dir(cfg, SFT, base_model=base_model_path)


# ----------------------------------------------------------------------------- data
def read_demonstration_splits(cfg: AlignrayConfig) -> tuple[dict[str, pa.Table], list[dict]]:
    """Validated ``train`` and ``heldout`` tables and one validation report per file read.

    The embedded default comes as two files; ``data.source=files`` is one file whose
    held-out rows are drawn by content hash (``data.heldout_fraction``, stable across runs).
    """
    if cfg.data.source == "embedded":
        data_dir = embedded_data_dir(cfg)
        splits = {split: _read(data_dir / DEMONSTRATIONS_FILE.format(split=split), cfg.data.max_text_chars) for split in ("train", "heldout")}
        return {split: table for split, (table, _) in splits.items()}, [r for _, r in splits.values()]
    if cfg.data.source == "files":
        if not cfg.data.demonstrations_path:
            raise ValueError("data.source=files needs data.demonstrations_path")
        table, report = _read(Path(cfg.data.demonstrations_path), cfg.data.max_text_chars)
        texts = zip(table.column("prompt").to_pylist(), table.column("response").to_pylist())
        heldout = pa.array([is_heldout(f"{p} {r}", cfg.data.heldout_fraction) for p, r in texts], pa.bool_())
        return {"train": table.filter(pc.invert(heldout)), "heldout": table.filter(heldout)}, [report]
    raise ValueError(f"data.source must be embedded or files, not {cfg.data.source!r}")


def _read(path: Path, max_chars: int) -> tuple[pa.Table, dict]:
    table, report = read_demonstrations(path, max_chars)
    log.info(report.summary())
    return table, report.counts()


def load_demonstrations(cfg: AlignrayConfig) -> tuple[dict[str, pa.Table], list[dict]]:
    """The validated splits, train shuffled with the seed and capped at
    ``sft.max_examples``, each row numbered by ``example_id`` in training order; and the
    validation reports."""
    tables, reports = read_demonstration_splits(cfg)
    order = np.random.default_rng(cfg.seed).permutation(tables["train"].num_rows)
    if cfg.sft.max_examples:
        order = order[: cfg.sft.max_examples]
    tables["train"] = tables["train"].take(pa.array(order))
    for split, table in tables.items():
        if table.num_rows == 0:
            raise ValueError(f"no {split} demonstrations left after validation: {reports}")
        tables[split] = table.append_column("example_id", pa.array(np.arange(table.num_rows), pa.int64()))
    return tables, reports


def tokenized_dataset(table: pa.Table, model_path: str, data_cfg) -> ray.data.Dataset:
    """Ray Data tokenises (`map_batches`), in order (the loop relies on ``example_id``
    order), and keeps the result in the object store for every epoch and worker."""
    blocks = max(1, min(64, table.num_rows // TOKENIZE_BATCH_ROWS))
    # from_arrow gives one block: split it so that several tasks share the work.
    dataset = ray.data.from_arrow(table).repartition(blocks)
    dataset.context.execution_options.preserve_order = True
    tokens = dataset.map_batches(
        tokenize_batch, batch_size=TOKENIZE_BATCH_ROWS, batch_format="numpy",
        fn_kwargs={"model_path": model_path, "max_prompt_tokens": data_cfg.max_prompt_tokens,
                   "max_response_tokens": data_cfg.max_response_tokens})
    tokens = tokens.materialize()
    # The workers read it once per epoch and evaluation: no progress bar each time.
    tokens.context.enable_progress_bars = False
    return tokens


def truncation_counts(dataset: ray.data.Dataset) -> dict[str, int]:
    """Rows, and rows whose prompt or response was cut to the token caps (read on the
    driver from the materialised blocks: no extra Ray job)."""
    counts = {"rows": 0, "prompt_truncated": 0, "response_truncated": 0}
    columns = ["prompt_truncated", "response_truncated"]
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        counts["rows"] += len(batch["prompt_truncated"])
        counts.update({name: counts[name] + int(batch[name].sum()) for name in columns})
    return counts


# ----------------------------------------------------------------------------- the phase
def run_sft(cfg: AlignrayConfig, base_model_path: str | Path) -> Path:
    """Fine-tune ``base_model_path`` on the demonstrations; returns the output folder
    (final model in ``<out>/model``). Needs a connected Ray."""
    base_model_path = str(base_model_path)
    out = sft_output_dir(cfg, base_model_path)
    if is_complete(out):
        log.info("SFT output for these settings exists: %s", out)
        return out
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    check_position_limit(base_model_path, sequence_length(cfg.data.max_prompt_tokens, cfg.data.max_response_tokens),
                         "data.max_prompt_tokens + data.max_response_tokens + 1")

    tables, validation = load_demonstrations(cfg)
    datasets = {split: tokenized_dataset(table, base_model_path, cfg.data) for split, table in tables.items()}
    tokens = {split: truncation_counts(dataset) for split, dataset in datasets.items()}
    steps = steps_per_epoch(tokens["train"]["rows"], cfg.sft.batch_size)
    untrained_tail = tokens["train"]["rows"] - steps * cfg.sft.batch_size
    log.info("SFT data: %s; %d global batches of %d per epoch, the last %d rows of each epoch make no full batch",
             json.dumps(tokens), steps, cfg.sft.batch_size, untrained_tail)

    loop = TrainLoopConfig.of(cfg.sft, model_path=base_model_path, steps_per_epoch=steps, seed=cfg.seed,
                              metrics_dir=str(out),
                              tokens_per_row=sequence_length(cfg.data.max_prompt_tokens, cfg.data.max_response_tokens))
    result = fit(sft_task(cfg.sft), loop, datasets, cfg.cluster, out, tracking_settings(cfg))

    model_dir = copy_final_model(result, out)
    summary = summarise(out, loop, validation, tokens, untrained_tail, time.monotonic() - started)
    summary |= {"base_model": base_model_path, "model": str(model_dir),
                "workers": cfg.cluster.num_workers, "zero_stage": cfg.sft.deepspeed.zero_stage}
    write_model_card(model_dir, sft_card(cfg, loop, summary))
    mark_complete(out, summary)
    log.info("SFT held-out loss %.4f (base) -> %.4f nats/token in %.0f s; model in %s",
             summary["heldout_loss_base"], summary["heldout_loss_sft"], summary["wall_time_s"], model_dir)
    return out


def sft_card(cfg: AlignrayConfig, loop: TrainLoopConfig, summary: dict) -> ModelCard:
    return ModelCard(
        title="alignray SFT model", tags=["sft", "rlhf"], base_model=summary["base_model"],
        description="A causal language model fine-tuned on demonstrations (supervised fine-tuning, the "
                    "first step of RLHF); the loss counts response tokens only.",
        data=f"{summary['tokenized']['train']['rows']} training demonstrations (`data` config group: "
             f"{cfg.data.max_prompt_tokens} prompt + {cfg.data.max_response_tokens} response tokens at most); "
             f"{summary['tokenized']['heldout']['rows']} held out.",
        config={"lr": loop.lr, "warmup_steps": loop.warmup_steps, "global_batch_size": loop.global_batch_size,
                "steps": loop.total_steps, "epochs": loop.epochs, "zero_stage": summary["zero_stage"],
                "workers": summary["workers"], "seed": loop.seed},
        metrics={"heldout_loss_base": summary["heldout_loss_base"], "heldout_loss_sft": summary["heldout_loss_sft"]})


def summarise(out: Path, loop: TrainLoopConfig, validation: list[dict], tokens: dict, untrained_tail: int,
              wall_time_s: float) -> dict:
    """Base vs SFT held-out loss from the metrics log, and the loss curves as PNG."""
    records = trained_history(read_metrics(out / METRICS_FILE))
    heldout = [(r["step"], r["heldout_loss"]) for r in records if "heldout_loss" in r]
    base = next(loss for step, loss in heldout if step == 0)
    plot_curves(records, ["loss", "heldout_loss", "tokens_per_s"], out / LOSS_FIGURE,
                title="SFT: response-token loss (nats/token)")
    return {"heldout_loss_base": base, "heldout_loss_sft": heldout[-1][1], "steps": loop.total_steps,
            "global_batch_size": loop.global_batch_size, "wall_time_s": round(wall_time_s, 1),
            "validation": validation, "tokenized": tokens, "untrained_rows_per_epoch": untrained_tail}


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> str:
    config = start_app(cfg, "sft")
    return str(run_phase(config, "sft"))


if __name__ == "__main__":
    run_app(main)
