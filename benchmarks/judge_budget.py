"""At the same human budget, a taught judge or a reward model? Both learn from the same few
hundred human labels and are measured on the same held-out pairs.

    python benchmarks/judge_budget.py --run runs/default --budgets 200 500 1000 --seeds 0

``--run`` is a complete default run (SFT and feedback phases). For each budget N and seed the
gold set is N human pairwise labels of annotators 1-5 (one vote on one item each,
alignray/judges/teaching.py: the same labels for both learners):

- **taught judge**: the SFT model taught to answer the rubric's question (the judge phase,
  workflows/judge.py), its verdict both orders asked;
- **reward model**: the reward-model phase's trainer on the same votes (pairwise only, ties as
  two half pairs), as many passes over them as the judge makes.

Each is scored against the held-out annotators 6-10 (who label nothing here) on the feedback
phase's held-out pairs: agreement with their majority, with a 95% normal interval. Reference
rows: the SFT model as an untaught judge, and the default reward model trained on all 45,000
labels. Wall seconds per learner (teaching includes the judge's labelling before and after).
Phases complete in ``--workdir`` are reused. Prints the table; writes JSON (``--out``) and a PNG beside it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from algorithms import phase_inputs, save_with_chance_line  # noqa: E402


def with_interval(agreement: float, items: int) -> dict:
    half = 1.96 * float(np.sqrt(agreement * (1 - agreement) / max(items, 1)))
    return {"agreement": agreement, "ci_low": agreement - half, "ci_high": agreement + half, "items": items}


def reward_model_agreement(model_dir: Path, heldout: pd.DataFrame) -> dict:
    """A reward model against the held-out panel's majority on the held-out pairs."""
    from alignray.reward.evaluation import accuracy_against_votes
    from alignray.scoring.scorers import RewardModelScorer

    scorer = RewardModelScorer(str(model_dir))
    prompts = heldout["prompt"].tolist()
    reward_a, reward_b = scorer.score(prompts, heldout["response_a"].tolist()), scorer.score(prompts, heldout["response_b"].tolist())
    result = accuracy_against_votes(reward_a, reward_b, heldout["heldout_preference"] * heldout["heldout_votes"],
                                    heldout["heldout_votes"])
    return with_interval(result["accuracy"], result["items"])


def judge_row(cfg, inputs: dict) -> tuple[dict, dict]:
    """The judge taught on the budget (reused when complete): its row and the untaught one's."""
    from alignray.workflows.judge import run_judge

    out = run_judge(cfg, inputs["sft_model"], inputs["feedback_dir"])
    evaluation, summary = (json.loads((out / name).read_text()) for name in ("eval.json", "summary.json"))
    taught, untaught = (evaluation[k]["heldout_panel"] for k in ("taught", "untaught"))
    row = with_interval(taught["agreement_with_heldout_raters"], taught["items"]) | {
        "learner": "taught judge", "wall_s": summary["wall_time_s"], "folder": str(out),
        "calibration_agreement": evaluation["taught"]["calibration"]["agreement"]}
    return row, with_interval(untaught["agreement_with_heldout_raters"], untaught["items"])


def reward_model_row(cfg, inputs: dict, feedback, heldout: pd.DataFrame, workdir: Path, labels: int) -> dict:
    """The reward model trained on the same gold set (reused when its folder is complete)."""
    from alignray.core.artifacts import MODEL_DIR, SUMMARY_FILE
    from alignray.feedback.aggregate import build_training_tables
    from alignray.judges.teaching import gold_feedback, gold_set
    from alignray.workflows.common import is_complete, mark_complete
    from alignray.workflows.reward_model import train_normalize_evaluate

    out = workdir / f"reward-gold{labels}-seed{cfg.seed}"
    if not is_complete(out):
        out.mkdir(parents=True, exist_ok=True)
        tables = build_training_tables(gold_feedback(feedback, gold_set(feedback, labels, cfg.seed)),
                                       with_elo_targets=False)
        mark_complete(out, train_normalize_evaluate(tables.pairs, tables.pointwise, None, inputs["sft_model"], cfg, out))
    summary = json.loads((out / SUMMARY_FILE).read_text())
    return reward_model_agreement(out / MODEL_DIR, heldout) | {"learner": "reward model", "wall_s": summary["wall_s"],
                                                                "folder": str(out)}


