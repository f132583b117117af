"""Experiment tracking: each backend's files read back with that tool's own reader
(TensorBoard's event reader, the MLflow client, wandb's offline run folder), the relay of
a Ray Train worker's metrics file, and one tiny SFT run (tests/conftest.py's one_worker_sft)
whose workers' metrics reach the tracker, the progress log and `ray.train.report`."""
from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time

import pytest

from alignray.core.metrics import MetricsLogger, following, read_metrics
from alignray.core.tracking import TrackingSettings, log_summary, open_tracker, tracking_settings
from alignray.workflows.common import compose_app_config

PARAMS = {"sft.lr": 0.001, "seed": 3, "name": "tiny"}
# Three records as a phase logs them: a string and a non-finite value are not tracked.
RECORDS = [{"loss": 2.5, "lr": 1e-3, "event": "resumed"}, {"loss": 2.25, "heldout_loss": float("nan")},
           {"loss": 2.0, "time/rollout": 0.125, "violations/phrase:miracle cure": 0.25}]


def config(*overrides):
    return compose_app_config(list(overrides))


def log_records(out, backend: str, **settings) -> MetricsLogger:
    tracker = open_tracker(TrackingSettings(backend=backend, group="tiny", params=PARAMS, **settings), out, "sft-abc")
    with MetricsLogger(out, total_steps=3, name="sft", tracker=tracker) as metrics:
        for step, record in enumerate(RECORDS, start=1):
            metrics.log(step, **record)
    return metrics


def tracked_values(out) -> dict[str, list[tuple[int, float]]]:
    """What a tracker should hold: every finite number of metrics.jsonl, by key."""
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in read_metrics(out / "metrics.jsonl"):
        for key, value in record.items():
            if key != "step" and isinstance(value, float | int) and not math.isnan(value):
                expected.setdefault(key, []).append((record["step"], value))
    return expected


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_event_files_hold_every_number_of_metrics_jsonl(tmp_path):
    log_records(tmp_path, "tensorboard")
    assert list(tmp_path.glob("events.out.tfevents.*"))
    expected = tracked_values(tmp_path)
    assert set(expected) == {"time_s", "loss", "lr", "time/rollout", "violations/phrase:miracle cure"}  # no string, no NaN
    expected["violations/phrase_miracle_cure"] = expected.pop("violations/phrase:miracle cure")  # a tag's characters
    scalars = tensorboard_scalars(tmp_path)
    assert set(scalars) == set(expected)
    for key, points in expected.items():
        assert [s for s, _ in scalars[key]] == [s for s, _ in points]
        assert [v for _, v in scalars[key]] == pytest.approx([v for _, v in points], rel=1e-6)  # float32


def test_a_phase_without_steps_logs_the_numbers_of_its_summary_once(tmp_path):
    log_summary(TrackingSettings(backend="tensorboard"), tmp_path, "eval-abc",
                {"win_rate": 0.5, "mean_words": {"sft": 10, "ppo": 12}, "verdict": "PASS", "preferred": True})
    assert tensorboard_scalars(tmp_path) == {"win_rate": [(0, 0.5)], "mean_words.sft": [(0, 10.0)],
                                             "mean_words.ppo": [(0, 12.0)]}


def test_mlflow_file_store_reads_back_metrics_and_params(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    uri = (tmp_path / "mlruns").as_uri()
    log_records(tmp_path, "mlflow", mlflow_tracking_uri=uri)
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("alignray").experiment_id])
    assert run.info.run_name == "sft-abc" and run.info.status == "FINISHED"
    assert run.data.params == {k: str(v) for k, v in PARAMS.items()}
    assert run.data.tags["alignray.group"] == "tiny"
    for key, points in tracked_values(tmp_path).items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert history == points


def test_wandb_offline_run_writes_its_run_file_without_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log_records(tmp_path, "wandb", wandb_mode="offline")
    [run_dir] = (tmp_path / "wandb").glob("offline-run-*")
    [run_file] = run_dir.glob("run-*.wandb")
    data = run_file.read_bytes()
    # The run's records (protobuf in wandb's log format) carry each key and its value as JSON.
    for key in ["loss", "time/rollout", "sft.lr", "sft-abc", "tiny"]:
        assert key.encode() in data, key
    assert b"2.25" in data and b"resumed" not in data  # a string is not tracked


def test_a_missing_optional_backend_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"alignray\[test\]"):
        open_tracker(TrackingSettings(backend="wandb"), tmp_path, "sft-abc")


def test_the_logger_group_chooses_the_backend_and_a_misspelt_one_is_named(tmp_path):
    settings = tracking_settings(config(f"workdir={tmp_path}", "logger=mlflow", "name=trial"))
    assert settings.backend == "mlflow" and settings.group == "trial"
    assert settings.mlflow_tracking_uri == (tmp_path / "mlruns").as_uri()
    assert settings.params["sft.lr"] == config().sft.lr and settings.params["logger.backend"] == "mlflow"
    assert tracking_settings(config()).backend == "tensorboard"
    with pytest.raises(ValueError, match="logger.backend='tensorbord'"):
        tracking_settings(config("logger.backend=tensorbord"))


