"""The phase graph, resolved in one place: every phase's inputs, whether it runs inside the
pipeline or alone (`alignray ppo`, `alignray evaluate`, ...).

alignray.core.artifacts declares, per phase, the upstream paths it reads (`Upstream`: which
phase produces each, and the config key that gives it by hand). For each input the resolver
takes the path set at that key; else it runs the producing phase, which reuses its folder
when it is complete for the same settings and builds it otherwise, and logs which. So a
phase run alone after a whole run reuses that run's folders, and one run on a fresh workdir
builds what it needs first.

The phases' entry functions are named here as strings and imported when a phase runs: phase
apps never import each other, and nothing here imports an app at module level. A phase that
builds on Ray gets a Ray session only when it builds: reusing a folder starts nothing.
"""
from __future__ import annotations

import importlib
import logging
from contextlib import nullcontext
from pathlib import Path

from alignray.actors import runtime
from alignray.config import AlignrayConfig, select
from alignray.core.artifacts import PHASE_OUTPUTS, PhaseOutput, Upstream, is_complete
from alignray.core.tracking import tracking_settings
from alignray.models.modeling import check_model_supported
from alignray.pretrain.base_model import resolve_base_model
from alignray.workflows.common import phase_dir

log = logging.getLogger("alignray.phases")
BASE = "base"  # the pretrained model: not a phase folder, a cached build (or a hub id)
# phase prefix -> its entry, called as entry(cfg, *inputs) in the order the phase declares them
ENTRIES = {
    "sft": "alignray.workflows.sft:run_sft",
    "feedback": "alignray.workflows.feedback:run_feedback",
    "reward": "alignray.workflows.reward_model:run_reward_model",
    "ppo": "alignray.workflows.ppo:run_ppo",
    "dpo": "alignray.workflows.dpo:run_dpo",
    "judge": "alignray.workflows.judge:run_judge",
    "eval": "alignray.workflows.evaluate:run_evaluation",
}
# Entries that need a connected Ray from their caller (the others open one where they need it).
NEEDS_RAY = {"sft", "dpo", "judge"}
PHASES = {phase.prefix: phase for phase in PHASE_OUTPUTS if phase.prefix in ENTRIES}


def run_phase(cfg: AlignrayConfig, phase: PhaseOutput | str) -> Path:
    """Run ``phase`` (or reuse its complete folder) on its resolved inputs; returns its folder."""
    phase = PHASES[phase] if isinstance(phase, str) else phase
    inputs = resolve_inputs(cfg, phase)
    out = phase_dir(cfg, phase, **inputs)
    complete = is_complete(out)
    log.info("phase %s: %s %s", phase.prefix, "reusing" if complete else "building", out)
    module, _, function = ENTRIES[phase.prefix].partition(":")
    entry = getattr(importlib.import_module(module), function)
    with runtime.ray_session(cfg.cluster) if phase.prefix in NEEDS_RAY and not complete else nullcontext():
        return Path(entry(cfg, *inputs.values()))


def resolve_inputs(cfg: AlignrayConfig, phase: PhaseOutput) -> dict[str, str | None]:
    """Every input ``phase`` declares, by name, in its declared order."""
    return {upstream.name: resolve_input(cfg, phase, upstream) for upstream in phase.inputs}


def resolve_input(cfg: AlignrayConfig, phase: PhaseOutput, upstream: Upstream) -> str | None:
    if upstream.needed_when is not None:
        key, value = upstream.needed_when
        if select(cfg, key) != value:
            return None
    given = select(cfg, upstream.key) if upstream.key else None
    if given:
        log.info("phase %s: %s given by %s: %s", phase.prefix, upstream.name, upstream.key, given)
        return str(given)
    if upstream.source == BASE:
        return base_model(cfg)
    folder = run_phase(cfg, PHASES[upstream.source])
    return str(folder / upstream.path if upstream.path else folder)


def base_model(cfg: AlignrayConfig) -> str:
    """The pretrained model's folder (built once and cached) or hub id."""
    path = str(resolve_base_model(cfg.model, cfg.cache_dir, cfg.seed, tracking_settings(cfg)))
    check_model_supported(path)
    return path
