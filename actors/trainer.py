"""The Ray Train loop shared by every phase that trains a model on a dataset (SFT, the
reward model): a `TorchTrainer` whose workers each drive one process of the project's
DeepSpeed strategy.

What differs between phases is a `TrainTask` (build the model, collate rows, compute the
loss); the loop around it is the same: data position, loss normalisation over the global
batch, held-out evaluation, checkpoints through Ray Train, progress and metrics.

Data contract. ``datasets`` holds ``"train"`` and ``"heldout"`` Ray Datasets whose rows
carry ``example_id``, the row's position (0, 1, 2...) in a fixed, seeded order. Every
worker reads the whole stream (`get_dataset_shard` of an unsplit dataset, order preserved)
and keeps its own slice of each global batch: global batch ``k`` is rows
``[k*B, (k+1)*B)`` and rank ``r`` trains on the ``r``-th of its equal chunks. Hence
- the global batches are the same for 1 or N workers (only the arithmetic differs),
- the data position is just ``(epoch, batches done)``: a resumed run skips exactly the
  batches the checkpoint had trained, whatever the worker count or block layout,
- a rank checks the ``example_id`` of every row it trains on, so a reordering upstream is
  an error instead of silently repeated or skipped data.
An epoch's last, incomplete global batch is not trained (its rows are counted in the
driver's report). Held-out rows are split by ``example_id % world_size``.

Loss contract. ``task.loss(model, batch)`` returns ``(loss_sum, sums)``: the loss summed
over the batch's units (response tokens for SFT, pairs for a reward model) and a dict of
sums with ``"units"`` (how many units) and optionally ``"tokens"`` (tokens processed, for
throughput); any other entry is a per-unit metric's sum, reported as a mean over units.
The loop divides ``loss_sum`` by the units of the *global* batch, so each unit weighs
the same whatever the number of workers.

Storage. Checkpoints go to ``<storage_dir>/ray_train`` and rank 0 appends metrics to
``<storage_dir>/metrics.jsonl``: on a multi-node cluster that folder must be on storage
every node sees (NFS or similar), as Ray Train requires of a local ``storage_path``.

Metrics. The driver follows that file while the workers train and hands each record to
the phase's experiment tracker and its progress line to `logging`: Hydra's job log and the
tracker see the workers' metrics, and the console shows one progress line per record.
Every checkpoint's `ray.train.report` carries the latest training and held-out metrics.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import torch
from ray.data import ExecutionOptions
from ray.train import (Checkpoint, CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig,
                       ScalingConfig)
from ray.train.torch import TorchTrainer

from alignray.actors.runtime import wait_for_capacity
from alignray.models import deepspeed_strategy as strategy
from alignray.core.artifacts import METRICS_FILE, MODEL_DIR, RAY_TRAIN_DIR
from alignray.core.metrics import MetricsLogger, following
from alignray.core.train_loop import DataPosition, TrainLoopConfig, TrainTask
from alignray.models.modeling import load_tokenizer
from alignray.core.tracking import TrackingSettings, open_tracker

RUN_NAME = RAY_TRAIN_DIR  # the Ray Train run folder inside a phase's output folder
# What a progress line shows of a worker's record (each record holds some of them)
log = logging.getLogger(__name__)
PROGRESS_KEYS = ("event", "loss", "heldout_loss", "tokens_per_s", "lr", "epoch", "batches_done")
DEEPSPEED_DIR = "deepspeed"  # DeepSpeed state inside each checkpoint


class TrainingInterrupted(RuntimeError):
    """Training ended before its last step; its checkpoints stay for a resume."""


# ----------------------------------------------------------------------------- the driver
def fit(task: TrainTask, loop: TrainLoopConfig, datasets: dict, cluster_cfg,
        storage_dir: Path, tracking: TrackingSettings | None = None) -> ray.train.Result:
    """Run the loop on ``cluster_cfg.num_workers`` workers. The run lives in
    ``<storage_dir>/ray_train``; if a checkpoint of an earlier run is there, Ray Train
    hands it to the workers and training continues from it. The workers' metrics go to the
    tracker of `tracking` and to `logging` as they arrive. Returns the result once the
    last step is checkpointed; raises `TrainingInterrupted` otherwise."""
    if loop.global_batch_size % cluster_cfg.num_workers:
        raise ValueError(f"the global batch size {loop.global_batch_size} must divide evenly over "
                         f"{cluster_cfg.num_workers} workers")
    if not loop.resume:
        shutil.rmtree(run_folder(storage_dir), ignore_errors=True)
        (Path(loop.metrics_dir) / METRICS_FILE).unlink(missing_ok=True)
    loop = dataclasses.replace(loop, threads=int(cluster_cfg.train_threads))
    if loop.eval_rows:
        log.info("%s: each held-out evaluation reads at most the first %d rows", task.name, loop.eval_rows)
        datasets = datasets | {"heldout": datasets["heldout"].limit(loop.eval_rows)}
    resources = {"CPU": cluster_cfg.cpus_per_worker}
    if cluster_cfg.use_gpu:
        resources["GPU"] = 1
    # Ray Train waits for its workers without end; stop instead with what is missing
    wait_for_capacity(f"{cluster_cfg.num_workers} Ray Train workers", [resources] * cluster_cfg.num_workers,
                      float(cluster_cfg.placement_timeout_s))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"task": task, "loop": loop},
        scaling_config=ScalingConfig(num_workers=cluster_cfg.num_workers, use_gpu=cluster_cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=RUN_NAME, storage_path=str(Path(storage_dir).resolve()),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=0),
                             # Ray Train's INFO lines (worker group started, every checkpoint and
                             # report) to its log files: the console keeps the progress lines
                             logging_config=LoggingConfig(log_level="WARNING")),
        # Unsplit, in order: every worker selects its rows by example_id (module docstring).
        dataset_config=DataConfig(datasets_to_split=[],
                                  execution_options=ExecutionOptions(preserve_order=True)),
        datasets=datasets,
    )
    tracker = open_tracker(tracking, loop.metrics_dir, Path(loop.metrics_dir).name)
    relay = MetricsLogger(loop.metrics_dir, total_steps=loop.total_steps, name=task.name, tracker=tracker)
    with relay, following(relay.path, lambda record: relay.publish(record, PROGRESS_KEYS)):
        result = trainer.fit()
    reached = (result.metrics or {}).get("step", 0)
    if reached < loop.total_steps:
        raise TrainingInterrupted(f"training stopped at step {reached} of {loop.total_steps}; "
                                  f"run again to resume from the last checkpoint in {run_folder(storage_dir)}")
    return result


def run_folder(storage_dir: Path) -> Path:
    return Path(storage_dir) / RUN_NAME


def copy_final_model(result: ray.train.Result, out_dir: Path) -> Path:
    """The Hugging Face model of the last checkpoint, copied to ``<out_dir>/model``."""
    model_dir = Path(out_dir) / MODEL_DIR
    shutil.rmtree(model_dir, ignore_errors=True)
    with result.checkpoint.as_directory() as checkpoint:
        shutil.copytree(Path(checkpoint) / MODEL_DIR, model_dir)
    return model_dir


# ----------------------------------------------------------------------------- the workers
def train_loop_per_worker(config: dict) -> None:
    TrainingWorker(config["task"], config["loop"]).run()


class TrainingWorker:
    """One rank of the loop. Collectives (the per-step all-reduce, DeepSpeed's own,
    checkpoints, evaluation) happen in the same order on every rank."""

    def __init__(self, task: TrainTask, loop: TrainLoopConfig):
        self.task, self.loop = task, loop
        if not torch.cuda.is_available():  # Ray leaves one thread per worker; a CPU node has more
            local_workers = ray.train.get_context().get_local_world_size()
            torch.set_num_threads(loop.threads or max(1, (os.cpu_count() or 1) // local_workers))
        strategy.init_distributed_if_needed()
        self.rank, self.world = strategy.world_rank(), strategy.world_size()
        self.micro_batch = loop.global_batch_size // self.world
        torch.manual_seed(loop.seed)  # the same initial weights (e.g. a new head) on every rank
        model = task.build_model(loop.model_path)
        self.tokenizer = load_tokenizer(loop.model_path)
        self.engine = strategy.build_engine(model, loop.deepspeed, lr=loop.lr,
                                            total_steps=loop.total_steps,
                                            warmup_steps=loop.warmup_steps,
                                            micro_batch_size=self.micro_batch)
        torch.manual_seed(loop.seed + 1 + self.rank)  # dropout differs between ranks
        self.device = self.engine.device
        # rank 0 writes the file; the driver follows it (module docstring)
        self.metrics = MetricsLogger(loop.metrics_dir, name=task.name) if self.rank == 0 else None
        self.latest: dict[str, float] = {}  # the last training and held-out metrics, for Ray Train
        self.position = DataPosition()
        self._evaluated_at = self._checkpointed_at = -1  # steps at which each last happened

    @property
    def step(self) -> int:
        return self.engine.global_steps

    def run(self) -> None:
        self.position = self._restore()
        if self.step == 0:
            self._evaluate()  # the starting model's held-out loss
        train = ray.train.get_dataset_shard("train")
        while self.step < self.loop.total_steps and self.position.epoch < self.loop.epochs:
            if not self._train_epoch(train):
                return  # the interruption drill: leave as a killed job would
        self._evaluate()
        self._checkpoint()

    def _restore(self) -> DataPosition:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return DataPosition()
        with checkpoint.as_directory() as folder:
            state = strategy.load_checkpoint(self.engine, Path(folder) / DEEPSPEED_DIR)
        position = DataPosition(**state)
        self._checkpointed_at = self.step
        if self.metrics:
            self.metrics.log(self.step, event="resumed", **dataclasses.asdict(position))
        return position

    def _train_epoch(self, train) -> bool:
        """Train the rest of the current epoch. False if the interruption drill fired."""
        epoch, skip = self.position.epoch, self.position.batches_done
        window = _Throughput()
        batches = train.iter_batches(batch_size=self.loop.global_batch_size, batch_format="numpy",
                                     drop_last=True)
        seen = 0
        for index, global_batch in enumerate(batches):
            seen += 1
            if index < skip:
                continue
            window.add(self._train_step(global_batch, first_id=index * self.loop.global_batch_size))
            self.position = DataPosition(epoch, index + 1)
            if self.step % self.loop.log_every == 0 or self.step == self.loop.total_steps:
                self._log_train(window, epoch)
                window = _Throughput()
            if self.step == self.loop.interrupt_after_steps:
                return False
            if self.step >= self.loop.total_steps:
                return True
            paused = time.monotonic()  # evaluation and checkpoints do not count against tokens/s
            if self.loop.eval_every and self.step % self.loop.eval_every == 0:
                self._evaluate()
            if self.loop.checkpoint_every and self.step % self.loop.checkpoint_every == 0:
                self._checkpoint()
            window.started += time.monotonic() - paused
        if seen != self.loop.steps_per_epoch:
            raise RuntimeError(f"epoch {epoch} had {seen} global batches, the driver counted "
                               f"{self.loop.steps_per_epoch}")
        self.position = DataPosition(epoch + 1, 0)
        self._evaluate()
        self._checkpoint()
        return True

    def _train_step(self, global_batch: dict[str, np.ndarray], first_id: int) -> dict[str, float]:
        batch = self.task.collate(self._my_rows(global_batch, first_id), self.device)
        self.engine.train()
        loss_sum, sums = self.task.loss(self.engine, batch)
        totals = self._all_reduce(loss_sum.detach(), sums)
        # DeepSpeed averages gradients over ranks: scaling by world / global units makes
        # the gradient that of the mean over every unit of the global batch.
        grad_norm = strategy.backward_and_step(self.engine, loss_sum * self.world / totals["units"])
        if grad_norm is not None:
            totals["grad_norm"] = grad_norm
        return totals

    def _my_rows(self, global_batch: dict[str, np.ndarray], first_id: int) -> dict[str, np.ndarray]:
        start = self.rank * self.micro_batch
        rows = {name: column[start:start + self.micro_batch] for name, column in global_batch.items()}
        expected = np.arange(first_id + start, first_id + start + self.micro_batch)
        if not np.array_equal(rows["example_id"], expected):
            raise RuntimeError(f"rank {self.rank} got example ids {rows['example_id'][:4]}... where "
                               f"{expected[:4]}... were due: the dataset did not arrive in order")
        return rows

    def _all_reduce(self, loss_sum: torch.Tensor, sums: dict[str, float]) -> dict[str, float]:
        """Sum the loss and every entry of ``sums`` over all ranks (one collective)."""
        names = ["loss_sum"] + sorted(sums)
        values = torch.tensor([float(loss_sum)] + [float(sums[n]) for n in names[1:]],
                              dtype=torch.float64, device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(values)
        return dict(zip(names, values.tolist()))

    @torch.no_grad()
    def _evaluate(self) -> None:
        """Loss on the held-out set, each rank on the rows with ``example_id % world == rank``.
        Every rank runs the same number of forward passes (ZeRO-3 gathers weights inside
        them): a rank with no rows in a batch computes on a filler row and discards it."""
        if self._evaluated_at == self.step:
            return
        self._evaluated_at = self.step
        self.engine.eval()
        heldout = ray.train.get_dataset_shard("heldout")
        totals: dict[str, float] = {}
        for global_batch in heldout.iter_batches(batch_size=self.loop.global_batch_size, batch_format="numpy"):
            mine = np.flatnonzero(global_batch["example_id"] % self.world == self.rank)
            weight = 1.0 if len(mine) else 0.0  # 0: a filler row, computed and not counted
            rows = {name: column[mine if len(mine) else [0]] for name, column in global_batch.items()}
            loss_sum, sums = self.task.loss(self.engine, self.task.collate(rows, self.device))
            for name, value in {"loss_sum": float(loss_sum), **sums}.items():
                totals[name] = totals.get(name, 0.0) + weight * value
        totals = self._all_reduce(torch.tensor(totals.pop("loss_sum")), totals)
        units = totals["units"]
        record = {"heldout_loss": totals["loss_sum"] / units, "heldout_units": int(units)}
        record |= {f"heldout_{k}": v / units for k, v in totals.items() if k not in ("loss_sum", "units", "tokens")}
        self._record(record)

    def _log_train(self, window: "_Throughput", epoch: int) -> None:
        self._record(window.summary() | {"epoch": epoch, "lr": strategy.current_lr(self.engine)})

    def _record(self, record: dict) -> None:
        """Every rank keeps the latest metrics (all-reduced, so equal) for Ray Train; rank 0 logs them."""
        self.latest |= record
        if self.metrics:
            self.metrics.log(self.step, **record)

    def _checkpoint(self) -> None:
        """Save DeepSpeed state (every rank its shards) and the Hugging Face model (rank 0),
        and hand the folder to Ray Train, which merges the ranks' folders in storage."""
        if self._checkpointed_at == self.step:
            return
        self._checkpointed_at = self.step
        with tempfile.TemporaryDirectory(prefix="alignray-ckpt-") as folder:
            strategy.save_checkpoint(self.engine, Path(folder) / DEEPSPEED_DIR,
                                     dataclasses.asdict(self.position))
            strategy.export_hf(self.engine, self.tokenizer, Path(folder) / MODEL_DIR)
            ray.train.report({"step": self.step} | self.latest, checkpoint=Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"checkpoint_step{self.step:07d}")


class _Throughput:
    """Train-loss and token sums over the steps since the last progress line."""

    def __init__(self):
        self.started = time.monotonic()
        self.totals: dict[str, float] = {}
        self.steps = 0
        self.grad_norm: float | None = None

    def add(self, totals: dict[str, float]) -> None:
        totals = dict(totals)
        self.grad_norm = totals.pop("grad_norm", None)  # the latest step's, not a sum
        self.totals = {k: self.totals.get(k, 0.0) + v for k, v in totals.items()}
        self.steps += 1

    def summary(self) -> dict[str, float]:
        seconds = max(time.monotonic() - self.started, 1e-9)
        units = self.totals["units"]
        record = {"loss": self.totals["loss_sum"] / units, "units_per_step": units / self.steps}
        if "tokens" in self.totals:
            record["tokens_per_s"] = self.totals["tokens"] / seconds
        record.update({k: v / units for k, v in self.totals.items() if k not in ("loss_sum", "units", "tokens")})
        if self.grad_norm is not None:
            record["grad_norm"] = self.grad_norm
        return record
