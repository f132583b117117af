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

from alignray.artifacts import METRICS_FILE
from alignray.tracking import Tracker, scalars

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
    """One panel per key, drawn against `x_key`; keys absent from the records are skipped.
    None, with a warning, where matplotlib is not installed (the GPU machines may lack it)."""
    keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in records)]
    out_png = Path(out_png)
    if not keys:
        raise ValueError(f"none of the keys to plot appear in the records for {out_png.name}")
    try:
        import matplotlib
    except ModuleNotFoundError:
        log.warning("matplotlib is not installed: %s not drawn", out_png)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r[x_key], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 40 else None)
        ax.set_title(key)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
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
    """Wall seconds of the stages of one step, logged as ``time/<stage>``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        started = time.monotonic()
        yield
        self.seconds[stage] = time.monotonic() - started

    def record(self, results: dict, seconds: dict[str, float]) -> dict:
        """Note the seconds of work that ran in parallel; returns its results."""
        self.seconds |= seconds
        return results

    def metrics(self) -> dict[str, float]:
        return {f"time/{stage}": round(s, 3) for stage, s in self.seconds.items()}
