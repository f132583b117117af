"""Metrics for long jobs: a JSONL log, the phase's experiment tracker, a progress line
through `logging` (so Hydra's job log holds it), and curves as PNG."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

from alignray.core.artifacts import METRICS_FILE
from alignray.core.report import PAGE_CONTENT_PX
from alignray.core.tracking import Tracker, scalars

log = logging.getLogger(__name__)
progress_log = logging.getLogger("alignray.progress")


class MetricsLogger:
    """Appends one JSON object per `log` call to `<out_dir>/metrics.jsonl`, hands its numbers
    to `tracker` and logs a progress line with the rate and the estimated time left."""

    def __init__(self, out_dir: str | Path, total_steps: int | None = None, name: str = "",
                 tracker: Tracker | None = None):
        self.path = Path(out_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.total_steps = total_steps
        self.name = name
        self.tracker = tracker or Tracker()
        self.started = time.monotonic()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def log(self, step: int, print_keys: tuple[str, ...] = (), **metrics) -> None:
        record = {"step": int(step), "time_s": round(time.monotonic() - self.started, 3)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.publish(record, print_keys)

    def publish(self, record: dict, print_keys: tuple[str, ...] = ()) -> None:
        """Hand a record to the tracker; log its progress line when it holds any of `print_keys`."""
        self.tracker.log_metrics(scalars(record), record["step"])
        if any(k in record for k in print_keys):
            progress_log.info(self._progress_line(record, print_keys))

    def close(self) -> None:
        self.tracker.close()

    def _progress_line(self, record: dict, keys: tuple[str, ...]) -> str:
        step, elapsed = record["step"], record["time_s"]
        parts = [f"[{self.name}] step {step}" + (f"/{self.total_steps}" if self.total_steps else "")]
        parts += [f"{k} {record[k]:.4g}" if isinstance(record.get(k), float) else f"{k} {record.get(k)}"
                  for k in keys if k in record]
        if self.total_steps and step > 0:
            eta = elapsed / step * max(self.total_steps - step, 0)
            parts.append(f"elapsed {elapsed:.0f}s eta {eta:.0f}s")
        return " | ".join(parts)


@contextlib.contextmanager
def following(path: str | Path, publish: Callable[[dict], None], poll_s: float = 1.0):
    """While the block runs, hand every record another process appends to the metrics file
    `path` (a Ray Train worker's) to `publish`; the last ones once the block ends."""
    path = Path(path)
    offset = path.stat().st_size if path.exists() else 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal offset
        if not path.exists():
            return
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]  # a line being written waits for the next poll
        offset += len(complete)
        for line in complete.splitlines():
            publish(json.loads(line))

    def keep_polling() -> None:
        while not stop.wait(poll_s):
            try:
                poll()
            except Exception:  # the run goes on; the final poll raises if it persists
                log.exception("could not relay the metrics in %s", path)

    thread = threading.Thread(target=keep_polling, name=f"metrics-{path.parent.name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        poll()


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(records: list[dict], keys: list[str], out_png: str | Path, title: str = "",
                x_key: str = "step") -> Path | None:
    """One panel per key, drawn against `x_key`, in rows of at most three panels so the
    figure fits the report page at its own size; keys absent from the records are skipped.
    None, with a warning, where matplotlib is not installed (the GPU machines may lack it)."""
    keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in records)]
    out_png = Path(out_png)
    if not keys:
        raise ValueError(f"none of the keys to plot appear in the records for {out_png.name}")
    plt = _pyplot(out_png)
    if plt is None:
        return None
    columns = 2 if len(keys) == 4 else min(len(keys), 3)
    rows = math.ceil(len(keys) / columns)
    panel_width = min(5.0, (PAGE_CONTENT_PX - 10) / FIGURE_DPI / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(panel_width * columns, 2.8 * rows + (0.4 if title else 0)),
                             squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(r[x_key], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 40 else None)
        ax.set_title(key)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    return _save(plt, fig, out_png, title)


def stage_stack(records: list[dict], stages: list[str], total_key: str = "step_s",
                x_key: str = "step") -> tuple[list, dict[str, list[float]]]:
    """The steps, and per stage (``time/<stage>``, one after another) the seconds of each step,
    with "other" last: the rest of ``total_key``. Stages no record has are left out."""
    rows = [r for r in records if isinstance(r.get(total_key), (int, float))]
    stack = {stage: [float(r.get(f"time/{stage}", 0.0)) for r in rows] for stage in stages
             if any(isinstance(r.get(f"time/{stage}"), (int, float)) for r in rows)}
    stacked = [sum(seconds) for seconds in zip(*stack.values())] or [0.0] * len(rows)
    stack["other"] = [max(r[total_key] - s, 0.0) for r, s in zip(rows, stacked)]
    return [r[x_key] for r in rows], stack


def plot_stage_times(records: list[dict], stages: list[str], out_png: str | Path, title: str = "",
                     total_key: str = "step_s", x_key: str = "step") -> Path | None:
    """Where each step's wall time goes: one bar per step, stacked by ``stages`` (keys
    ``time/<stage>``, which must run one after another), the rest of ``total_key`` on top."""
    steps, stack = stage_stack(records, stages, total_key, x_key)
    out_png = Path(out_png)
    if len(stack) == 1:
        raise ValueError(f"none of the stages {stages} appear in the records for {out_png.name}")
    plt = _pyplot(out_png)
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(9.0, 4.0))
    bottom = [0.0] * len(steps)
    for stage, seconds in stack.items():
        ax.bar(steps, seconds, bottom=bottom, width=0.8, label=stage,
               color="lightgrey" if stage == "other" else None)
        bottom = [b + s for b, s in zip(bottom, seconds)]
    ax.set_xlabel(x_key)
    ax.xaxis.get_major_locator().set_params(integer=True)  # steps, not fractions of one
    ax.set_ylabel("seconds")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return _save(plt, fig, out_png, title)


