"""New policy weights to the rollout pool: both ends and the driver, in one place.

After each update the workers must sample from the policy that was just trained. Three ways,
chosen per worker from where it and policy rank 0 run (``alignray.ppo.layout.sync_methods``):

- ``object_store``: rank 0 of the policy puts its state dict once, the workers read it;
- ``broadcast``: a torch.distributed group of policy rank 0 and the workers (NCCL between
  GPUs, gloo on CPU); NCCL refuses two ranks on one GPU;
- ``cuda_ipc``: a worker on the policy's own GPU opens CUDA IPC handles to the policy's
  weights and copies them, GPU memory to GPU memory (the way colocated systems do it).

``ppo.sync.method=auto`` picks ``cuda_ipc`` on the same GPU, ``broadcast`` between GPUs and
``object_store`` wherever one end is on a CPU; the choice is logged. A LoRA policy
(``ppo.policy.lora``) sends its adapter alone, through the object store, and each worker folds
it into its own copy of the base weights (``alignray.models.lora.AdapterMerger``). Each sync reports its
bytes, seconds and GB/s, then the pool must reproduce the policy's log-probs on a fixed probe
within ``ppo.sync.tolerance``: a worker with stale or corrupted weights stops the run.

- ``WeightSender``: the policy's end (mixed into ``PolicyActor``).
- ``WeightReceiver``: a rollout worker's end (mixed into ``RolloutWorker``).
- ``WeightSync``: the driver, which also restores a worker that Ray restarted.
"""
from __future__ import annotations

import datetime
import logging
import time
from typing import TYPE_CHECKING, Iterable

import ray
import torch
from torch import Tensor

from alignray.actors.base import ActorGroup, wait_named
from alignray.config.ppo import SyncConfig
from alignray.models import lora
from alignray.ppo.layout import sync_methods

if TYPE_CHECKING:
    from alignray.actors.rollout import RolloutPool

log = logging.getLogger(__name__)
SYNC_TIMEOUT = datetime.timedelta(minutes=2)
Probe = tuple[Tensor, Tensor, Tensor, Tensor]  # prompt ids/mask, response ids/mask


class WeightSyncError(RuntimeError):
    """The rollout pool does not reproduce the policy's log-probs after a weight sync."""


# ----------------------------------------------------------------------------- both ends
def named_weights(model: torch.nn.Module) -> Iterable[tuple[str, Tensor]]:
    """Parameters then buffers, in the module's order: both ends of a sync walk the same list
    (tied weights appear once)."""
    yield from model.named_parameters()
    yield from model.named_buffers()


@torch.no_grad()
def load_named_weights(model: torch.nn.Module, state: dict[str, Tensor]) -> None:
    """Copy ``state`` into ``model`` in place; every parameter must be there."""
    own = dict(named_weights(model))
    missing = sorted(set(own) - set(state))
    if missing:
        raise KeyError(f"weights missing from the policy's state: {missing[:5]}")
    for name, tensor in own.items():
        tensor.copy_(state[name].to(tensor.device, tensor.dtype))


def open_sync_group(master_addr: str, master_port: int, rank: int, world_size: int):
    """A process group for weight broadcast alone, outside any DeepSpeed world: rank 0 is
    the policy's rank 0, ranks 1.. the rollout workers. Gloo on CPU, NCCL on GPU."""
    store = torch.distributed.TCPStore(master_addr, master_port, world_size, is_master=rank == 0,
                                       timeout=SYNC_TIMEOUT)
    if torch.cuda.is_available():
        return torch.distributed.ProcessGroupNCCL(store, rank, world_size)
    return torch.distributed.ProcessGroupGloo(store, rank, world_size, SYNC_TIMEOUT)


def broadcast_tensor(group, tensor: Tensor) -> None:
    options = torch.distributed.BroadcastOptions()
    options.rootRank = 0
    group.broadcast([tensor], options).wait()


