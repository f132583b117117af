"""What the over-optimisation monitor costs a PPO run: its checks' seconds against the steps'.

    python benchmarks/monitor_cost.py                         # the tests' tiny model, 20 steps
    python benchmarks/monitor_cost.py --model <SFT folder> --steps 80

Runs the PPO phase with the default PPO and monitor settings (64 prompts a step, a check every
10 updates on 64 probe prompts, the held-out annotators as judge) against the oracle reward (the
training annotators), so no reward model is needed. Prints a table and writes JSON naming the
machine; extrapolates the share to a run of --extrapolate-steps steps.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent


def measure(model: str, steps: int, workdir: Path) -> dict:
    from omegaconf import OmegaConf

    from alignray.core.artifacts import METRICS_FILE, MONITOR_FILE, SUMMARY_FILE
    from alignray.config import AlignrayConfig, typed_config
    from alignray.core.metrics import read_metrics
    from alignray.workflows.ppo import run_ppo

    cfg = typed_config(OmegaConf.structured(AlignrayConfig))
    cfg.workdir, cfg.ppo.steps, cfg.ppo.checkpoint_every = str(workdir), steps, 0
    cfg.ppo.reward.kind = "training_annotators"
    out = run_ppo(cfg, model, None)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    records = read_metrics(out / METRICS_FILE)
    checks = json.loads((out / MONITOR_FILE).read_text())["checks"]
    step_s = [r["step_s"] - r.get("time/monitor", 0.0) for r in records]
    return {"model": model, "steps": len(records), "every": cfg.ppo.monitor.every,
            "probe_prompts": cfg.ppo.monitor.probe_prompts, "phase_wall_s": summary["wall_s"],
            "check_s": [c["seconds"] for c in checks], "mean_step_s": sum(step_s) / len(step_s),
            "alarms": summary["monitor"]["alarms"], "kept_policy_step": summary["policy_step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="the SFT model folder (default: the tests' tiny model, built if missing)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--extrapolate-steps", type=int, default=80, help="the default run's PPO steps")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "monitor_cost.json")
    args = parser.parse_args()
    from alignray.pretrain.embedded import TINY_TEST_RECIPE, build_base_model
    from alignray.core.machine import describe_machine, machine_info
    model = args.model or str(build_base_model(TINY_TEST_RECIPE, cache_dir=REPO / ".alignray-cache" / "tests", seed=0))
    with tempfile.TemporaryDirectory() as folder:
        result = measure(model, args.steps, Path(folder))
    checks = result["check_s"]
    steady = sum(checks[1:]) / max(len(checks) - 1, 1)
    n_checks = args.extrapolate_steps // result["every"] + 1
    projected = (checks[0] + (n_checks - 1) * steady) / (args.extrapolate_steps * result["mean_step_s"])
    result |= {"monitor_s": sum(checks), "share_of_phase": sum(checks) / result["phase_wall_s"],
               "steady_check_s": steady, f"projected_share_of_{args.extrapolate_steps}_steps": projected,
               "machine": machine_info()}
    print(f"machine: {describe_machine(result['machine'])}")
    print(f"{'steps':>6} {'checks':>7} {'monitor s':>10} {'phase s':>8} {'share':>6} {'check s':>8} {'step s':>7} "
          f"{'projected':>10}")
    print(f"{result['steps']:>6} {len(checks):>7} {result['monitor_s']:>10.2f} {result['phase_wall_s']:>8.1f} "
          f"{result['share_of_phase']:>6.1%} {steady:>8.2f} {result['mean_step_s']:>7.2f} {projected:>10.1%}")
    print(f"alarms: {result['alarms'] or 'none'}; kept policy: step {result['kept_policy_step']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
