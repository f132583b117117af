"""Where the reward model's accuracy goes: variants of the reward-model phase, trained on one
run's feedback, each scored against the held-out annotators (6-10 on the embedded default).

    python benchmarks/reward_model_quality.py --run runs/default          # every variant
    python benchmarks/reward_model_quality.py --run runs/default --variants baseline steps_1000

``--run`` is a workdir whose SFT and feedback phases are complete (``python -m
alignray.workflows.reward_model`` makes one); ``--sft-model`` and ``--feedback-dir`` name them
instead. Each variant is the reward-model phase itself (``train_normalize_evaluate`` of
workflows/reward_model.py: Ray Train, DeepSpeed, normalisation, evaluation) with the old
default's settings (``BASELINE``) plus the variant's overrides, one variant at a time on one
Ray instance; the current default is the variant ``by_prompt_batch_128_lr_1e-3_150_pointwise_2``.
``train_s`` is the phase's training time (Ray Train start included); the 1-minute load
average before and after is recorded because the machine may be shared.

The reference row ``annotators_1_5`` is no model: it scores each held-out response with the
mean lexicon score of the training annotators 1-5, exactly what their feedback expresses,
so it is what a reward model could learn from that feedback.

Prints a table; writes each result as it comes to ``--out`` (a variant already there is
skipped unless ``--rerun``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the repository's packages (actors, workflows) first
PANEL = "heldout_annotators"

# name -> (what it changes, Hydra overrides of the old default reward_model config). Every
# key a variant or the current default changes is pinned here, so variants stay comparable
# whatever the default is.
BASELINE = ["reward_model.pooling=last", "reward_model.max_steps=300", "reward_model.lr=3e-4",
            "reward_model.votes=each", "reward_model.batch_size=32", "reward_model.eval_every=100",
            "reward_model.epochs=1", "reward_model.pointwise_weight=0.5", "reward_model.warmup_steps=10",
            "reward_model.batch_by_prompt=false"]
MERGED = ["reward_model.votes=merged"]
# merged votes, a batch's rows from whole prompts: each text once per epoch, about
BY_PROMPT = [*MERGED, "reward_model.batch_by_prompt=true", "reward_model.epochs=100"]
VARIANTS = {
    "baseline": ("the default before this benchmark: last-token head, 300 steps of 32, lr 3e-4", []),
    "sum_pooling": ("head on every token, summed", ["reward_model.pooling=sum"]),
    "sum_pooling_150": ("sum pooling, 150 steps", ["reward_model.pooling=sum", "reward_model.max_steps=150"]),
    "sum_pooling_lr_1e-3": ("sum pooling, lr 1e-3", ["reward_model.pooling=sum", "reward_model.lr=1e-3"]),
    "sum_pooling_frozen": ("sum pooling, SFT backbone frozen, head only, lr 1e-2",
                           ["reward_model.pooling=sum", "reward_model.freeze_backbone=true", "reward_model.lr=1e-2"]),
    "steps_1000": ("3.3x the steps", ["reward_model.max_steps=1000"]),
    "lr_1e-3": ("lr 1e-3", ["reward_model.lr=1e-3"]),
    "lr_1e-3_steps_1000": ("lr 1e-3, 1000 steps", ["reward_model.lr=1e-3", "reward_model.max_steps=1000"]),
    "batch_128": ("4x the batch (4x the examples seen)", ["reward_model.batch_size=128"]),
    "batch_128_lr_1e-3": ("batch 128, lr 1e-3", ["reward_model.batch_size=128", "reward_model.lr=1e-3"]),
    "pairwise_only": ("no pointwise loss", ["reward_model.pointwise_weight=0"]),
    "pointwise_1": ("pointwise weight 1", ["reward_model.pointwise_weight=1"]),
    "margin_1": ("Bradley-Terry margin 1 x strength", ["reward_model.margin=1"]),
    "majority_pairs": ("one pair per item, the majority's, instead of one per annotator vote (pointwise merged)",
                       ["reward_model.votes=majority"]),
    "merged": ("identical votes merged into one row (the same loss, ~7x fewer rows)", MERGED),
    "merged_eval_end": ("merged, held-out loss at the end only", [*MERGED, "reward_model.eval_every=0"]),
    "merged_lr_1e-3": ("merged, lr 1e-3", [*MERGED, "reward_model.lr=1e-3"]),
    "merged_steps_600": ("merged, 600 steps", [*MERGED, "reward_model.max_steps=600"]),
    "merged_pairwise_only": ("merged, no pointwise loss", [*MERGED, "reward_model.pointwise_weight=0"]),
    "merged_pointwise_2": ("merged, pointwise weight 2", [*MERGED, "reward_model.pointwise_weight=2"]),
    "merged_sum_pooling": ("merged, sum pooling", [*MERGED, "reward_model.pooling=sum"]),
    "by_prompt": ("merged, batches of whole prompts (texts computed once), 300 steps of 32 rows", BY_PROMPT),
    "by_prompt_batch_128": ("merged, whole prompts, 300 steps of 128 rows",
                            [*BY_PROMPT, "reward_model.batch_size=128"]),
    "by_prompt_batch_128_lr_1e-3": ("merged, whole prompts, 300 steps of 128 rows, lr 1e-3",
                                    [*BY_PROMPT, "reward_model.batch_size=128", "reward_model.lr=1e-3"]),
    "by_prompt_batch_128_600": ("merged, whole prompts, 600 steps of 128 rows",
                                [*BY_PROMPT, "reward_model.batch_size=128", "reward_model.max_steps=600"]),
    "by_prompt_batch_128_epoch_1": ("merged, whole prompts, one epoch of 128 rows (61 steps)",
                                    [*BY_PROMPT, "reward_model.batch_size=128", "reward_model.epochs=1"]),
    "by_prompt_batch_128_epochs_2": ("merged, whole prompts, two epochs of 128 rows",
                                     [*BY_PROMPT, "reward_model.batch_size=128", "reward_model.epochs=2"]),
    "minilm_by_prompt_epoch_1": ("MiniLM fine-tuned, lr 5e-5, merged, whole prompts, one epoch of 128 rows",
                                 [*BY_PROMPT, "reward_model.batch_size=128", "reward_model.epochs=1",
                                  "reward_model.backbone=minilm", "reward_model.lr=5e-5"]),
    "by_prompt_batch_128_lr_1e-3_150": ("merged, whole prompts, 150 steps of 128 rows, lr 1e-3",
                                        [*BY_PROMPT, "reward_model.batch_size=128", "reward_model.lr=1e-3",
                                         "reward_model.max_steps=150"]),
    "by_prompt_batch_128_lr_1e-3_150_pointwise_2": ("the new default with pointwise weight 2",
                                                    [*BY_PROMPT, "reward_model.batch_size=128", "reward_model.lr=1e-3",
                                                     "reward_model.max_steps=150", "reward_model.pointwise_weight=2"]),
    "by_prompt_batch_64_600": ("merged, whole prompts, 600 steps of 64 rows",
                               [*BY_PROMPT, "reward_model.batch_size=64", "reward_model.max_steps=600"]),
    "by_prompt_batch_128_sum": ("merged, whole prompts, 300 steps of 128 rows, sum pooling",
                                [*BY_PROMPT, "reward_model.batch_size=128", "reward_model.pooling=sum"]),
    # Longer is no variant: prompt + response is at most 44 SFT tokens on the default run, and
    # batches are padded to their longest text, so 128 computes exactly what 64 does.
    "max_length_32": ("32 tokens (cuts the prompt's start of 15% of texts)", ["reward_model.max_length=32"]),
    "frozen_head": ("SFT backbone frozen, head only, lr 1e-2", ["reward_model.freeze_backbone=true",
                                                                "reward_model.lr=1e-2"]),
    "minilm_frozen": ("MiniLM frozen, head only, lr 1e-2", ["reward_model.backbone=minilm",
                                                            "reward_model.freeze_backbone=true",
                                                            "reward_model.lr=1e-2"]),
    "minilm": ("MiniLM fine-tuned, lr 5e-5", ["reward_model.backbone=minilm", "reward_model.lr=5e-5"]),
    "minilm_lr_1e-4": ("MiniLM fine-tuned, lr 1e-4", ["reward_model.backbone=minilm", "reward_model.lr=1e-4"]),
    "ensemble_3": ("3 members, every example each", ["reward_model.ensemble_size=3"]),
    "ensemble_3_split": ("3 members, a third of the prompts each", ["reward_model.ensemble_size=3",
                                                                   "reward_model.ensemble_data=split"]),
    "sum_pooling_ensemble_3": ("sum pooling, 3 members", ["reward_model.pooling=sum", "reward_model.ensemble_size=3"]),
}


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def interval(accuracy: float, items: int) -> list[float]:
    """Normal-approximation 95% interval of an accuracy over ``items``."""
    half = 1.96 * float(np.sqrt(accuracy * (1 - accuracy) / max(items, 1)))
    return [round(accuracy - half, 4), round(accuracy + half, 4)]


def phase_inputs(args) -> tuple[str, Path]:
    """The SFT model and the feedback folder: given, or the complete phases of ``--run``."""
    def complete(pattern: str) -> Path:
        found = sorted((p for p in Path(args.run).glob(pattern) if (p / "DONE").exists()),
                       key=lambda p: p.stat().st_mtime)
        if not found:
            raise SystemExit(f"no complete {pattern} in {args.run}: run `python -m alignray.workflows.reward_model` first")
        return found[-1]

    # Absolute: Ray Train workers run in another working directory.
    sft = Path(args.sft_model) if args.sft_model else complete("sft-*") / "model"
    return str(sft.resolve()), (Path(args.feedback_dir) if args.feedback_dir else complete("feedback-*")).resolve()


def annotator_reference(heldout) -> dict:
    """Accuracy of the training annotators' own mean lexicon score (no model)."""
    from alignray.feedback.simulated import TRAINING_RATERS, judge_scores
    from alignray.reward.evaluation import evaluate_against_panels
    from alignray.reward.heldout import evaluation_panels
    panels = evaluation_panels(heldout, {f"rater{r}" for r in TRAINING_RATERS})
    panels = {name: panels[name] for name in (PANEL, "training_annotators")}
    figures, _ = evaluate_against_panels(lambda prompts, responses: judge_scores(responses, TRAINING_RATERS),
                                         heldout, panels)
    return {"heldout_accuracy": figures[PANEL]["accuracy"], "items": figures[PANEL]["items"],
            "training_accuracy": figures["training_annotators"]["accuracy"]}


