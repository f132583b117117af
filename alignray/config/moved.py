"""Keys that moved, refused with their new name: a Hydra override or an experiment file that
names an old key would otherwise fail with "Key 'lr' not in 'PPOConfig'", which does not say
where the setting went.

Checked on the command line before Hydra composes (``workflows.common.run_app``), by
``compose_app_config``, and in the experiment file an ``experiment=NAME`` override names.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Optional

import yaml

from alignray.config.judge import MOVED_JUDGE_KEYS
from alignray.config.scorer import MOVED_SCORER_KEYS

# old dotted path -> new one, each key exactly
MOVED_KEYS = {
    "ppo.max_new_tokens": "ppo.rollout.max_new_tokens",
    "ppo.temperature": "ppo.rollout.temperature",
    "ppo.top_p": "ppo.rollout.top_p",
    "ppo.generation_engine": "ppo.rollout.generation_engine",
    "ppo.stop_at_eos": "ppo.rollout.stop_at_eos",
    "ppo.rollout_workers": "ppo.rollout.workers",
    "ppo.rollout_gpus": "ppo.rollout.gpus",
    "ppo.rollout_max_restarts": "ppo.rollout.max_restarts",
    "ppo.lr": "ppo.policy.lr",
    "ppo.policy_loss": "ppo.policy.loss",
    "ppo.loss_aggregation": "ppo.policy.loss_aggregation",
    "ppo.clip_eps": "ppo.policy.clip_eps",
    "ppo.entropy_coef": "ppo.policy.entropy_coef",
    "ppo.policy_actors": "ppo.policy.actors",
    "ppo.critic_lr": "ppo.critic.lr",
    "ppo.value_clip_eps": "ppo.critic.value_clip_eps",
    "ppo.critic_init": "ppo.critic.init",
    "ppo.critic_actors": "ppo.critic.actors",
    "ppo.weight_sync": "ppo.sync.method",
    "ppo.probe_prompts": "ppo.sync.probe_prompts",
    "ppo.sync_tolerance": "ppo.sync.tolerance",
    **MOVED_SCORER_KEYS,
    **MOVED_JUDGE_KEYS,
}
# old group -> new one: every key under it moved with it
MOVED_GROUPS = {"ppo.eval": "eval"}
GLOBAL_PACKAGE = re.compile(r"^#\s*@package\s+_global_\s*$", re.MULTILINE)


class MovedKeyError(ValueError):
    """A config key that moved, named with its new path."""


def moved_to(key: str) -> Optional[str]:
    """The new path of ``key`` when it (or the group it is under) moved; None otherwise."""
    if key in MOVED_KEYS:
        return MOVED_KEYS[key]
    for old, new in MOVED_GROUPS.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return None


def refuse_moved_keys(keys: Iterable[str], where: str = "") -> None:
    moved = [f"{key} moved to {moved_to(key)}" for key in keys if moved_to(key)]
    if moved:
        raise MovedKeyError("; ".join(moved) + (f" (in {where})" if where else ""))


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys Hydra overrides set or delete (``key=v``, ``+key=v``, ``++key=v``,
    ``~key``); flags and their values name no key."""
    keys = []
    for override in overrides:
        if override.startswith("-"):
            continue
        key = override.split("=", 1)[0] if "=" in override else (override if override.startswith("~") else "")
        if key:
            keys.append(key.lstrip("+~").split("@", 1)[0])
    return keys


def file_keys(tree: dict, prefix: str = "") -> list[str]:
    """The dotted keys of a YAML mapping (its defaults list aside)."""
    keys = []
    for name, value in tree.items():
        if not prefix and name == "defaults":
            continue
        key = f"{prefix}{name}"
        keys.extend(file_keys(value, key + ".") if isinstance(value, dict) and value else [key])
    return keys


def check_overrides(overrides: list[str], conf_dir: Path) -> None:
    """Refuse moved keys among ``overrides`` and in the global experiment file that an
    ``experiment=NAME`` override names (under ``conf_dir``)."""
    refuse_moved_keys(override_keys(overrides))
    for override in overrides:
        name = override.lstrip("+").split("=", 1)
        if name[0] != "experiment" or len(name) < 2:
            continue
        path = Path(conf_dir) / "experiment" / f"{name[1]}.yaml"
        if path.is_file() and GLOBAL_PACKAGE.search(text := path.read_text()):
            refuse_moved_keys(file_keys(yaml.safe_load(text) or {}), str(path))
