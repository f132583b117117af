"""What every Hydra app does first: register the schemas, log and save its resolved
config, and find (or reuse) the folder of a phase's output."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from alignray.artifacts import is_complete, mark_complete  # noqa: F401  (the apps take them from here)
from alignray.config import register_configs
from alignray.data import prepare_embedded_data

register_configs()
# Workers and actors inherit these: no telemetry.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
LOCAL_MODEL_SOURCES = ("embedded", "smollm2_gguf")  # built here from local files: never the hub

log = logging.getLogger("alignray")
CONFIG_PATH = str(Path(__file__).resolve().parent.parent / "conf")


def start_app(cfg: DictConfig, app: str) -> None:
    """Log the resolved config and save it beside the app's Hydra outputs."""
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


def _hydra_output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return None
    return Path(HydraConfig.get().runtime.output_dir)


def config_hash(*nodes) -> str:
    """A short, stable hash of config nodes (and plain values): the identity of a phase's
    output, so a phase whose output exists for the same settings is reused."""
    def plain(node):
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    text = json.dumps([plain(n) for n in nodes], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def phase_dir(cfg: DictConfig, phase: str, *nodes) -> Path:
    """`<workdir>/<phase>-<hash of the settings that decide its output>`."""
    return Path(cfg.workdir).expanduser().resolve() / f"{phase}-{config_hash(*nodes)}"


def embedded_data_dir(cfg: DictConfig) -> Path:
    """The embedded default's prompts and demonstrations (alignray.artifacts names the
    files), prepared once per data config and reused."""
    data_dir = phase_dir(cfg, "data", cfg.data)
    if not is_complete(data_dir):
        paths = prepare_embedded_data(cfg.data, data_dir)
        mark_complete(data_dir, {name: str(path) for name, path in paths.items()})
    return data_dir
