"""Experiment tracking: one interface for every phase's metrics, with TensorBoard,
Weights & Biases, MLflow or nothing behind it (the `logger` config group).

A phase opens one tracker for its output folder; `alignray.core.metrics.MetricsLogger` hands it
every record it appends to metrics.jsonl (numbers only), after the run's resolved config;
a phase without steps logs its summary once (`log_summary`).
wandb and mlflow are optional (`pip install 'alignray[test]'`) and imported only when chosen.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

BACKENDS = ("tensorboard", "wandb", "mlflow", "none")
MLFLOW_DIR = "mlruns"  # the default MLflow file store, inside the workdir
_MLFLOW_BATCH = 100  # MLflow's limit of params (and the chunk of metrics) per log_batch call
_NOT_IN_A_TAG = re.compile(r"[^\w./-]")  # TensorBoard's tag characters (tensorboardX warns, then replaces)


@dataclass(frozen=True)
class TrackingSettings:
    """What a tracker needs, in plain values: it is built on the driver from the config and
    may travel to another process."""
    backend: str = "none"
    project: str = "alignray"
    group: str = ""  # the run's `name`: groups its phases
    wandb_mode: str = "offline"
    mlflow_tracking_uri: str = ""  # empty: a file store in <workdir>/mlruns
    params: dict = field(default_factory=dict)  # the resolved config, flattened to dotted keys


def tracking_settings(cfg) -> TrackingSettings:
    """The settings of the root config's `logger` group, with the whole resolved config as
    the params every tracker records."""
    logger = cfg.logger
    if logger.backend not in BACKENDS:
        raise ValueError(f"logger.backend={logger.backend!r} is not one of {', '.join(BACKENDS)}")
    uri = logger.mlflow_tracking_uri or (Path(cfg.workdir).expanduser().resolve() / MLFLOW_DIR).as_uri()
    params = flatten(dataclasses.asdict(cfg))
    return TrackingSettings(backend=logger.backend, project=logger.project, group=str(cfg.name),
                            wandb_mode=logger.wandb_mode, mlflow_tracking_uri=uri, params=params)


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def scalars(record: dict) -> dict[str, float]:
    """The entries of a metrics record a tracker can plot: finite numbers, not the step."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Tracker:
    """Nothing tracked (`logger=none`); the base of every backend."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_params(self, params: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    """Event files in ``log_dir`` (tensorboardX writes them; TensorBoard reads them)."""

    def __init__(self, log_dir: Path):
        from tensorboardX import SummaryWriter
        self.writer = SummaryWriter(logdir=str(log_dir))

    def log_metrics(self, metrics, step):
        for name, value in metrics.items():
            self.writer.add_scalar(_NOT_IN_A_TAG.sub("_", name), value, step)
        self.writer.flush()  # a killed job keeps what it logged

    def log_params(self, params):
        rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in params.items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + rows)

    def close(self):
        self.writer.close()


class WandbTracker(Tracker):
    """A Weights & Biases run in ``<out_dir>/wandb``; offline needs no network or login."""

    def __init__(self, out_dir: Path, run_name: str, settings: TrackingSettings):
        wandb = _optional("wandb")
        # console="off": wandb would otherwise wrap this process's stdout and stderr
        self.run = wandb.init(project=settings.project, group=settings.group or None, name=run_name,
                              dir=str(out_dir), mode=settings.wandb_mode, reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
        log.info("wandb %s run %s in %s", settings.wandb_mode, self.run.id, self.run.dir)

    def log_metrics(self, metrics, step):
        self.run.log(metrics, step=step)

    def log_params(self, params):
        self.run.config.update(params, allow_val_change=True)

    def close(self):
        self.run.finish()
        # finish() can return before wandb's service has written the run file; teardown waits
        # for it (the next run starts a new service)
        _optional("wandb").teardown()


class MLflowTracker(Tracker):
    """An MLflow run in the experiment ``settings.project``; the default store is a folder."""

    def __init__(self, run_name: str, settings: TrackingSettings):
        _optional("mlflow")
        from mlflow.tracking import MlflowClient
        uri = settings.mlflow_tracking_uri
        if uri.startswith("file:"):
            # MLflow 3 refuses a file store unless asked; mlflow-skinny has no database store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(uri)
        experiment = self.client.get_experiment_by_name(settings.project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(settings.project)
        run = self.client.create_run(experiment_id, run_name=run_name, tags={"alignray.group": settings.group})
        self.run_id = run.info.run_id
        log.info("MLflow run %s in %s (experiment %s)", self.run_id, uri, settings.project)

    def log_metrics(self, metrics, step):
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        entries = [Metric(name, value, now, step) for name, value in metrics.items()]
        for start in range(0, len(entries), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=entries[start:start + _MLFLOW_BATCH])

    def log_params(self, params):
        from mlflow.entities import Param
        entries = [Param(key, str(value)[:6000]) for key, value in params.items()]  # MLflow's value limit
        for start in range(0, len(entries), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=entries[start:start + _MLFLOW_BATCH])

    def close(self):
        self.client.set_terminated(self.run_id)


def open_tracker(settings: TrackingSettings | None, out_dir: str | Path, run_name: str) -> Tracker:
    """The tracker of one phase's run, with the settings' params already logged."""
    if settings is None or settings.backend == "none":
        return Tracker()
    out_dir = Path(out_dir)
    if settings.backend == "tensorboard":
        tracker = TensorBoardTracker(out_dir)
    elif settings.backend == "wandb":
        tracker = WandbTracker(out_dir, run_name, settings)
    elif settings.backend == "mlflow":
        tracker = MLflowTracker(run_name, settings)
    else:
        raise ValueError(f"logger.backend={settings.backend!r} is not one of {', '.join(BACKENDS)}")
    if settings.params:
        tracker.log_params(settings.params)
    return tracker


def log_summary(settings: TrackingSettings | None, out_dir: str | Path, run_name: str, summary: dict) -> None:
    """The numbers of a phase without training steps (feedback, evaluation) as its step 0,
    nested keys joined by dots."""
    tracker = open_tracker(settings, out_dir, run_name)
    try:
        tracker.log_metrics(scalars(flatten(summary)), step=0)
    finally:
        tracker.close()


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"logger.backend={module} needs the {module!r} package: pip install 'alignray[test]' "
            f"(or choose logger=tensorboard or logger=none)") from err