# The report page shows a figure up to PAGE_CONTENT_PX wide at its own size; at 100 dpi
# matplotlib's 10-point text is then about 14 pixels high.
FIGURE_DPI = 100


def _pyplot(out_png: Path):
    try:
        import matplotlib
    except ModuleNotFoundError:
        log.warning("matplotlib is not installed: %s not drawn", out_png)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, out_png: Path, title: str) -> Path:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=FIGURE_DPI)
    plt.close(fig)
    return out_png


# Dense bf16 peak FLOP/s per device, by the name CUDA reports (spec sheets, SXM parts).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def peak_flops(device) -> float | None:
    """The device's peak, or None where unknown (CPUs); ALIGNRAY_PEAK_TFLOPS overrides."""
    import os

    import torch
    if os.environ.get("ALIGNRAY_PEAK_TFLOPS"):
        return float(os.environ["ALIGNRAY_PEAK_TFLOPS"]) * 1e12
    if getattr(device, "type", str(device)) != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def model_flops_utilization(params: int, tokens_per_s: float, device) -> float:
    """Achieved training FLOP/s (6 x params per token: forward and backward) over the
    device's peak; NaN where the peak is unknown."""
    peak = peak_flops(device)
    return 6 * params * tokens_per_s / peak if peak else math.nan


class StageTimes:
    """Wall seconds of the stages of one step, logged as ``time/<stage>``; a stage entered
    twice adds up."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        started = time.monotonic()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.monotonic() - started

    def record(self, results: dict, seconds: dict[str, float]) -> dict:
        """Note the seconds of work that ran in parallel; returns its results."""
        self.seconds |= seconds
        return results

    def metrics(self) -> dict[str, float]:
        return {f"time/{stage}": round(s, 3) for stage, s in self.seconds.items()}


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop the records an interrupted run logged after its last checkpoint: they are redone."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def trained_history(records: list[dict]) -> list[dict]:
    """The records of the steps the final model went through: a resume from step ``c``
    drops the earlier run's records after ``c`` (that work was lost with the interruption)."""
    kept: list[dict] = []
    for record in records:
        if record.get("event") == "resumed":
            kept = [r for r in kept if r["step"] <= record["step"]]
        kept.append(record)
    return kept
