"""The default PPO profile chosen by measurement: profiles x reward models x seeds, each
policy judged by the held-out annotators 6-10 against the SFT model.

    python benchmarks/ppo_default_seeds.py --run runs/default \\
        --reward-models new=runs/default/reward-<key>/model old=runs/old-rm/reward-<key>/model \\
        --profiles "default=" "lean=ppo.epochs=2 ppo.policy.lr=2e-5" --seeds 0 1 2

Every run starts from the same SFT model (``--run``'s); the seed is the PPO run's (its
sampling, the prompt order, the evaluation's sampling), the reward models are fixed. A
profile is a name and Hydra overrides on top of ``experiment=cpu_default``; give the KL the
same budget across reward models with e.g. ``ppo.kl.controller=adaptive ppo.kl.target=5``.
The table per profile and reward model: each seed's win-rate with its 95% interval, the
mean and spread, the worst seed's lower bound, the PPO phase's wall seconds and its KL.
The profile to make the default is the one with the best worst-seed lower bound within
the time budget. Runs already complete in ``--workdir`` are reused, so an interrupted
table resumes. Writes JSON (``--out``) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from algorithms import method_config, phase_inputs, run_method  # noqa: E402


def named(pairs: list[str]) -> dict[str, str]:
    """``name=value`` strings as a dict (the value may hold further ``=``)."""
    return dict(pair.split("=", 1) for pair in pairs)


def summarise(rows: list[dict]) -> dict:
    wins = [r["win_rate"] for r in rows]
    return {"seeds": len(rows), "mean_win_rate": statistics.mean(wins),
            "spread": max(wins) - min(wins), "worst_ci_low": min(r["ci_low"] for r in rows),
            "all_guards_pass": all(r["preferred_with_guards"] for r in rows),
            "mean_wall_s": statistics.mean(r["wall_s"] for r in rows),
            "mean_kl": statistics.mean(r["kl_per_response"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "default")
    parser.add_argument("--reward-models", nargs="+", required=True, help="name=folder of a trained reward model")
    parser.add_argument("--profiles", nargs="+", default=["default="], help="name=overrides, space-separated")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "ppo_default_seeds")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ppo_default_seeds.json")
    args = parser.parse_args()
    from alignray.actors import runtime
    from alignray.core.machine import describe_machine, machine_info

    table = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    done = {(r["profile"], r["reward_model"], r["seed"]) for r in table}
    with runtime.ray_session(method_config("ppo", args.workdir, args.steps, 0).cluster):
        for profile, overrides in named(args.profiles).items():
            for rm_name, rm_path in named(args.reward_models).items():
                inputs = phase_inputs(args.run.resolve(), Path(rm_path))
                for seed in args.seeds:
                    if (profile, rm_name, seed) in done:
                        continue
                    row = run_method("ppo", inputs, args.workdir.resolve(), args.steps, seed,
                                     tuple(overrides.split()), name=profile)
                    table.append(row | {"profile": profile, "reward_model": rm_name, "reward_model_path": rm_path,
                                        "seed": seed})
                    print(json.dumps(table[-1]), flush=True)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps({"rows": table}, indent=2))  # saved row by row
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in table:
        groups.setdefault((row["profile"], row["reward_model"]), []).append(row)
    print(f"machine: {describe_machine(machine_info())}")
    print(f"{'profile':<10} {'RM':<5} {'seed':>4} {'win-rate [95% CI]':<22} {'KL':>6} {'wall s':>7}  verdict")
    for (profile, rm_name), rows in groups.items():
        for r in sorted(rows, key=lambda r: r["seed"]):
            print(f"{profile:<10} {rm_name:<5} {r['seed']:>4} {r['win_rate']:.3f} [{r['ci_low']:.3f}, "
                  f"{r['ci_high']:.3f}]   {r['kl_per_response']:>6.2f} {r['wall_s']:>7.0f}  {r['verdict']}")
        s = summarise(rows)
        print(f"{profile:<10} {rm_name:<5} mean {s['mean_win_rate']:.3f}, spread {s['spread']:.3f}, worst lower "
              f"bound {s['worst_ci_low']:.3f}, guards {'all pass' if s['all_guards_pass'] else 'FAIL'}, "
              f"{s['mean_wall_s']:.0f} s")
    summary = {f"{p}/{rm}": summarise(rows) for (p, rm), rows in groups.items()}
    args.out.write_text(json.dumps({"rows": table, "summary": summary, "machine": machine_info(),
                                    "profiles": named(args.profiles), "steps": args.steps}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
