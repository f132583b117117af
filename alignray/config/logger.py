"""Experiment tracking: where every phase's metrics go besides its metrics.jsonl."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoggerConfig:
    # tensorboard: event files beside each phase's metrics.jsonl (`tensorboard --logdir <workdir>`);
    # wandb and mlflow need the `test` extra (`pip install 'alignray[test]'`); none: metrics.jsonl only.
    backend: str = "tensorboard"
    # The wandb project, or the MLflow experiment; a run is named after its phase folder
    # (`sft-<hash>`) and grouped by the config's `name`.
    project: str = "alignray"
    # offline writes `<phase folder>/wandb/` without network (upload later with `wandb sync`);
    # online needs `wandb login`.
    wandb_mode: str = "offline"
    # An MLflow tracking URI; empty: a file store in `<workdir>/mlruns` (`mlflow ui --backend-store-uri` it).
    mlflow_tracking_uri: str = ""
