"""A real chat model on real preference data, every phase: does each phase learn, and in what time.

    bash scripts/setup.sh smollm2                              # SmolLM2-135M-Instruct, once
    python benchmarks/hh_smollm2.py                            # experiment=hh_smollm2_cpu, ~1 h on 2 cores
    python benchmarks/hh_smollm2.py --experiment hh_smollm2_one_gpu

The shared HH-RLHF file (``../shared/data/hh-rlhf-harmless-base-test-a.jsonl.gz``: 1,534 pairs
of Anthropic's harmless-base test split, MIT licence) goes through the importer split by prompt,
half held out (``--heldout-fraction 0.5``: each prompt's side is decided by a hash of its
text). The first half trains SFT, the reward model and PPO through the pipeline
(``alignray run experiment=...``); the held-out half gives the evaluation's prompts and pairs,
and trains a **gold reward model** (the same settings, from the same SFT model) that judges the
PPO policy against the SFT model afterwards (``alignray evaluate eval.judge.kind=reward_model``).

What each phase learned, all on data it did not train on:
- SFT: held-out loss before and after (the phase's own held-out demonstrations);
- reward model: accuracy on the held-out half's pairs (the response people chose scores higher),
  and the gold model's on the training half's;
- PPO: the reward model's mean reward over the first and the last steps, the KL it paid;
- evaluation: implicit-reward accuracy on the held-out pairs (``eval.judge.kind=pairs``) and
  the gold reward model's win-rate of PPO against SFT, each with its 95% interval, and the gold
  model's margin at equal length (its score margin fitted against the answers' difference in words).
Prints a table; writes JSON (``--out``). A phase's seconds are those of the pipeline run that
built its folder (a rerun reuses it).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from alignray.core.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from hh_reward_model import SHARED_HH, convert, heldout_accuracy  # noqa: E402

ALIGNRAY = [sys.executable, "-m", "alignray.workflows.cli"]


def alignray(command: str, *overrides: str) -> tuple[float, str]:
    """Run one alignray command as a user would, its output shown as it comes: (wall seconds, output)."""
    started, lines = time.monotonic(), []
    with subprocess.Popen([*ALIGNRAY, command, *overrides], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as process:
        for line in process.stdout:
            sys.stdout.write(line)
            lines.append(line)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, ["alignray", command, *overrides])
    return round(time.monotonic() - started, 1), "".join(lines)


def phase_folder(output: str, prefix: str) -> Path:
    """The folder a command built or reused for its phase ``prefix``: the last that its log names
    (the phase's inputs are resolved, and logged, before it)."""
    return Path(re.findall(rf"phase {prefix}: (?:building|reusing) (\S+)", output)[-1])


def line_fit(x, y) -> dict:
    """Least squares ``y = intercept + slope x``, each with its 95% interval (normal approximation)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    sigma2 = (y - (slope * x + intercept)).var(ddof=2) if len(y) > 2 else float("nan")
    sxx = ((x - x.mean()) ** 2).sum()
    errors = {"slope": np.sqrt(sigma2 / sxx), "intercept": np.sqrt(sigma2 * (1 / len(x) + x.mean() ** 2 / sxx))}
    return {name: {"value": round(float(v), 4), "ci95": [round(float(v - 1.96 * errors[name]), 4),
                                                        round(float(v + 1.96 * errors[name]), 4)]}
            for name, v in (("slope", slope), ("intercept", intercept))}


def trend(values: list[float]) -> dict:
    """The slope per step: a rise is measured when its interval lies above zero."""
    fit = line_fit(np.arange(len(values)), values)["slope"]
    return {"slope_per_step": fit["value"], "ci95": fit["ci95"]}


def length_controlled(samples: Path) -> dict:
    """The judge's margin of PPO's answer over SFT's, fitted against their difference in words:
    the intercept is the margin at equal length, the slope what each extra word is worth to the
    judge (``samples.jsonl``: the first ``eval.samples_to_write`` prompts)."""
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    extra_words = [len(r["ppo"].split()) - len(r["sft"].split()) for r in rows]
    fit = line_fit(extra_words, [r["judge_ppo"] - r["judge_sft"] for r in rows])
    return {"prompts": len(rows), "margin_at_equal_length": fit["intercept"], "margin_per_extra_word": fit["slope"],
            "mean_extra_words": round(float(np.mean(extra_words)), 2)}


def ppo_learning(ppo: Path, window: int = 3) -> dict:
    """The reward model's mean raw reward over the first and the last ``window`` steps, and its
    trend over every step."""
    steps = [m for m in read_metrics(ppo / "metrics.jsonl") if "reward_raw" in m]
    first, last = steps[:window], steps[-window:]
    mean = lambda rows, key: round(float(np.mean([r[key] for r in rows])), 4)  # noqa: E731
    return {"steps": len(steps), "reward_first": mean(first, "reward_raw"), "reward_last": mean(last, "reward_raw"),
            "reward_trend": trend([s["reward_raw"] for s in steps]),
            "kl_last": mean(last, "kl"), "response_length_first": mean(first, "response_length"),
            "response_length_last": mean(last, "response_length"),
            "seconds_per_step": round(float(np.mean(np.diff([r["time_s"] for r in steps]))), 1)}  # time_s: since the start


PHASE_KEYS = {"2 supervised fine-tuning": "sft", "3a feedback": "feedback", "3b reward model": "reward",
              "4 PPO": "ppo", "evaluation": "eval"}


def built_seconds(workdir: Path, phases: dict[str, Path]) -> dict[str, float | None]:
    """Each phase's seconds in the pipeline run that built its folder (a later run reuses it in
    ~0 s), from Hydra's job logs: the run whose log says "phase <p>: building <folder>"."""
    logs = [p.read_text(errors="replace") for p in sorted(workdir.glob("hydra/*/pipeline.log"))]
    seconds = {}
    for name, key in PHASE_KEYS.items():
        folder = str(phases[key])
        done = re.compile(rf"=== {re.escape(name)} done in (\d+) s: {re.escape(folder)}$", re.M)
        built = [done.search(log) for log in logs if f"phase {key}: building {folder}" in log]
        seconds[name] = float(built[-1].group(1)) if built and built[-1] else None
    return seconds


