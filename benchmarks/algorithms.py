"""PPO, GRPO, RLOO, REINFORCE++ and DPO on the embedded default, on one table.

    python benchmarks/algorithms.py --run runs/default                   # every method, 80 steps
    python benchmarks/algorithms.py --run runs/default --steps 30 --methods ppo grpo dpo

``--run`` is a workdir whose SFT, feedback and reward-model phases are complete (the
default run, ``bash scripts/run.sh``): every method starts from the same SFT model; the
online methods climb the same reward model, with the same number of rollouts (``--steps``
steps of 64 responses: PPO and REINFORCE++ answer 64 prompts once, GRPO and RLOO 16 prompts
4 times, their presets in conf/experiment/); DPO trains on the same feedback pairs the
reward model was trained on (its preset: 300 steps of 32 pairs, about a quarter of one
pass). Each method's policy is then judged by the held-out annotators 6-10 against the SFT
model on the same held-out prompts (the evaluation phase, workflows/evaluate.py): win-rate
with its 95% interval, KL(policy || SFT) per response, and the guards' verdict.

Each phase runs in-process on one Ray instance, into ``--workdir`` (phases complete for the
same settings are reused, so a second call only adds what is missing). ``wall_s`` is the
method's training phase; the 1-minute load average is recorded because the machine may be
shared. Prints a table; writes JSON (``--out``) and a PNG beside it. When ``--out`` already
holds rows measured from the same inputs, steps and seed, the methods not run this time keep
their rows (so ``--methods dpo`` adds DPO's row to an earlier table). ``--reward-model``
pins the reward model when ``--run`` holds several (the newest complete one otherwise).
``--overrides`` with ``--name`` adds a variant of one method as a row of its own, e.g. GRPO
at a KL matched to PPO's: ``--methods grpo --overrides ppo.kl.coef=0.2 --name grpo_kl0.2``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# method -> (its preset in conf/experiment/, "online" | "offline")
METHODS = {"ppo": ("cpu_default", "online"), "grpo": ("grpo", "online"), "rloo": ("rloo", "online"),
           "reinforce_pp": ("reinforce_pp", "online"), "dpo": ("dpo", "offline")}
RESPONSES_PER_STEP = 64


def phase_inputs(run: Path, reward_model: Path | None = None) -> dict[str, str]:
    """The SFT model, feedback folder and reward model of a complete default run."""
    from alignray.core.artifacts import MODEL_DIR
    from alignray.workflows.common import is_complete

    def newest(prefix: str) -> Path:
        done = sorted((p for p in run.glob(f"{prefix}-*") if is_complete(p)), key=lambda p: p.stat().st_mtime)
        if not done:
            raise SystemExit(f"{run} has no complete {prefix}-* phase: run the default pipeline there first")
        return done[-1]

    return {"sft_model": str(newest("sft") / MODEL_DIR), "feedback_dir": str(newest("feedback")),
            "reward_model": str(reward_model.resolve() if reward_model else newest("reward") / MODEL_DIR)}


def method_config(method: str, workdir: Path, steps: int, seed: int, overrides: tuple[str, ...] = ()):
    from alignray.workflows.common import compose_app_config
    preset, _ = METHODS[method]
    cfg = compose_app_config([f"experiment={preset}", f"workdir={workdir}", f"seed={seed}", f"ppo.steps={steps}",
                              "logger=none", *overrides])
    ppo = cfg.ppo
    if METHODS[method][1] == "online" and ppo.prompts_per_step * ppo.samples_per_prompt != RESPONSES_PER_STEP:
        raise SystemExit(f"{method}: {ppo.prompts_per_step} x {ppo.samples_per_prompt} responses a step, "
                         f"not {RESPONSES_PER_STEP}: the methods would not see the same number of rollouts")
    return cfg


def run_method(method: str, inputs: dict[str, str], workdir: Path, steps: int, seed: int,
               overrides: tuple[str, ...] = (), name: str | None = None) -> dict:
    from alignray.core.artifacts import EVAL_FILE, MODEL_DIR, POLICY_DIR, SUMMARY_FILE
    from alignray.workflows.dpo import run_dpo
    from alignray.workflows.evaluate import run_evaluation
    from alignray.workflows.ppo import run_ppo

    cfg = method_config(method, workdir, steps, seed, overrides)
    started, load = time.monotonic(), os.getloadavg()[0]
    if METHODS[method][1] == "online":
        out = run_ppo(cfg, inputs["sft_model"], inputs["reward_model"])
        policy = out / POLICY_DIR
    else:
        out = run_dpo(cfg, inputs["sft_model"], inputs["feedback_dir"])
        policy = out / MODEL_DIR
    summary = json.loads((out / SUMMARY_FILE).read_text())
    wall_s = summary.get("wall_s", summary.get("wall_time_s", time.monotonic() - started))
    evaluation = json.loads((run_evaluation(cfg, inputs["sft_model"], str(policy)) / EVAL_FILE).read_text())
    budget = (f"{steps} steps x {RESPONSES_PER_STEP} responses" if METHODS[method][1] == "online"
              else f"{summary['steps']} steps x {summary['global_batch_size']} pairs")
    return {"method": name or method, "preset": METHODS[method][0], "overrides": list(overrides),
            "budget": budget, "phase_dir": str(out),
            "win_rate": evaluation["win_rate"], "ci_low": evaluation["ci_low"], "ci_high": evaluation["ci_high"],
            "kl_per_response": evaluation["mean_kl"], "verdict": evaluation["verdict"],
            "preferred_with_guards": evaluation["preferred_with_guards"],
            "mean_words": evaluation["mean_words"]["ppo"], "wall_s": round(float(wall_s), 1),
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}


def earlier_rows(path: Path, inputs: dict[str, str], steps: int, seed: int) -> list[dict]:
    """The rows of an earlier result file measured from the same inputs, steps and seed."""
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    same_inputs = {k: str(Path(v).resolve()) for k, v in earlier.get("inputs", {}).items()} == inputs
    if not same_inputs or (earlier.get("steps"), earlier.get("seed")) != (steps, seed):
        print(f"{path}: measured from other inputs, steps or seed; its rows are replaced", flush=True)
        return []
    return earlier["methods"]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, row in enumerate(rows):
        ax.errorbar(row["kl_per_response"], row["win_rate"], fmt="o",
                    yerr=[[row["win_rate"] - row["ci_low"]], [row["ci_high"] - row["win_rate"]]], capsize=3,
                    label=row["method"], color=f"C{i}")
    save_with_chance_line(fig, ax, path, "KL(policy || SFT) per response (nats)", "win-rate vs SFT (held-out annotators)",
                          "Methods on the embedded default (95% intervals)")


def save_with_chance_line(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend_size: int = 8) -> None:
    """A figure of shares: the chance line at 0.5, its labels and legend, saved as PNG and closed."""
    import matplotlib.pyplot as plt
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "default")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=80, help="online methods' steps (64 responses each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "algorithms")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "algorithms.json")
    parser.add_argument("--reward-model", type=Path, help="a reward model folder of --run (default: the newest)")
    parser.add_argument("--overrides", nargs="+", default=[], help="config overrides on top of the presets")
    parser.add_argument("--name", help="the row's name with --overrides (one method), e.g. grpo_kl0.2")
    args = parser.parse_args()
    if args.overrides and (len(args.methods) != 1 or not args.name):
        parser.error("--overrides makes a variant of one method: give one --methods and a --name for its row")
    from alignray.actors import runtime
    from alignray.core.machine import describe_machine, machine_info
    inputs = phase_inputs(args.run.resolve(), args.reward_model)
    rows = {row["method"]: row for row in earlier_rows(args.out, inputs, args.steps, args.seed)}
    with runtime.ray_session(method_config("ppo", args.workdir, args.steps, args.seed).cluster):
        for method in args.methods:
            row = run_method(method, inputs, args.workdir.resolve(), args.steps, args.seed, tuple(args.overrides),
                             args.name)
            rows[row["method"]] = row
            print(json.dumps(row), flush=True)
    presets = [preset for preset, _ in METHODS.values()]
    rows = sorted(rows.values(), key=lambda row: presets.index(row["preset"]))  # a variant after its method
    machine = machine_info()
    print(f"machine: {describe_machine(machine)}; inputs: {inputs}")
    print(f"{'method':<13} {'budget':<24} {'win-rate [95% CI]':<22} {'KL/resp':>8} {'words':>6} {'wall s':>7}  verdict")
    for r in rows:
        print(f"{r['method']:<13} {r['budget']:<24} {r['win_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
              f"   {r['kl_per_response']:>8.2f} {r['mean_words']:>6.1f} {r['wall_s']:>7.0f}  {r['verdict']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"inputs": inputs, "steps": args.steps, "seed": args.seed, "machine": machine,
                                    "methods": rows}, indent=2))
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