def plot(rows: list[dict], references: list[dict], path: Path) -> None:
    """Agreement with the held-out panel against human labels, per learner, with the references."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, learner in enumerate(dict.fromkeys(r["learner"] for r in rows)):
        mine = sorted((r for r in rows if r["learner"] == learner), key=lambda r: r["labels"])
        ax.errorbar([r["labels"] for r in mine], [r["agreement"] for r in mine], capsize=3, marker="o", color=f"C{i}",
                    yerr=[[r["agreement"] - r["ci_low"] for r in mine], [r["ci_high"] - r["agreement"] for r in mine]],
                    label=learner)
    for j, ref in enumerate(references):
        ax.axhline(ref["agreement"], color=f"C{j + 2}", lw=0.8, ls=":", label=f"{ref['learner']}: {ref['agreement']:.2f}")
    ax.set_xscale("log")
    save_with_chance_line(fig, ax, path, "human labels (one vote on one pair each)", "agreement with annotators 6-10",
                          "Same human budget: taught judge or reward model (95% intervals)", legend_size=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "default")
    parser.add_argument("--budgets", nargs="+", type=int, default=[200, 500, 1000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=4, help="passes over the gold set, for both learners")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "rlaif")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "judge_budget.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from alignray.actors import runtime
    from alignray.core.artifacts import FEEDBACK_FILE, HELDOUT_PAIRS_FILE
    from alignray.core.machine import describe_machine, machine_info
    from alignray.feedback.schema import read_feedback
    from alignray.workflows.common import compose_app_config

    inputs = phase_inputs(args.run.resolve())
    feedback_dir = Path(inputs["feedback_dir"])
    feedback = read_feedback(feedback_dir / FEEDBACK_FILE, strict=False)[0]
    heldout = pd.read_parquet(feedback_dir / HELDOUT_PAIRS_FILE)
    workdir = args.workdir.resolve()
    rows = []
    started = time.monotonic()
    with runtime.ray_session(compose_app_config([f"workdir={workdir}"]).cluster):
        for seed in args.seeds:
            for labels in args.budgets:
                cfg = compose_app_config([f"workdir={workdir}", f"seed={seed}", "logger=none",
                                          f"teach_judge.labels={labels}", f"teach_judge.epochs={args.epochs}",
                                          f"reward_model.epochs={args.epochs}", "reward_model.max_steps=0"])
                judge, untaught = judge_row(cfg, inputs)
                reward = reward_model_row(cfg, inputs, feedback, heldout, workdir, labels)
                rows += [r | {"labels": labels, "seed": seed} for r in (judge, reward)]
                print(json.dumps(rows[-2:]), flush=True)
        default_rm = reward_model_agreement(Path(inputs["reward_model"]), heldout)
    references = [untaught | {"learner": "SFT model as an untaught judge", "labels": 0},
                  default_rm | {"learner": "reward model of --run (every label)", "labels": feedback.num_rows,
                                "folder": inputs["reward_model"]}]
    print(f"machine: {describe_machine(machine_info())}; {len(heldout)} held-out pairs, annotators 6-10")
    print(f"{'human labels':>12} {'seed':>4}  {'learner':<36} {'agreement [95% CI]':<22} {'wall s':>7}")
    for r in references + rows:
        print(f"{r['labels']:>12} {r.get('seed', '-'):>4}  {r['learner']:<36} {r['agreement']:.3f} "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] {r.get('wall_s', float('nan')):>7.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "references": references, "epochs": args.epochs,
                                    "inputs": inputs, "machine": machine_info(),
                                    "wall_s": round(time.monotonic() - started, 1)}, indent=2))
    plot(rows, references, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and its figure")


if __name__ == "__main__":
    main()
