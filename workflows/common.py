"""What every Hydra app does first: refuse moved keys, register the schemas, log and save its
resolved config and turn it into the dataclasses of alignray.config (the one place an app's
config is converted), and find (or reuse) the folder of a phase's output (keyed as
alignray.core.artifacts declares)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from alignray import CONF_DIR
from alignray.core.artifacts import DATA, PhaseOutput, is_complete, mark_complete  # noqa: F401  (the apps take them from here)
from alignray.config import AlignrayConfig, MovedKeyError, check_overrides, register_configs, typed_config
from alignray.data.prompts import prepare_embedded_data

register_configs()
# Workers and actors inherit these: no telemetry.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
LOCAL_MODEL_SOURCES = ("embedded", "smollm2_gguf")  # built here from local files: never the hub

log = logging.getLogger("alignray")
CONFIG_PATH = str(CONF_DIR)


def compose_app_config(overrides: list[str]) -> AlignrayConfig:
    """The apps' config (conf/config.yaml) with ``overrides``, as Hydra composes it and as an
    app hands it on (typed), for code that runs phases without a command line (the benchmarks)."""
    from hydra import compose, initialize_config_dir
    check_overrides(overrides, CONF_DIR)
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base=None):
        return typed_config(compose(config_name="config", overrides=overrides))


def run_app(main: Callable[[], object]) -> None:
    """An app's command line: keys that moved are refused with their new name before Hydra
    composes (which would only say that the old key does not exist)."""
    try:
        check_overrides(sys.argv[1:], CONF_DIR)
    except MovedKeyError as error:
        sys.exit(f"error: {error}")
    main()


def start_app(cfg: DictConfig, app: str) -> AlignrayConfig:
    """Log the resolved config and save it beside the app's Hydra outputs; returns it typed,
    the only form the app hands on."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if cfg.model.source in LOCAL_MODEL_SOURCES:
        # No hub lookups for a model built from local files; a hub id (model.source=hf) keeps
        # the user's setting, which workers inherit (actors/runtime.worker_env).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    log.info("=== alignray %s: resolved config ===\n%s", app, resolved)
    out_dir = _hydra_output_dir()
    if out_dir is not None:
        (out_dir / f"{app}-config.yaml").write_text(resolved)
    return typed_config(cfg)


def _hydra_output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return None
    return Path(HydraConfig.get().runtime.output_dir)


def phase_settings(cfg: AlignrayConfig, phase: PhaseOutput) -> dict:
    """The settings ``phase`` declares as deciding its output, flattened to dotted keys
    (``{"sft.lr": 3e-4, ...}``), with its ignored keys left out. A declared path that the
    config lacks is an error naming it."""
    tree, flat = dataclasses.asdict(cfg), {}
    for path in phase.settings:
        node = tree
        for name in path.split("."):
            if not isinstance(node, dict) or name not in node:
                raise KeyError(f"phase {phase.prefix!r} hashes {path!r}, which the config does not have")
            node = node[name]
        _flatten(path, node, flat)
    for path in phase.ignored:
        if not any(key == path or key.startswith(path + ".") for key in flat):
            raise KeyError(f"phase {phase.prefix!r} ignores {path!r}, which is not among its settings")
    return {key: value for key, value in flat.items()
            if not any(key == path or key.startswith(path + ".") for path in phase.ignored)}


def _flatten(prefix: str, value, into: dict) -> None:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}", inner, into)
    else:
        into[prefix] = value


def output_key(cfg: AlignrayConfig, phase: PhaseOutput, **inputs) -> str:
    """A short, stable hash of what decides ``phase``'s output: its settings and the
    upstream paths it reads (every input it declares, by name; one inside the workdir by its
    place there, so a workdir moved, copied or cloned elsewhere keeps its keys)."""
    if set(inputs) != set(phase.input_names):
        raise TypeError(f"phase {phase.prefix!r} is keyed by the inputs {list(phase.input_names)}, given {list(inputs)}")
    workdir = Path(cfg.workdir).expanduser().resolve()
    named = {name: _input_in(workdir, value) for name, value in inputs.items()}
    text = json.dumps({"settings": phase_settings(cfg, phase), "inputs": named}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _input_in(workdir: Path, value) -> str:
    """An absolute path inside ``workdir`` as ``<workdir>/<its place>``; anything else (a
    file elsewhere, a hub id, None) as given."""
    path = Path(str(value))
    if path.is_absolute() and path.is_relative_to(workdir):
        return f"<workdir>/{path.relative_to(workdir).as_posix()}"
    return str(value)


def phase_dir(cfg: AlignrayConfig, phase: PhaseOutput, **inputs) -> Path:
    """``<workdir>/<prefix>-<output key>``: a phase whose folder is complete for the same
    key is reused."""
    return Path(cfg.workdir).expanduser().resolve() / f"{phase.prefix}-{output_key(cfg, phase, **inputs)}"


def embedded_data_dir(cfg: AlignrayConfig) -> Path:
    """The embedded default's prompts and demonstrations (alignray.core.artifacts names the
    files), prepared once per data config and reused."""
    data_dir = phase_dir(cfg, DATA)
    if not is_complete(data_dir):
        paths = prepare_embedded_data(cfg.data, data_dir)
        mark_complete(data_dir, {name: str(path) for name, path in paths.items()})
    return data_dir