def variant_row(description: str, overrides: list[str], result: dict, load: list[float]) -> dict:
    """A variant's figures from a result of ``train_normalize_evaluate`` (eval.json's "model")."""
    figures = result["heldout"][PANEL]
    return {"description": description, "overrides": overrides, "pairs": result["pairs"],
            "examples": result.get("examples"),
            "heldout_accuracy": figures["accuracy"], "ci95": interval(figures["accuracy"], figures["items"]),
            "items": figures["items"], "training_accuracy": result["heldout"]["training_annotators"]["accuracy"],
            "calibration_error": figures["calibration_error"], "train_s": result["train_s"],
            "wall_s": result["wall_s"], "final_heldout_loss": result["final_heldout_loss"],
            "load_1min_before_after": load,
            **{key: result[key] for key in ("member_heldout_accuracies", "mean_disagreement") if key in result}}


def run_variant(name: str, sft_model: str, feedback_dir: Path, heldout, scratch: Path) -> dict:
    from alignray.workflows.common import compose_app_config
    from alignray.reward.dataset import read_training_tables
    from alignray.reward.model import resolve_backbone
    from alignray.workflows.reward_model import train_normalize_evaluate
    description, overrides = VARIANTS[name]
    # Variants change the old default, whatever the current one is.
    merged = dict(item.split("=", 1) for item in [*BASELINE, *overrides])
    cfg = compose_app_config([f"workdir={scratch}", *(f"{key}={value}" for key, value in merged.items())])
    pairs, pointwise = read_training_tables(feedback_dir)
    load_before = os.getloadavg()[0]
    result = train_normalize_evaluate(pairs, pointwise, heldout, resolve_backbone(cfg.reward_model.backbone,
                                                                                  sft_model), cfg, scratch / name)
    return variant_row(description, overrides, result, [round(load_before, 2), round(os.getloadavg()[0], 2)])


