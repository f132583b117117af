"""The main job: all four phases in order, then the evaluation and the report.

    python -m alignray.workflows.pipeline                        # the embedded default (bash scripts/run.sh)
    python -m alignray.workflows.pipeline ppo.steps=80 name=longer
    python -m alignray.workflows.pipeline -m ppo.kl.coef=0.1,0.2 # a sweep: one run folder per setting

Each phase writes its output to `<workdir>/<phase>-<output key>/` (alignray.core.artifacts declares
what each key hashes and which phase's output each reads; alignray.workflows.phases resolves it,
as for a phase run alone) and the next phase reads it from there; a phase whose output is
complete for the same settings is reused, so a re-run after a failure picks up where the
failed one stopped, and the jobs of a sweep share what their settings share. The report goes
to `<workdir>/report/`; in a multirun, to each job's own folder (`<sweep dir>/<job>/report/`,
beside the job's config), so every job keeps its report.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from alignray.actors import runtime
from alignray.workflows.common import CONFIG_PATH, start_app
from alignray.workflows.phases import base_model, run_phase
from alignray.workflows.report import write_run_report

log = logging.getLogger("alignray.pipeline")


def report_dir(cfg: DictConfig) -> tuple[Path, str]:
    """Where this run's report goes, and in a multirun which job of the sweep it is, with
    the job's overrides ("" outside a multirun)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hydra_cfg = HydraConfig.get()
        return (Path(hydra_cfg.runtime.output_dir) / "report",
                f"multirun job {hydra_cfg.job.num}: {' '.join(hydra_cfg.overrides.task)}")
    return Path(cfg.workdir).expanduser().resolve() / "report", ""


def run_pipeline(cfg: DictConfig) -> Path:
    """Run (or reuse) every phase; returns the report folder."""
    seconds: dict[str, float] = {}

    def timed(phase: str, fn, *args):
        log.info("=== alignray pipeline: %s ===", phase)
        started = time.monotonic()
        result = fn(*args)
        seconds[phase] = round(time.monotonic() - started, 1)
        log.info("=== %s done in %.0f s: %s", phase, seconds[phase], result)
        return result

    base = timed("1 pretrained model", base_model, cfg)
    sft_dir = timed("2 supervised fine-tuning", run_phase, cfg, "sft")
    feedback_dir = timed("3a feedback", run_phase, cfg, "feedback")
    reward_dir = timed("3b reward model", run_phase, cfg, "reward")
    ppo_dir = timed("4 PPO", run_phase, cfg, "ppo")
    eval_dir = timed("evaluation", run_phase, cfg, "eval")
    phases = {"base": Path(base), "sft": sft_dir, "feedback": feedback_dir, "reward": reward_dir,
              "ppo": ppo_dir, "eval": eval_dir}
    out, job = report_dir(cfg)
    paths = timed("report", write_run_report, cfg, phases, seconds, out, job)
    (out / "phases.json").write_text(json.dumps({k: str(v) for k, v in phases.items()} | {
        "seconds": seconds}, indent=2))
    log.info("report: %s\n        %s", paths["markdown"], paths["html"])
    return out


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> str:
    start_app(cfg, "pipeline")
    with runtime.ray_session(cfg.cluster):
        return str(run_pipeline(cfg))


if __name__ == "__main__":
    main()
