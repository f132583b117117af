"""What the PPO actors share.

- ``ModelActor``: every role. Picks the device from torch (never from Ray's GPU ids: on a
  CPU machine with logical GPUs, CUDA_VISIBLE_DEVICES is set but there is no GPU), reports
  where Ray placed it, and computes log-probs of given responses.
- ``TrainableActor``: the policy and the critic. One process of a data-parallel DeepSpeed
  world (a group of actors of one role), with checkpoints and collective helpers.
- ``ActorGroup``: the driver's handle on the actors of one role.
"""
from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from typing import Any, Callable

import ray
import torch
from torch import Tensor

from alignray.ppo.experience import Experience
from alignray.models.generation import response_logits, token_logprobs
from alignray.models.modeling import pick_device
from alignray.ppo import length_sorted_parts, micro_batch_count


class ModelActor:
    role = "model"

    def __init__(self, seed: int = 0):
        self.init_started = time.monotonic()
        torch.manual_seed(seed)
        self.device = pick_device()

    def placement(self) -> dict[str, Any]:
        """Where Ray put this actor: its accelerator ids, placement group and node, its torch
        threads, and ``init_s``: the seconds since its ``__init__`` began (its model loaded),
        which is the length of ``__init__`` on the first call (the launch's, queued behind it)."""
        context = ray.get_runtime_context()
        pg_id = context.get_placement_group_id()
        return {"role": self.role, "pid": os.getpid(), "node_id": context.get_node_id(),
                "accelerator_ids": context.get_accelerator_ids(), "placement_group_id": pg_id,
                "device": str(self.device), "torch_threads": torch.get_num_threads(),
                "init_s": round(time.monotonic() - self.init_started, 3)}

    def _to_device(self, *tensors: Tensor) -> list[Tensor]:
        return [t.to(self.device) for t in tensors]

    @torch.no_grad()
    def _logprobs(self, model, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                  temperature: float) -> Tensor:
        prompt_ids, prompt_mask, response_ids = self._to_device(prompt_ids, prompt_mask, response_ids)
        logits = response_logits(model, prompt_ids, prompt_mask, response_ids)
        return token_logprobs(logits, response_ids, temperature).cpu()


