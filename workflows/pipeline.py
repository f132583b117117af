"""The main job: all four phases in order, then the evaluation and the report.

    python -m workflows.pipeline                        # the embedded default (bash scripts/run.sh)
    python -m workflows.pipeline ppo.steps=80 name=longer
    python -m workflows.pipeline -m ppo.kl.coef=0.1,0.2 # a sweep: one run folder per setting

Each phase writes its output to `<workdir>/<phase>-<config hash>/` and the next phase reads
it from there; a phase whose output is complete for the same settings is reused, so a
re-run after a failure picks up where the failed one stopped.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from actors import runtime
from alignray.artifacts import MODEL_DIR, POLICY_DIR
from alignray.base_model import resolve_base_model
from workflows.common import CONFIG_PATH, start_app
from workflows.evaluate import evaluate_policies
from workflows.feedback import run_feedback
from workflows.ppo import run_ppo
from workflows.report import write_run_report
from workflows.reward_model import run_reward_model
from workflows.sft import run_sft

log = logging.getLogger("alignray.pipeline")


def evaluate(cfg: DictConfig, base: str, sft_model: str, ppo_dir: Path) -> Path:
    """PPO vs SFT by the held-out judge, beside the PPO run it judges, on ``ppo.eval.prompts_path``
    (your held-out prompts; None: the embedded default's)."""
    out = ppo_dir.parent / f"eval-{ppo_dir.name.removeprefix('ppo-')}"
    evaluate_policies(cfg, sft_model, str(ppo_dir / POLICY_DIR), cfg.ppo.eval.prompts_path, out, base_path=base)
    return out


def run_pipeline(cfg: DictConfig) -> Path:
    """Run (or reuse) every phase; returns the report folder."""
    seconds: dict[str, float] = {}

    def timed(phase: str, fn, *args):
        print(f"\n=== alignray pipeline: {phase} ===", flush=True)
        started = time.monotonic()
        result = fn(*args)
        seconds[phase] = round(time.monotonic() - started, 1)
        print(f"=== {phase} done in {seconds[phase]:.0f} s: {result}", flush=True)
        return result

    base = timed("1 pretrained model", resolve_base_model, cfg.model, cfg.cache_dir, cfg.seed)
    sft_dir = timed("2 supervised fine-tuning", run_sft, cfg, base)
    sft_model = str(sft_dir / MODEL_DIR)
    feedback_dir = timed("3a feedback", run_feedback, cfg, sft_model)
    reward_dir = timed("3b reward model", run_reward_model, cfg, sft_model, feedback_dir)
    ppo_dir = timed("4 PPO", run_ppo, cfg, sft_model, str(reward_dir / MODEL_DIR))
    eval_dir = timed("evaluation", evaluate, cfg, base, sft_model, ppo_dir)
    phases = {"base": Path(base), "sft": sft_dir, "feedback": feedback_dir, "reward": reward_dir,
              "ppo": ppo_dir, "eval": eval_dir}
    report_dir = Path(cfg.workdir).expanduser().resolve() / "report"
    paths = timed("report", write_run_report, cfg, phases, seconds, report_dir)
    (report_dir / "phases.json").write_text(json.dumps({k: str(v) for k, v in phases.items()} | {
        "seconds": seconds}, indent=2))
    print(f"\nreport: {paths['markdown']}\n        {paths['html']}", flush=True)
    return report_dir


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> str:
    start_app(cfg, "pipeline")
    with runtime.ray_session(cfg.cluster):
        return str(run_pipeline(cfg))


if __name__ == "__main__":
    main()
