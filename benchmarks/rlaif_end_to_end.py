"""RLAIF end to end: policies trained on AI feedback, judged by people.

    python benchmarks/rlaif_end_to_end.py --run runs/default --labels 500 --seeds 0 1

From the same SFT model with the same PPO settings (the default profile, ``--steps`` steps),
four sources of reward, every policy judged against the SFT model by the held-out annotators
6-10, who label nothing here:

1. ``people``: the default reward model, trained on all 45,000 human labels (its rows are the
   seed table's, ``--people-table``, where it has the seed with this reward model; run otherwise);
2. ``gold+taught``: a gold set of ``--labels`` human pairwise labels (alignray/judges/teaching.py)
   teaches the SFT model to judge (workflows/judge.py), which labels every other pairwise item;
   the reward model trains on the gold votes plus those labels;
3. ``gold+zero-shot``: the same, labelled by the untaught SFT model (the best zero-shot judge
   installable here, at chance); both judges are calibrated on the judge phase's calibration
   pairs (human pairs outside the gold set, their annotators' majority: those votes count as
   human labels too) and their labels weighted by the feedback phase's rule, max(0, 2a - 1),
   zero for a judge not better than chance;
4. ``taught-reward``: the taught judge as PPO's online reward (``ppo.reward.kind=judge``, each
   response against the SFT model's answer), no reward model.

The gold set and the judges are seeded with ``--data-seed``; ``--seeds`` are the PPO runs'
seeds. Per scenario and seed: human labels used, the judge's agreement with people, the reward
model's accuracy against the held-out panel, the win-rate with its 95% interval and the guards,
the seconds of labelling and of PPO. Phases complete in ``--workdir`` are reused, rows are saved
one by one. Prints the table; writes JSON (``--out``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from algorithms import phase_inputs, run_method  # noqa: E402
from judge_budget import reward_model_agreement  # noqa: E402

AI_JUDGE = "ai-judge"


def judge_labels(judge_model: str, feedback, gold, cfg) -> tuple[list[dict], dict]:
    """The judge's rows for every pairwise item outside the gold set, and their cost."""
    from alignray.actors.ai_labeller import label_pairs
    from alignray.feedback.ai_share import pairwise_items
    from alignray.feedback.rlaif import ai_feedback_rows

    gold_items = set(zip(*(gold.column(c).to_pylist() for c in ("prompt", "response_a", "response_b"))))
    items = [item for item in pairwise_items(feedback) if item not in gold_items]
    started = time.monotonic()
    rows = label_pairs(items, judge_model, batch_size=32, max_reply_tokens=cfg.teach_judge.max_reply_tokens,
                       rubric=cfg.teach_judge.rubric)
    seconds = time.monotonic() - started
    labelled = ai_feedback_rows(*zip(*items), [float(row["preference_a"]) for row in rows], annotator_id=AI_JUDGE)
    return labelled, {"labels": len(items), "label_s": round(seconds, 1), "s_per_label": round(seconds / len(items), 4)}


def calibrated_weight(calibration: dict, significance: float) -> dict:
    """The feedback phase's rule: a judge not better than chance on the calibration pairs is
    weighted zero, any other by max(0, 2a - 1) of its agreement a there."""
    from alignray.judges.calibration import agreement_weight
    trusted = calibration["items"] > 0 and calibration["p_value"] < significance
    return calibration | {"better_than_chance": trusted,
                          "weight": agreement_weight(calibration["agreement"]) if trusted else 0.0}


def gold_plus_judge_reward_model(name: str, judge_model: str, calibration: dict, inputs: dict, feedback, gold,
                                 heldout_pairs, cfg, workdir: Path) -> dict:
    """The reward model on the gold votes plus the judge's weighted labels (reused when complete)."""
    from alignray.core.artifacts import MODEL_DIR, SUMMARY_FILE
    from alignray.feedback.aggregate import build_training_tables
    from alignray.feedback.schema import feedback_table
    import pyarrow as pa
    from alignray.judges.teaching import gold_feedback
    from alignray.workflows.common import is_complete, mark_complete
    from alignray.workflows.reward_model import train_normalize_evaluate

    out = workdir / f"reward-{name}"
    if not is_complete(out):
        out.mkdir(parents=True, exist_ok=True)
        rows, cost = judge_labels(judge_model, feedback, gold, cfg)
        calibration = calibrated_weight(calibration, cfg.feedback.ai_judge.calibration.significance)
        table = pa.concat_tables([gold_feedback(feedback, gold), feedback_table(rows)])
        tables = build_training_tables(table, {AI_JUDGE: calibration["weight"]}, with_elo_targets=False)
        result = train_normalize_evaluate(tables.pairs, tables.pointwise, None, inputs["sft_model"], cfg, out)
        mark_complete(out, result | {"judge": judge_model, "calibration": calibration, "labelling": cost,
                                     "counts": tables.counts})
    summary = json.loads((out / SUMMARY_FILE).read_text())
    return {"reward_model": str(out / MODEL_DIR), "reward_model_agreement": reward_model_agreement(out / MODEL_DIR,
                                                                                                   heldout_pairs),
            "judge_calibration": summary["calibration"], "labelling": summary["labelling"],
            "reward_model_wall_s": summary["wall_s"]}