class WeightSender:
    """The policy's end; needs ``self.engine`` (DeepSpeed) and ``self.rank``."""

    def export_weights(self) -> dict[str, Tensor] | None:
        """The full weights on CPU from rank 0, or a LoRA policy's adapter (None from the
        other ranks); collective."""
        from alignray.models import deepspeed_strategy as ds
        if lora.is_lora(self.engine.module):
            return lora.adapter_state(self.engine.module) if self.rank == 0 else None
        return ds.gathered_state_dict(self.engine)

    def sync_payload(self) -> tuple[int, bool]:
        """What each sync delivers to each worker: its bytes (one full copy of the weights, or
        the LoRA adapter), and whether it is the adapter alone."""
        module = self.engine.module
        if lora.is_lora(module):
            return lora.adapter_bytes(module), True
        return sum(getattr(t, "ds_numel", t.numel()) * t.element_size() for _, t in named_weights(module)), False

    def probe_logprobs(self, prompt_ids, prompt_mask, response_ids) -> Tensor:
        """The log-probs the pool must reproduce: the policy's own, or a LoRA policy's as the
        workers' merged weights compute them (bf16 rounds a merge differently from the
        adapter's separate path, which is not a stale worker). Needs ``self.logprobs``."""
        module = self.engine.module
        if not lora.is_lora(module):
            return self.logprobs(prompt_ids, prompt_mask, response_ids)
        with lora.as_merged(module):
            return self.logprobs(prompt_ids, prompt_mask, response_ids)

    def open_sync_group(self, master_addr: str, master_port: int, world_size: int) -> None:
        """Rank 0 of the policy is rank 0 of the weight-broadcast group."""
        self.sync_group = open_sync_group(master_addr, master_port, 0, world_size)

    def ipc_handles(self) -> dict[str, tuple]:
        """CUDA IPC handles to rank 0's weights (they stay alive in the module while read)."""
        from torch.multiprocessing.reductions import reduce_tensor
        return {name: reduce_tensor(tensor.detach()) for name, tensor in named_weights(self.engine.module)}

    def broadcast_weights(self) -> None:
        import deepspeed
        if self.rank != 0:
            return
        for _, tensor in named_weights(self.engine.module):
            partitioned = [tensor] if hasattr(tensor, "ds_id") else []  # ZeRO-3 shards
            with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
                broadcast_tensor(self.sync_group, tensor.data.contiguous())


class WeightReceiver:
    """A rollout worker's end; needs ``self.model``, ``self.weights_version`` (the policy
    updates its weights hold; 0: the weights it was created with) and ``self.adapter`` (a
    ``lora.AdapterMerger`` for a LoRA policy, else None)."""

    def load_weights(self, state: dict[str, Tensor], version: int) -> int:
        if self.adapter is not None:
            self.adapter.merge(state)
        else:
            load_named_weights(self.model, state)
        self.weights_version = version
        return version

    def open_sync_group(self, master_addr: str, master_port: int, rank: int, world_size: int) -> None:
        self.sync_group = open_sync_group(master_addr, master_port, rank, world_size)

    @torch.no_grad()
    def receive_weights(self, version: int) -> int:
        for _, tensor in named_weights(self.model):
            received = torch.empty_like(tensor)
            broadcast_tensor(self.sync_group, received)
            tensor.copy_(received)
        self.weights_version = version
        return version

    @torch.no_grad()
    def copy_from_ipc(self, handles: dict[str, tuple], version: int) -> int:
        """Copy the policy's weights from its GPU memory, through the handles of ``ipc_handles``."""
        device = torch.cuda.current_device()
        for name, tensor in named_weights(self.model):
            rebuild, args = handles[name]
            args = list(args)
            args[6] = device  # storage_device: the GPU in this process's numbering
            tensor.copy_(rebuild(*args))
        torch.cuda.synchronize()
        self.weights_version = version
        return version

    def version(self) -> int:
        return self.weights_version