def print_table(results: dict) -> None:
    print(f"\n{'variant':<22}{'held-out acc':>13}{'95% interval':>18}{'train acc':>10}{'train s':>9}"
          f"{'acc gain/min':>13}")
    base = results.get("baseline")
    for name, row in results.items():
        gain = ""
        if base and name != "baseline" and "train_s" in row:
            gain = f"{(row['heldout_accuracy'] - base['heldout_accuracy']) / (row['train_s'] / 60):+.3f}"
        ci = "-" if "ci95" not in row else f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]"
        print(f"{name:<22}{row['heldout_accuracy']:>13.3f}{ci:>18}{row.get('training_accuracy', float('nan')):>10.3f}"
              f"{row.get('train_s', float('nan')):>9.1f}{gain:>13}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=str(REPO / "runs" / "default"))
    parser.add_argument("--sft-model", default="")
    parser.add_argument("--feedback-dir", default="")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "reward_model_quality.json"))
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("--baseline-phase", default="", help="a complete reward phase folder of the old default "
                        "(python -m alignray.workflows.reward_model at the baseline settings): its figures are the baseline row")
    parser.add_argument("--baseline-figures", default="", help='or "heldout training train_s wall_s" of the old '
                        "default measured elsewhere on the same feedback (recorded as given, with --baseline-source)")
    parser.add_argument("--baseline-source", default="")
    args = parser.parse_args()

    from alignray.actors import runtime
    from alignray.workflows.common import compose_app_config
    from alignray.core.artifacts import HELDOUT_FEEDBACK_FILE
    from alignray.feedback.schema import read_feedback
    sft_model, feedback_dir = phase_inputs(args)
    heldout = read_feedback(feedback_dir / HELDOUT_FEEDBACK_FILE)[0]
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report |= {"cpu": cpu_name(), "cores": os.cpu_count(), "feedback_dir": str(feedback_dir), "sft_model": sft_model}
    results = report.setdefault("results", {})
    results["annotators_1_5"] = annotator_reference(heldout) | {"description": "no model: annotators 1-5's own "
                                                                               "mean lexicon score"}
    if args.baseline_phase:
        phase = json.loads((Path(args.baseline_phase) / "eval.json").read_text())["model"]
        results["baseline"] = variant_row(VARIANTS["baseline"][0], [], phase, []) | {
            "command": f"python -m alignray.workflows.reward_model {' '.join(BASELINE)}  (the phase {args.baseline_phase})"}
    if args.baseline_figures:
        heldout_acc, training_acc, train_s, wall_s = (float(x) for x in args.baseline_figures.split())
        results["baseline"] = {"description": VARIANTS["baseline"][0], "overrides": [], "heldout_accuracy": heldout_acc,
                               "training_accuracy": training_acc, "train_s": train_s, "wall_s": wall_s,
                               "command": args.baseline_source}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rm-quality-") as scratch, \
            runtime.ray_session(compose_app_config([]).cluster):
        for name in args.variants:
            if name in results and not args.rerun:
                print(f"{name}: measured already (--rerun to measure again)")
                continue
            started = time.monotonic()
            results[name] = run_variant(name, sft_model, feedback_dir, heldout, Path(scratch))
            results[name]["command"] = f"python benchmarks/reward_model_quality.py --variants {name} --rerun"
            print(f"{name}: held-out accuracy {results[name]['heldout_accuracy']:.3f}, train "
                  f"{results[name]['train_s']:.0f} s ({time.monotonic() - started:.0f} s in all)", flush=True)
            out.write_text(json.dumps(report, indent=2))
    out.write_text(json.dumps(report, indent=2))
    print_table(results)
    print(f"\n{report['cpu']}, {report['cores']} cores; results in {out}")


if __name__ == "__main__":
    main()