def scenario_rows(args, inputs: dict, feedback, heldout_pairs) -> dict[str, dict]:
    """Per scenario: the reward (a model or the judge) and what was measured before PPO."""
    from alignray.judges.teaching import gold_set, votes_on
    from alignray.workflows.common import compose_app_config
    from alignray.workflows.judge import calibration_set, run_judge

    cfg = compose_app_config([f"workdir={args.workdir}", f"seed={args.data_seed}", "logger=none",
                              f"teach_judge.labels={args.labels}"])
    judge_dir = run_judge(cfg, inputs["sft_model"], inputs["feedback_dir"])
    evaluation = json.loads((judge_dir / "eval.json").read_text())
    gold = gold_set(feedback, args.labels, args.data_seed)
    agreement = {k: evaluation[k]["heldout_panel"]["agreement_with_heldout_raters"] for k in ("taught", "untaught")}
    calibration = {k: evaluation[k]["calibration"] for k in ("taught", "untaught")}
    # the calibration pairs are human too: their votes count with the gold set's
    labels = args.labels + votes_on(feedback, calibration_set(feedback, gold, cfg.teach_judge, cfg.seed))
    taught_model = str(judge_dir / "model")
    return {
        "people": {"human_labels": feedback.num_rows, "reward_model": inputs["reward_model"],
                   "reward_model_agreement": reward_model_agreement(Path(inputs["reward_model"]), heldout_pairs)},
        "gold+taught": {"human_labels": labels, "judge_agreement": agreement["taught"],
                        **gold_plus_judge_reward_model("gold-taught", taught_model, calibration["taught"], inputs,
                                                       feedback, gold, heldout_pairs, cfg, args.workdir)},
        "gold+zero-shot": {"human_labels": labels, "judge_agreement": agreement["untaught"],
                           **gold_plus_judge_reward_model("gold-zero-shot", inputs["sft_model"], calibration["untaught"],
                                                          inputs, feedback, gold, heldout_pairs, cfg, args.workdir)},
        "taught-reward": {"human_labels": args.labels, "judge_agreement": agreement["taught"], "reward_model": None,
                          "overrides": ("ppo.reward.kind=judge", f"ppo.reward.judge.model_path={taught_model}",
                                        f"ppo.reward.judge.max_reply_tokens={cfg.teach_judge.max_reply_tokens}")},
    }


def people_rows(path: Path, reward_model: str) -> list[dict]:
    """The seed table's rows (benchmarks/ppo_default_seeds.py) of the default profile with this
    reward model: the same SFT model, settings and PPO seeds as scenario ``people``."""
    if not path.exists():
        return []
    rows = [r for r in json.loads(path.read_text())["rows"]
            if Path(r["reward_model_path"]).resolve() == Path(reward_model).resolve() and r["profile"] == "lean"]
    return [r | {"scenario": "people", "from": str(path), "human_labels": 45_000} for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "default")
    parser.add_argument("--labels", type=int, default=500)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--scenarios", nargs="+", default=["people", "gold+taught", "gold+zero-shot", "taught-reward"])
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "rlaif")
    parser.add_argument("--people-table", type=Path,
                        default=REPO / "benchmarks" / "results" / "ppo_default_seeds.json")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rlaif_end_to_end.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.workdir = args.workdir.resolve()
    from alignray.actors import runtime
    from alignray.core.artifacts import FEEDBACK_FILE, HELDOUT_PAIRS_FILE
    from alignray.core.machine import describe_machine, machine_info
    from alignray.feedback.schema import read_feedback
    from alignray.workflows.common import compose_app_config

    inputs = phase_inputs(args.run.resolve())
    feedback_dir = Path(inputs["feedback_dir"])
    feedback = read_feedback(feedback_dir / FEEDBACK_FILE, strict=False)[0]
    heldout_pairs = pd.read_parquet(feedback_dir / HELDOUT_PAIRS_FILE)
    table = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    table += [row for row in people_rows(args.people_table, inputs["reward_model"]) if row["seed"] in args.seeds
              and "people" in args.scenarios and ("people", row["seed"]) not in {(r["scenario"], r["seed"]) for r in table}]
    done = {(r["scenario"], r["seed"]) for r in table}
    with runtime.ray_session(compose_app_config([f"workdir={args.workdir}"]).cluster):
        scenarios = scenario_rows(args, inputs, feedback, heldout_pairs)
        table = [{k: v for k, v in scenarios[r["scenario"]].items() if k != "overrides"} | r for r in table]
        for seed in args.seeds:  # every scenario's first seed first: an interrupted table has them all
            for name in args.scenarios:
                scenario = scenarios[name]
                if (name, seed) in done:
                    continue
                row = run_method("ppo", inputs | {"reward_model": scenario["reward_model"]}, args.workdir, args.steps, seed,
                                 tuple(scenario.get("overrides", ())), name=name)
                table.append({k: v for k, v in scenario.items() if k != "overrides"} | row
                             | {"scenario": name, "seed": seed})
                print(json.dumps(table[-1]), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"rows": table}, indent=2))
    print(f"machine: {describe_machine(machine_info())}; PPO {args.steps} steps; judged by annotators 6-10")
    print(f"{'scenario':<15} {'seed':>4} {'labels':>7} {'judge agr.':>10} {'RM agr.':>8} {'win-rate [95% CI]':<22} "
          f"{'KL':>5} {'PPO s':>6}  verdict")
    for r in table:
        rm = r.get("reward_model_agreement", {}).get("agreement", float("nan"))
        print(f"{r['scenario']:<15} {r['seed']:>4} {r['human_labels']:>7} {r.get('judge_agreement', float('nan')):>10.3f} "
              f"{rm:>8.3f} {r['win_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]   {r['kl_per_response']:>5.2f} "
              f"{r['wall_s']:>6.0f}  {r['verdict']}")
    args.out.write_text(json.dumps({"rows": table, "labels": args.labels, "steps": args.steps, "inputs": inputs,
                                    "machine": machine_info()}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