def evaluation(folder: Path) -> dict:
    e = json.loads((folder / "eval.json").read_text())
    keep = ("judge", "measure", "ci_low", "ci_high", "mean_kl", "length_ratio", "verdict")
    return {k: e[k] for k in keep if k in e} | {"value": e[e["measure"]]}  # measure: win_rate or implicit_reward_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="hh_smollm2_cpu")
    parser.add_argument("--input", type=Path, default=SHARED_HH)
    parser.add_argument("--workdir", type=Path, help="default: runs/<experiment>")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/<experiment>.json")
    parser.add_argument("--heldout-pairs", type=int, default=400, help="held-out pairs the reward model scores (0: all)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every command")
    args = parser.parse_args()
    from alignray.core.artifacts import MODEL_DIR
    from alignray.core.machine import describe_machine, machine_info
    # the preset's own workdir (runs/<name>) unless given: its input paths are part of each phase's
    # key, so spelling the same folder another way would train every phase again
    workdir = (args.workdir or REPO / "runs" / args.experiment).resolve()
    data = workdir / "hh_data"
    common = [f"experiment={args.experiment}", *([f"workdir={args.workdir}"] if args.workdir else []), *args.overrides]
    summary = convert(args.input.resolve(), data, heldout_fraction=0.5)
    wall = {"pipeline": alignray("run", *common)[0]}
    report = json.loads((workdir / "report" / "phases.json").read_text())
    phases = {k: Path(v) for k, v in report.items() if k != "seconds"}
    result = {"experiment": args.experiment, "overrides": args.overrides, "input": str(args.input),
              "split": "by prompt (content hash), half held out", "convert": summary.get("written", summary),
              "phase_seconds": built_seconds(workdir, phases), "machine": machine_info()}
    sft = json.loads((phases["sft"] / "summary.json").read_text())
    result["sft"] = {k: sft[k] for k in ("heldout_loss_base", "heldout_loss_sft", "steps", "global_batch_size")}
    result["reward_model"] = heldout_accuracy(phases["reward"] / MODEL_DIR, data / "feedback_heldout.parquet",
                                              args.heldout_pairs)
    result["ppo"] = ppo_learning(phases["ppo"])
    result["eval_pairs"] = evaluation(phases["eval"])
    # The gold reward model: the same phase on the held-out half's pairs, from the same SFT model.
    wall["gold_reward_model"], output = alignray("reward-model", *common,
                                                 f"feedback.path={data / 'feedback_heldout.parquet'}")
    gold = phase_folder(output, "reward")
    wall["gold_evaluation"], output = alignray("evaluate", *common, "eval.judge.kind=reward_model",
                                               f"eval.judge.model_path={gold / MODEL_DIR}")
    result["gold_reward_model"] = {"folder": str(gold), **json.loads((gold / "eval.json").read_text())["model"]["heldout"]}
    # the gold model's own figure on pairs it never saw: the training half's, as many as the proxy's
    result["gold_reward_model"]["train_half"] = heldout_accuracy(gold / MODEL_DIR, data / "feedback_train.parquet",
                                                                args.heldout_pairs)
    gold_eval = phase_folder(output, "eval")
    result["eval_gold"] = evaluation(gold_eval) | {"length_controlled": length_controlled(gold_eval / "samples.jsonl")}
    result["wall_seconds"] = wall
    print_table(result)
    print(f"machine: {describe_machine(result['machine'])}")
    out = args.out or REPO / "benchmarks" / "results" / f"{args.experiment}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def print_table(r: dict) -> None:
    s, rm, ppo, pairs, gold = r["sft"], r["reward_model"], r["ppo"], r["eval_pairs"], r["eval_gold"]
    seconds = r["phase_seconds"]
    rows = [
        ("2 SFT", seconds.get("2 supervised fine-tuning"),
         f"held-out loss {s['heldout_loss_base']:.3f} -> {s['heldout_loss_sft']:.3f} ({s['steps']} steps of {s['global_batch_size']})"),
        ("3a feedback", seconds.get("3a feedback"), "validation, aggregation, quality checks"),
        ("3b reward model", seconds.get("3b reward model"),
         f"accuracy on {rm['pairs']} held-out pairs {rm['accuracy']:.3f} [{rm['ci'][0]:.3f}, {rm['ci'][1]:.3f}]"),
        ("4 PPO", seconds.get("4 PPO"),
         f"reward {ppo['reward_first']:+.3f} -> {ppo['reward_last']:+.3f} (first/last 3 of {ppo['steps']} steps), "
         f"slope {ppo['reward_trend']['slope_per_step']:+.4f} [{ppo['reward_trend']['ci95'][0]:+.4f}, "
         f"{ppo['reward_trend']['ci95'][1]:+.4f}] a step, KL {ppo['kl_last']:.2f}, {ppo['seconds_per_step']} s a step"),
        ("evaluation", seconds.get("evaluation"), describe_eval(pairs)),
        ("gold RM", r["wall_seconds"]["gold_reward_model"],
         f"accuracy on {r['gold_reward_model']['train_half']['pairs']} training-half pairs "
         f"{r['gold_reward_model']['train_half']['accuracy']:.3f} {r['gold_reward_model']['train_half']['ci']}"),
        ("gold evaluation", r["wall_seconds"]["gold_evaluation"], describe_eval(gold)),
        ("  same length", None, "gold margin at equal length {value:+.3f} {ci95}, {per[value]:+.4f} a word ({n} prompts)".format(
            **gold["length_controlled"]["margin_at_equal_length"], per=gold["length_controlled"]["margin_per_extra_word"],
            n=gold["length_controlled"]["prompts"])),
    ]
    print(f"\n{'phase':<16} {'s':>7}  result")
    for name, sec, what in rows:
        print(f"{name:<16} {sec if sec is not None else float('nan'):>7.0f}  {what}")
    print(f"{'phases':<16} {sum(v or 0 for v in seconds.values()):>7.0f}")


def describe_eval(e: dict) -> str:
    return f"{e['measure']} {e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}] ({e['judge']}), length x{e['length_ratio']:.2f}"


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
