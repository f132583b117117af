"""New policy weights to the rollout pool (driver side), measured and checked.

After each update the workers must sample from the policy that was just trained. Three ways:
``object_store`` (rank 0 of the policy puts its state dict once, every worker reads it),
``broadcast`` (a torch.distributed group of policy rank 0 and every worker: NCCL between
GPUs, gloo on CPU) and ``auto`` (broadcast when the policy is on a GPU). Each sync reports
its bytes, seconds and GB/s, then the pool must reproduce the policy's log-probs on a fixed
probe within ``ppo.sync_tolerance``: a worker with stale or corrupted weights stops the run.
"""
from __future__ import annotations

import time

import ray
import torch

from actors.base import ActorGroup, wait_named
from actors.rollout import RolloutPool
from alignray.config.ppo import PPOConfig

Probe = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # prompt ids/mask, response ids/mask


class WeightSyncError(RuntimeError):
    """The rollout pool does not reproduce the policy's log-probs after a weight sync."""


class WeightSync:
    def __init__(self, policy: ActorGroup, pool: RolloutPool, probe: Probe, ppo: PPOConfig):
        self.policy, self.pool, self.probe, self.ppo = policy, pool, probe, ppo
        policy0 = policy.actors[0]
        self.bytes_per_worker = ray.get(policy0.weight_bytes.remote())
        self.policy_device = ray.get(policy0.placement.remote())["device"]
        self.latest_weights: ray.ObjectRef | None = None  # object-store mode keeps the last state
        self.group_formed_at_restarts: int | None = None  # pool restarts when the group formed
        pool.current_weights = self.current_weights  # what a restarted worker is given

    def mode(self) -> str:
        mode = self.ppo.weight_sync
        if mode == "auto":  # NCCL broadcast between GPUs; on CPU the object store is as fast
            return "broadcast" if self.policy_device.startswith("cuda") else "object_store"
        if mode not in ("object_store", "broadcast"):
            raise ValueError(f"ppo.weight_sync must be auto, object_store or broadcast, not {mode!r}")
        return mode

    def sync(self, version: int) -> dict[str, float]:
        """Deliver the policy's weights to every worker and check them on the probe; returns
        the sync's metrics (bytes per worker, transfer seconds and GB/s over all workers)."""
        pool, mode = self.pool, self.mode()
        started = time.monotonic()
        if mode == "object_store":
            self.latest_weights = self.export_weights()
            ray.get(pool.call("load_weights", self.latest_weights, version))
        else:
            self.latest_weights = None
            if self.group_formed_at_restarts != pool.restarts:  # a restarted worker left the old group
                self.form_group()
            senders = {f"policy{i}": r for i, r in enumerate(self.policy.call("broadcast_weights"))}
            receivers = pool.call("receive_weights", version)  # submitted before waiting: collective
            wait_named(senders)
            ray.get(receivers)
        pool.version = version
        transfer = time.monotonic() - started
        started = time.monotonic()
        probe_error = self.check_probe()
        return {"probe_max_abs_diff": probe_error, "sync/bytes_per_worker": self.bytes_per_worker,
                "sync/gb_per_s": self.bytes_per_worker * len(pool) / transfer / 1e9,
                "time/sync": round(transfer, 4), "time/sync_probe": round(time.monotonic() - started, 4)}

    def current_weights(self) -> ray.ObjectRef | None:
        """For a restarted rollout worker: the weights the pool should hold now."""
        if self.pool.version == 0:
            return None  # the SFT weights it starts with
        if self.latest_weights is None:  # broadcast mode keeps no copy
            self.latest_weights = self.export_weights()
        return self.latest_weights

    def export_weights(self) -> ray.ObjectRef:
        refs = self.policy.call("export_weights")  # collective; rank 0's holds them
        wait_named({f"policy{i}": ref for i, ref in enumerate(refs[1:], start=1)})
        return refs[0]

    def form_group(self) -> None:
        policy0, pool = self.policy.actors[0], self.pool
        address, port = ray.get(policy0.rendezvous.remote())  # a fresh free port on its node
        world = len(pool) + 1
        ray.get([policy0.open_sync_group.remote(address, port, world),
                 *pool.call_each("open_sync_group", [(address, port, rank, world) for rank in range(1, world)])])
        self.group_formed_at_restarts = pool.restarts

    def check_probe(self) -> float:
        """The largest log-prob difference between any worker and the policy on the probe."""
        prompt_ids, prompt_mask, response_ids, mask = self.probe
        expected = wait_named({"policy0": self.policy.actors[0].logprobs.remote(
            prompt_ids, prompt_mask, response_ids)})[0]["policy0"]
        worst = 0.0
        for i, got in enumerate(ray.get(self.pool.call("logprobs", prompt_ids, prompt_mask, response_ids))):
            diff = (got - expected)[mask].abs().max().item()
            if not diff <= self.ppo.sync_tolerance:
                raise WeightSyncError(f"rollout worker {i} log-probs differ from the policy's by {diff:.2e} "
                                      f"(> ppo.sync_tolerance {self.ppo.sync_tolerance:.1e}) after a weight sync")
            worst = max(worst, diff)
        return worst