def test_following_relays_each_appended_record_once_in_order(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 0}) + "\n")  # an earlier run's record: not relayed again
    relayed = []

    def writer():
        with path.open("a") as f:
            for step in range(1, 6):
                line = json.dumps({"step": step, "loss": 1.0 / step}) + "\n"
                f.write(line[:5])  # half a line: the follower must wait for the rest
                f.flush()
                time.sleep(0.03)
                f.write(line[5:])
                f.flush()

    with following(path, relayed.append, poll_s=0.01):
        thread = threading.Thread(target=writer)
        thread.start()
        thread.join()
    assert relayed == [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]


# ----------------------------------------------------------------------------- a Ray Train phase
def test_a_ray_train_phase_sends_its_workers_metrics_to_the_tracker_and_the_log(one_worker_sft):
    """tests/conftest.py's SFT run with the default logger: ten steps, logged every step and
    evaluated every five."""
    out, progress = one_worker_sft
    expected = tracked_values(out)
    scalars = tensorboard_scalars(out)
    for key in ["loss", "heldout_loss", "tokens_per_s", "lr"]:
        assert [s for s, _ in scalars[key]] == [s for s, _ in expected[key]], key
        assert [v for _, v in scalars[key]] == pytest.approx([v for _, v in expected[key]], rel=1e-6), key
    assert [s for s, _ in expected["loss"]] == list(range(1, 11))
    assert [s for s, _ in expected["heldout_loss"]] == [0, 5, 10]
    # One progress line per record, relayed by the driver from the worker's file: an evaluated
    # step has its training line and its evaluation line.
    assert [line.split(" | ")[0] for line in progress] == [
        f"[sft] step {step}/10" for step in [0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 10]]
    assert any(line.startswith("[sft] step 10/10 | loss ") for line in progress)


def test_ray_train_report_carries_the_losses_of_its_checkpoint(one_worker_sft):
    from ray.train import Result
    out, _ = one_worker_sft
    records = read_metrics(out / "metrics.jsonl")
    reported = Result.from_path(out / "ray_train").metrics
    assert reported["step"] == 10
    assert reported["loss"] == [r["loss"] for r in records if "loss" in r][-1]
    assert reported["heldout_loss"] == [r["heldout_loss"] for r in records if "heldout_loss" in r][-1]


# ----------------------------------------------------------------------------- logs
def test_workers_skip_mlflow_and_the_driver_keeps_it(ray_cluster):
    """The driver holds the tracker; in a worker, DeepSpeed's optional mlflow import (~1 s of
    CPU) is skipped (actors/worker_setup.py)."""
    @ray_cluster.remote
    def mlflow_in_worker():
        import importlib.util
        return importlib.util.find_spec("mlflow")

    assert ray_cluster.get(mlflow_in_worker.remote()) is None
    import mlflow
    assert mlflow.active_run() is None


def test_ray_data_progress_bars_are_off_in_every_process_unless_the_user_turns_them_on(monkeypatch):
    """Without a terminal each refresh of a Ray Data bar is a console line of its own, and a
    Ray Train dataset's bar printed from its actor through every later phase."""
    from ray.data import DataContext
    from alignray.actors.runtime import RAY_DATA_PROGRESS_ENV, quiet_ray_data_console, worker_env
    monkeypatch.delenv(RAY_DATA_PROGRESS_ENV, raising=False)
    assert worker_env()[RAY_DATA_PROGRESS_ENV] == "1"
    quiet_ray_data_console()
    assert DataContext.get_current().enable_progress_bars is False
    monkeypatch.setenv(RAY_DATA_PROGRESS_ENV, "0")
    assert worker_env()[RAY_DATA_PROGRESS_ENV] == "0"
    quiet_ray_data_console()
    assert DataContext.get_current().enable_progress_bars is True
    monkeypatch.setenv(RAY_DATA_PROGRESS_ENV, "1")
    quiet_ray_data_console()


def test_ray_data_info_lines_go_to_its_log_file_and_warnings_still_to_the_console(capfd):
    from alignray.actors.runtime import quiet_ray_data_console
    quiet_ray_data_console()
    logging.getLogger("ray.data._internal.execution.streaming_executor").info("Starting execution of Dataset x")
    logging.getLogger("ray.data._internal.execution.streaming_executor").warning("a Ray Data warning")
    console = "".join(capfd.readouterr())
    assert "Starting execution" not in console and "a Ray Data warning" in console
    handlers = {h.name: h for h in logging.getLogger("ray.data").handlers}
    assert handlers["file"].level == logging.NOTSET  # ray-data.log keeps everything