class TrainableActor(ModelActor):
    """One rank of a role's DeepSpeed world; subclasses set ``self.update`` (the PPO-wide
    settings of an update), ``self.model`` and ``self.lr``, and ``setup`` wraps the model in the engine."""

    def __init__(self, rank: int, world_size: int, seed: int = 0):
        super().__init__(seed)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.engine = None
        self.trained_tokens, self.training_seconds = 0, 0.0  # since the last throughput()

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0 names the address every rank of the world connects to."""
        from alignray.models import deepspeed_strategy as ds
        address = ray.util.get_node_ip_address()
        return address, ds.free_port(address)

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the role's world (rank 0 named the address) and build the DeepSpeed engine."""
        from alignray.models import deepspeed_strategy as ds
        ds.init_distributed(self.rank, self.world_size, master_addr, master_port)
        per_rank = math.ceil(self.update.rows_per_step / self.world_size)
        self.engine = ds.build_engine(self.model, self.update.deepspeed, lr=self.lr, total_steps=0, warmup_steps=0,
                                      micro_batch_size=math.ceil(per_rank / self.update.minibatches))

    def _world_mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks, so every rank takes the same decision."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.item() / self.world_size

    def _world_max(self, value: int) -> int:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return int(tensor.item())

    def _all_finite(self, loss: Tensor) -> bool:
        """True when the loss is finite on every rank: a rank alone may not skip a step."""
        return self._world_mean(float(torch.isfinite(loss).all())) == 1.0

    def _accumulated_step(self, minibatch: Experience, loss_fn: Callable[[Experience], tuple[Tensor, dict]],
                          token_budget: int, per_row: bool = False) -> tuple[float, dict[str, float]] | None:
        """One optimizer step on ``minibatch``: its rows sorted by length and cut into the
        fewest micro-batches of at most ``token_budget`` padded tokens (0: one), each trimmed
        of its padding, gradients accumulated. ``loss_fn`` returns a token-mean loss (or, with
        ``per_row``, a mean over rows); each micro-batch's counts by its share of the
        minibatch's tokens (rows), so the step equals one on the whole minibatch. Returns the
        loss and stats weighted alike (``*_max`` keys: the max), or None when the loss is not
        finite on some rank: then nothing is applied."""
        started = time.perf_counter()
        lengths = minibatch.sequence_lengths()
        # every rank runs the same number of micro-batches (ZeRO-2 reduces in each backward),
        # none empty: the most any rank needs, at most the fewest rows any rank has
        count = min(self._world_max(micro_batch_count(lengths, token_budget)), -self._world_max(-len(minibatch)))
        # what a micro-batch's share of the minibatch is counted in: tokens, or rows
        units = (lambda batch: torch.tensor(len(batch))) if per_row else (lambda batch: batch.response_mask.sum())
        whole = units(minibatch).clamp_min(1)
        total, stats = torch.zeros((), device=self.device), defaultdict(float)
        parts = length_sorted_parts(lengths, count)
        for i, rows in enumerate(parts):
            part = minibatch.select(rows).trimmed()
            weight = units(part) / whole
            loss, part_stats = loss_fn(part)
            self.engine.set_gradient_accumulation_boundary(i == len(parts) - 1)
            self.engine.backward(loss * weight, scale_wrt_gas=False)
            total += loss.detach() * weight
            for key, value in part_stats.items():
                stats[key] = max(stats[key], value) if key.endswith("_max") else stats[key] + value * weight.item()
            self.trained_tokens += part.prompt_ids.numel() + part.response_ids.numel()
        finite = self._all_finite(total)
        if finite:
            self.engine.step()
        else:
            self.engine.zero_grad()
        self.training_seconds += time.perf_counter() - started
        return (total.item(), dict(stats) | {"micro_batches": len(parts)}) if finite else None

    def throughput(self) -> tuple[float, float | None]:
        """Tokens (padded, as computed) per second of training since the last call and, where
        the device's peak is known (GPUs), the model-FLOPs utilisation (6 x params x tokens)."""
        from alignray.core.metrics import model_flops_utilization
        rate = self.trained_tokens / self.training_seconds if self.training_seconds else 0.0
        self.trained_tokens, self.training_seconds = 0, 0.0
        params = sum(getattr(p, "ds_numel", p.numel()) for p in self.engine.module.parameters())
        mfu = model_flops_utilization(params, rate, self.device)
        return rate, None if math.isnan(mfu) else mfu

    def save_checkpoint(self, ckpt_dir: str, client_state: dict | None = None) -> str:
        from alignray.models import deepspeed_strategy as ds
        return str(ds.save_checkpoint(self.engine, ckpt_dir, client_state))

    def load_checkpoint(self, ckpt_dir: str) -> dict | None:
        from alignray.models import deepspeed_strategy as ds
        return ds.load_checkpoint(self.engine, ckpt_dir)


# ----------------------------------------------------------------------------- driver side
class ModelActorDied(RuntimeError):
    """A policy, critic, reference or reward actor is gone: the run cannot continue."""


def wait_named(refs: dict[str, ray.ObjectRef | list[ray.ObjectRef]]) -> tuple[dict, dict[str, float]]:
    """Results of work running in parallel (a list of results where a name has a list of
    refs, e.g. every rank of a role), and the seconds each name took from now; a dead actor
    stops the run with its name."""
    start = time.monotonic()
    by_ref = {ref: name for name, named in refs.items() for ref in (named if isinstance(named, list) else [named])}
    pending, results, seconds = list(by_ref), {}, {}
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        name = by_ref[done[0]]
        try:
            results[done[0]] = ray.get(done[0])
        except ray.exceptions.RayActorError as error:
            raise ModelActorDied(f"the {name} actor died; stopping the run: {error}") from error
        seconds[name] = time.monotonic() - start  # the last of its refs
    gathered = {name: [results[r] for r in named] if isinstance(named, list) else results[named]
                for name, named in refs.items()}
    return gathered, seconds


class ActorGroup:
    """The actors of one role, rank order; calls fan out to all of them."""

    def __init__(self, role: str, actors: list):
        self.role = role
        self.actors = actors

    def __len__(self) -> int:
        return len(self.actors)

    def call(self, method: str, *args, **kwargs) -> list[ray.ObjectRef]:
        return [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]

    def call_each(self, method: str, per_actor_args: list[tuple]) -> list[ray.ObjectRef]:
        return [getattr(actor, method).remote(*args) for actor, args in zip(self.actors, per_actor_args)]

    def form_world(self) -> None:
        """Every rank joins the DeepSpeed world that rank 0 opens, and builds its engine."""
        address, port = ray.get(self.actors[0].rendezvous.remote())
        ray.get(self.call("setup", address, port))

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