# ----------------------------------------------------------------------------- driver
class WeightSync:
    def __init__(self, policy: ActorGroup, pool: RolloutPool, probe: Probe, settings: SyncConfig,
                 placements: dict[str, dict]):
        """``placements``: each actor's ``placement()`` by name (``policy0``, ``rollout0``...),
        as the launch recorded them; a restarted worker lands where it was."""
        self.policy, self.pool, self.probe, self.settings = policy, pool, probe, settings
        self.bytes_per_worker, adapter_only = ray.get(policy.actors[0].sync_payload.remote())
        self.latest_weights: ray.ObjectRef | None = None  # object-store mode keeps the last state
        self.group_formed_at_restarts: int | None = None  # pool restarts when the group formed
        workers = [placements[f"rollout{i}"] for i in range(len(pool))]
        self.methods = sync_methods(settings.method, placements["policy0"], workers, adapter_only)
        log.info("weight sync (ppo.sync.method=%s) of %s, %d bytes per worker, policy on %s: %s", settings.method,
                 "the LoRA adapter" if adapter_only else "the full weights", self.bytes_per_worker,
                 placements["policy0"]["device"],
                 ", ".join(f"worker {i} {m} ({w['device']})" for i, (m, w) in enumerate(zip(self.methods, workers))))

    def workers(self, method: str) -> list:
        return [actor for actor, m in zip(self.pool.actors, self.methods) if m == method]

    def sync(self, version: int) -> dict[str, float]:
        """Deliver the policy's weights to every worker and check them on the probe; returns
        the sync's metrics (bytes per worker, transfer seconds and GB/s over all workers)."""
        started = time.monotonic()
        self.latest_weights = None
        done = []
        if self.workers("object_store"):
            self.latest_weights = self.export_weights()
            done += [w.load_weights.remote(self.latest_weights, version) for w in self.workers("object_store")]
        if self.workers("cuda_ipc"):
            handles = self.policy.actors[0].ipc_handles.remote()
            done += [w.copy_from_ipc.remote(handles, version) for w in self.workers("cuda_ipc")]
        if self.workers("broadcast"):
            if self.group_formed_at_restarts != self.pool.restarts:  # a restarted worker left the old group
                self.form_group()
            senders = {f"policy{i}": r for i, r in enumerate(self.policy.call("broadcast_weights"))}
            # submitted before waiting: the broadcast is collective
            done += [w.receive_weights.remote(version) for w in self.workers("broadcast")]
            wait_named(senders)
        ray.get(done)
        self.pool.version = version
        transfer = time.monotonic() - started
        started = time.monotonic()
        probe_error = self.check_probe()
        return {"probe_max_abs_diff": probe_error, "sync/bytes_per_worker": self.bytes_per_worker,
                "sync/gb_per_s": self.bytes_per_worker * len(self.pool) / transfer / 1e9,
                "time/sync": round(transfer, 4), "time/sync_probe": round(time.monotonic() - started, 4)}

    def restore(self, worker) -> None:
        """Give a worker that Ray restarted (it holds the weights it was created with) the
        pool's current weights; waits for the restart."""
        if self.pool.version == 0:  # the SFT weights it starts with are current
            ray.get(worker.version.remote())
            return
        if self.latest_weights is None:  # broadcast mode keeps no copy
            self.latest_weights = self.export_weights()
        ray.get(worker.load_weights.remote(self.latest_weights, self.pool.version))

    def export_weights(self) -> ray.ObjectRef:
        refs = self.policy.call("export_weights")  # collective; rank 0's holds them
        wait_named({f"policy{i}": ref for i, ref in enumerate(refs[1:], start=1)})
        return refs[0]

    def form_group(self) -> None:
        """Policy rank 0 and the broadcast workers, in a process group of their own."""
        policy0, receivers = self.policy.actors[0], self.workers("broadcast")
        address, port = ray.get(policy0.rendezvous.remote())  # a fresh free port on its node
        world = len(receivers) + 1
        ray.get([policy0.open_sync_group.remote(address, port, world),
                 *[w.open_sync_group.remote(address, port, rank, world) for rank, w in enumerate(receivers, 1)]])
        self.group_formed_at_restarts = self.pool.restarts

    def check_probe(self) -> float:
        """The largest log-prob difference between any worker and the policy on the probe."""
        prompt_ids, prompt_mask, response_ids, mask = self.probe
        expected = wait_named({"policy0": self.policy.actors[0].probe_logprobs.remote(
            prompt_ids, prompt_mask, response_ids)})[0]["policy0"]
        worst = 0.0
        for i, got in enumerate(ray.get(self.pool.call("logprobs", prompt_ids, prompt_mask, response_ids))):
            diff = (got - expected)[mask].abs().max().item()
            if not diff <= self.settings.tolerance:
                raise WeightSyncError(f"rollout worker {i} log-probs differ from the policy's by {diff:.2e} "
                                      f"(> ppo.sync.tolerance {self.settings.tolerance:.1e}) after a weight sync")
            worst = max(worst, diff)
        return worst
