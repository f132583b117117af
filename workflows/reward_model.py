"""Phase 3b: train the reward model on the feedback tables, normalise it, evaluate it.

    python -m workflows.reward_model feedback_dir=<folder> backbone=<model folder>
    python -m workflows.reward_model ... reward.backbone=minilm cluster.num_workers=2

An ``AutoModelForSequenceClassification(num_labels=1)`` on any backbone is trained with Ray
Train's ``TorchTrainer`` through the project's DeepSpeed strategy, fed by Ray Data, on
Bradley-Terry pairs plus pointwise targets (alignray/reward_losses.py). After training its
raw output is measured on a reference set and the mean and std are stored in its config
(alignray/reward_model.py), then it is evaluated on held-out pairwise feedback.

The feedback folder holds (names below): the training tables ``pairs.parquet`` and
``pointwise.parquet`` (alignray.feedback.aggregate schemas); optionally ``heldout_feedback.parquet``,
raw feedback on held-out items for evaluation; optionally ``feedback.parquet``, the raw
training feedback, to retrain with every annotator kept and measure what excluding the
flagged ones changed.

Output ``<workdir>/reward-<hash>/``: ``model/`` (Hugging Face folder, the one
``load_reward_model`` reads), ``metrics.jsonl``, ``loss.png``, ``calibration.png``,
``eval.json``, ``summary.json``.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig, OmegaConf

from alignray.feedback import PAIRS_SCHEMA, POINTWISE_SCHEMA, build_training_tables, read_feedback
from alignray.metrics import MetricsLogger, plot_curves, read_metrics
from alignray.reward_evaluation import annotator_groups, evaluate_against_panels, plot_calibration
from alignray.reward_losses import mixed_reward_loss
from alignray.reward_model import (encode_texts, init_reward_model, load_reward_model, minilm_backbone_path,
                                   reference_statistics, save_reward_model)
from alignray.validation import validate_table
from workflows.common import CONFIG_PATH, is_complete, mark_complete, phase_dir, start_app

log = logging.getLogger("alignray.reward")

REPO = Path(__file__).resolve().parent.parent
PAIRS_FILE = "pairs.parquet"
POINTWISE_FILE = "pointwise.parquet"
HELDOUT_FEEDBACK_FILE = "heldout_feedback.parquet"
TRAINING_FEEDBACK_FILE = "feedback.parquet"

# One row per training example, a pair or a pointwise target, so one shuffled Ray Dataset
# feeds both losses and their mix follows the tables' sizes.
EXAMPLE_SCHEMA = pa.schema([
    pa.field("is_pair", pa.bool_(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("chosen", pa.string(), nullable=False),  # the response, for a pointwise example
    pa.field("rejected", pa.string(), nullable=False),  # "" for a pointwise example
    pa.field("weight", pa.float64(), nullable=False),
    pa.field("margin", pa.float64(), nullable=False),
    pa.field("target", pa.float64(), nullable=False),
])


def training_examples(pairs: pa.Table, pointwise: pa.Table) -> pa.Table:
    """The pairs and pointwise tables as one table of EXAMPLE_SCHEMA."""
    n_pairs, n_points = pairs.num_rows, pointwise.num_rows
    return pa.Table.from_pydict({
        "is_pair": [True] * n_pairs + [False] * n_points,
        "prompt": pairs.column("prompt").to_pylist() + pointwise.column("prompt").to_pylist(),
        "chosen": pairs.column("chosen").to_pylist() + pointwise.column("response").to_pylist(),
        "rejected": pairs.column("rejected").to_pylist() + [""] * n_points,
        "weight": pairs.column("weight").to_pylist() + pointwise.column("weight").to_pylist(),
        "margin": pairs.column("margin").to_pylist() + [0.0] * n_points,
        "target": [0.0] * n_pairs + pointwise.column("target").to_pylist(),
    }, schema=EXAMPLE_SCHEMA)


def reference_texts(examples: pa.Table, size: int, seed: int) -> tuple[list[str], list[str]]:
    """Up to ``size`` distinct (prompt, response) texts of the training examples, drawn at
    random: the reference set whose raw rewards define the normalisation."""
    rows = examples.select(["prompt", "chosen", "rejected", "is_pair"]).to_pylist()
    texts = sorted({(r["prompt"], r["chosen"]) for r in rows}
                   | {(r["prompt"], r["rejected"]) for r in rows if r["is_pair"]})
    picked = np.random.default_rng(seed).permutation(len(texts))[:size]
    return [texts[i][0] for i in picked], [texts[i][1] for i in picked]


def resolve_backbone(backbone: str, sft_model_path: str) -> str:
    if backbone == "sft":
        return sft_model_path
    if backbone == "minilm":
        return minilm_backbone_path()
    return backbone


# ----------------------------------------------------------------------------- one worker
def _batch_loss(engine, tokenizer, batch: dict, max_length: int, margin_scale: float,
                pointwise_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """One forward over every text of the batch (chosen, rejected, pointwise responses)."""
    pair = batch["is_pair"].astype(bool)
    prompts = [str(p) for p in batch["prompt"]]
    pair_prompts = [p for p, is_pair in zip(prompts, pair) if is_pair]
    point_prompts = [p for p, is_pair in zip(prompts, pair) if not is_pair]
    texts_prompts = pair_prompts + pair_prompts + point_prompts
    responses = ([str(r) for r in batch["chosen"][pair]] + [str(r) for r in batch["rejected"][pair]]
                 + [str(r) for r in batch["chosen"][~pair]])
    encoded = encode_texts(tokenizer, texts_prompts, responses, max_length).to(engine.device)
    rewards = engine(**encoded).logits[:, 0].float()
    n = len(pair_prompts)

    def column(name, mask):
        return torch.as_tensor(batch[name][mask], dtype=torch.float32, device=rewards.device)

    return mixed_reward_loss(rewards[:n], rewards[n:2 * n], column("margin", pair), column("weight", pair),
                             rewards[2 * n:], column("target", ~pair), column("weight", ~pair),
                             margin_scale=margin_scale, pointwise_weight=pointwise_weight)


def reward_train_loop(config: dict) -> None:
    """Ray Train worker: DeepSpeed data parallelism over the ``train`` dataset shard."""
    import ray.train

    from alignray import deepspeed_strategy as ds
    from alignray.config.training import DeepSpeedConfig

    reward = config["reward"]
    torch.manual_seed(config["seed"])  # the same head on every rank before DeepSpeed syncs
    model, tokenizer = init_reward_model(config["backbone"], reward["max_length"])
    engine = ds.build_engine(model, DeepSpeedConfig(**reward["deepspeed"]), lr=reward["lr"],
                             total_steps=config["total_steps"], warmup_steps=reward["warmup_steps"],
                             micro_batch_size=config["per_worker_batch"])
    rank = ds.world_rank()
    logger = MetricsLogger(config["out_dir"], config["total_steps"], "reward") if rank == 0 else None
    shard = ray.train.get_dataset_shard("train")
    step, window, started = 0, [], time.monotonic()
    for epoch in range(reward["epochs"]):
        engine.train()
        # Ray Train splits the dataset with equal=True and drop_last keeps every batch full,
        # so all ranks take the same number of steps (each step is a collective).
        for batch in shard.iter_batches(batch_size=config["per_worker_batch"], batch_format="numpy",
                                        drop_last=True, local_shuffle_buffer_size=4 * config["per_worker_batch"],
                                        local_shuffle_seed=config["seed"] + 1000 * epoch + rank):
            loss, parts = _batch_loss(engine, tokenizer, batch, reward["max_length"], reward["margin"],
                                      reward["pointwise_weight"])
            ds.backward_and_step(engine, loss)
            step += 1
            window.append(parts | {"loss": float(loss)})
            if logger and (step % reward["log_every"] == 0 or step == config["total_steps"]):
                means = {k: float(np.mean([w[k] for w in window if k in w])) for k in window[-1]}
                logger.log(step, ("loss", "pair_accuracy", "lr"), epoch=epoch, lr=ds.current_lr(engine),
                           examples_per_s=step * config["per_worker_batch"] * ds.world_size()
                           / (time.monotonic() - started), **means)
                window = []
            if step >= config["total_steps"]:
                break
        if step >= config["total_steps"]:
            break
    ds.export_hf(engine, tokenizer, config["model_dir"])


def train_reward_model(examples: pa.Table, backbone: str, reward_cfg, cluster_cfg, out_dir: Path,
                       seed: int) -> Path:
    """Train on ``examples`` with ``cluster_cfg.num_workers`` Ray Train workers; returns the
    folder of the trained (not yet normalised) model."""
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    workers = int(cluster_cfg.num_workers)
    batch_size = int(reward_cfg.batch_size)
    if batch_size % workers:
        raise ValueError(f"reward.batch_size {batch_size} is not divisible by cluster.num_workers {workers}")
    steps_per_epoch = examples.num_rows // workers // (batch_size // workers)
    if steps_per_epoch == 0:
        raise ValueError(f"{examples.num_rows} examples make no full batch of {batch_size}")
    total_steps = steps_per_epoch * int(reward_cfg.epochs)
    if reward_cfg.max_steps:
        total_steps = min(total_steps, int(reward_cfg.max_steps))
    shuffled = examples.take(np.random.default_rng(seed).permutation(examples.num_rows))
    dataset = ray.data.from_arrow(shuffled).repartition(max(2 * workers, 2))
    model_dir = out_dir / "model"
    trainer = TorchTrainer(
        reward_train_loop,
        train_loop_config={"backbone": backbone, "reward": OmegaConf.to_container(reward_cfg, resolve=True),
                           "out_dir": str(out_dir), "model_dir": str(model_dir), "seed": seed,
                           "total_steps": total_steps, "per_worker_batch": batch_size // workers},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=bool(cluster_cfg.use_gpu),
                                     resources_per_worker={"CPU": float(cluster_cfg.cpus_per_worker)}),
        run_config=RunConfig(name=f"reward-{out_dir.name}", storage_path=str(out_dir / "ray_train")),
        datasets={"train": dataset},
    )
    trainer.fit()
    return model_dir


# ----------------------------------------------------------------------------- after training
def normalize_saved_model(model_dir: Path, examples: pa.Table, reference_size: int, seed: int) -> dict:
    """Measure the raw reward on the reference set and store its mean and std with the model."""
    reward_model = load_reward_model(model_dir)
    prompts, responses = reference_texts(examples, reference_size, seed)
    mean, std = reference_statistics(reward_model, prompts, responses)
    save_reward_model(reward_model.model, reward_model.tokenizer, model_dir, mean, std)
    return {"mean": mean, "std": std, "reference_texts": len(prompts)}


def evaluation_panels(heldout: pa.Table, training_annotators: set[str]) -> dict[str, list[str]]:
    """Who judges: the annotators whose feedback trained the model (their consensus), the
    others (held out: 6-10 on the embedded default), and each annotator group."""
    ids = sorted(set(heldout.column("annotator_id").to_pylist()))
    panels = {"training_annotators": [i for i in ids if i in training_annotators],
              "heldout_annotators": [i for i in ids if i not in training_annotators]}
    panels |= {f"group:{group}": members for group, members in annotator_groups(heldout).items()}
    return {name: members for name, members in panels.items() if members}


def evaluate_reward_model(model_dir: Path, heldout: pa.Table, training_annotators: set[str],
                          bins: int) -> tuple[dict, dict]:
    """Accuracy and calibration per panel (raw rewards: the Bradley-Terry probability
    ``sigmoid(r_a - r_b)`` is defined on the scale the model was trained on)."""
    reward_model = load_reward_model(model_dir)

    def score_raw(prompts, responses):
        return reward_model.score(prompts, responses, normalize=False).numpy()

    return evaluate_against_panels(score_raw, heldout, evaluation_panels(heldout, training_annotators), bins)


def read_training_tables(feedback_dir: Path) -> tuple[pa.Table, pa.Table]:
    pairs, _ = validate_table(pq.read_table(feedback_dir / PAIRS_FILE), PAIRS_SCHEMA, str(feedback_dir / PAIRS_FILE))
    pointwise_path = feedback_dir / POINTWISE_FILE
    pointwise = (validate_table(pq.read_table(pointwise_path), POINTWISE_SCHEMA, str(pointwise_path))[0]
                 if pointwise_path.exists() else POINTWISE_SCHEMA.empty_table())
    return pairs, pointwise


def annotators_of(*tables: pa.Table) -> set[str]:
    return {a for table in tables for a in table.column("annotator_id").to_pylist() if a is not None}


def train_normalize_evaluate(pairs: pa.Table, pointwise: pa.Table, heldout: pa.Table | None, backbone: str,
                             cfg: DictConfig, out_dir: Path) -> dict:
    """One reward model: train, normalise, evaluate; figures go to ``out_dir``."""
    started = time.monotonic()
    examples = training_examples(pairs, pointwise)
    model_dir = train_reward_model(examples, backbone, cfg.reward, cfg.cluster, out_dir, int(cfg.seed))
    train_s = time.monotonic() - started
    result = {"pairs": pairs.num_rows, "pointwise": pointwise.num_rows, "train_s": round(train_s, 1),
              "normalization": normalize_saved_model(model_dir, examples, int(cfg.reward.reference_size),
                                                     int(cfg.seed))}
    records = read_metrics(out_dir / "metrics.jsonl")
    plot_curves(records, ["loss", "pairwise_loss", "pointwise_loss", "pair_accuracy"], out_dir / "loss.png",
                title="reward model training")
    if heldout is not None:
        figures, calibration = evaluate_reward_model(model_dir, heldout, annotators_of(pairs, pointwise),
                                                     int(cfg.reward.calibration_bins))
        plot_calibration(calibration, out_dir / "calibration.png")
        result["heldout"] = figures
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def unfiltered_tables(feedback_dir: Path, pairs: pa.Table, pointwise: pa.Table) -> tuple[pa.Table, pa.Table] | None:
    """The training tables rebuilt from the raw feedback with every annotator at weight 1,
    or None when there is no raw feedback or that changes nothing (nobody was excluded or
    down-weighted)."""
    path = feedback_dir / TRAINING_FEEDBACK_FILE
    if not path.exists():
        return None
    everyone = build_training_tables(read_feedback(path, strict=False)[0], None)

    def extent(table):
        return table.num_rows, round(pc.sum(table.column("weight")).as_py() or 0.0, 6)

    if extent(everyone.pairs) == extent(pairs) and extent(everyone.pointwise) == extent(pointwise):
        return None
    return everyone.pairs, everyone.pointwise


def run_reward_model(cfg: DictConfig, backbone_path: str, feedback_dir: str | Path) -> Path:
    """Train, normalise and evaluate the reward model; returns the phase folder (reused
    when complete). The model is ``<out>/model``."""
    from actors.runtime import connect, shutdown_if_owned

    feedback_dir = Path(feedback_dir)
    out = phase_dir(cfg, "reward", cfg.reward, backbone_path, str(feedback_dir.resolve()))
    if is_complete(out):
        log.info("reusing the reward model in %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)  # an interrupted run's log
    pairs, pointwise = read_training_tables(feedback_dir)
    heldout_path = feedback_dir / HELDOUT_FEEDBACK_FILE
    heldout = read_feedback(heldout_path)[0] if heldout_path.exists() else None
    backbone = resolve_backbone(cfg.reward.backbone, backbone_path)
    owned = connect(cfg.cluster, runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
                                                           "TOKENIZERS_PARALLELISM": "false"}})
    try:
        evaluation = {"model": train_normalize_evaluate(pairs, pointwise, heldout, backbone, cfg, out)}
        comparison = unfiltered_tables(feedback_dir, pairs, pointwise) if cfg.reward.compare_unfiltered else None
        if comparison is not None:
            # Same feedback, same settings, flagged annotators kept: what excluding them bought.
            (out / "unfiltered").mkdir(exist_ok=True)
            (out / "unfiltered" / "metrics.jsonl").unlink(missing_ok=True)
            evaluation["with_flagged_annotators"] = train_normalize_evaluate(*comparison, heldout, backbone, cfg,
                                                                             out / "unfiltered")
    finally:
        shutdown_if_owned(owned)
    (out / "eval.json").write_text(json.dumps(evaluation, indent=2))
    mark_complete(out, {"model": str(out / "model"), "backbone": backbone, "feedback_dir": str(feedback_dir),
                        "workers": int(cfg.cluster.num_workers), **_headline(evaluation)})
    return out


def _headline(evaluation: dict) -> dict:
    """Held-out accuracies per panel, for the summary and the console."""
    return {f"{run}_{panel}_accuracy": figures["accuracy"]
            for run, result in evaluation.items() for panel, figures in result.get("heldout", {}).items()}


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> str:
    start_app(cfg, "reward_model")
    if not cfg.reward.feedback_dir or not cfg.reward.sft_model:
        raise ValueError("set reward.feedback_dir and reward.sft_model (the SFT model folder)")
    out = run_reward_model(cfg, cfg.reward.sft_model, cfg.reward.feedback_dir)
    print(json.dumps(json.loads((out / "summary.json").read_text()), indent=2))
    return str(out)


if __name__ == "__main__":
    main()
