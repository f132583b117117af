"""The rollout pool: N workers that sample responses with the current policy weights.

A worker that dies mid-step is restarted by Ray (``max_restarts``) with the SFT weights it
was created with; the pool then loads the current policy weights into it and generates its
shard again, with the same seed, so every prompt is answered exactly once and as it would
have been. Ray's own task retry is off (``max_task_retries=0``): it would re-run the shard
on stale weights, silently.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import ray
import torch
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from actors.base import ActorGroup, ModelActor, broadcast_tensor, load_named_weights, named_weights, open_sync_group
from alignray.config.ppo import PPOConfig
from alignray.experience import Experience
from alignray.generation import disable_dropout, sample_responses
from alignray.modeling import load_causal_lm, load_tokenizer, training_dtype
from alignray.static_decoder import make_decoder

log = logging.getLogger(__name__)
WORKER_LOST = (ActorDiedError, ActorUnavailableError, RayActorError)
RECOVERY_ATTEMPTS = 30  # seconds of waiting for Ray to restart a worker


def shard_seed(seed: int, step: int, shard: int) -> int:
    """The sampling seed of one shard of one step: a retry or a resumed run draws the same."""
    return (seed * 1_000_003 + step) * 1_009 + shard


class StaleWeightsError(RuntimeError):
    """A worker restarted by Ray holds the weights it was created with, not the current ones."""


class RolloutWorker(ModelActor):
    role = "rollout"

    def __init__(self, model_path: str, ppo: PPOConfig, max_prompt_tokens: int, seed: int = 0):
        super().__init__(seed)
        self.max_new_tokens, self.temperature, self.top_p = ppo.max_new_tokens, ppo.temperature, ppo.top_p
        dtype = training_dtype(ppo.deepspeed.precision, self.device)
        self.model = disable_dropout(load_causal_lm(model_path, self.device, dtype)).eval()
        self.model.requires_grad_(False)
        self.decoder = make_decoder(self.model, ppo.generation_engine, max_len=max_prompt_tokens + ppo.max_new_tokens)
        tokenizer = load_tokenizer(model_path)
        # stop_at_eos=False: every response is max_new_tokens long (fixed-length benchmarks)
        self.eos_token_id = tokenizer.eos_token_id if ppo.stop_at_eos else None
        self.pad_token_id = tokenizer.pad_token_id
        self.weights_version = 0  # 0: the weights it was created with
        self.sync_group = None

    def generate(self, prompt_index: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 seed: int, expected_version: int) -> Experience:
        if self.weights_version != expected_version:  # restarted by Ray since the last sync
            raise StaleWeightsError(f"worker holds weights version {self.weights_version}, "
                                    f"the pool expects {expected_version}")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        ids, mask = self._to_device(prompt_ids, prompt_mask)
        sampled = sample_responses(self.decoder, ids, mask, max_new_tokens=self.max_new_tokens,
                                   eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
                                   temperature=self.temperature, top_p=self.top_p, generator=generator)
        return Experience(prompt_index=prompt_index, prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                          response_ids=sampled.response_ids.cpu(), response_mask=sampled.response_mask.cpu(),
                          logprobs=sampled.logprobs.cpu(), ended_with_eos=sampled.ended_with_eos.cpu())

    def logprobs(self, prompt_ids, prompt_mask, response_ids) -> torch.Tensor:
        return self._logprobs(self.model, prompt_ids, prompt_mask, response_ids, self.temperature)

    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
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

    def version(self) -> int:
        return self.weights_version


@dataclass
class PendingRollout:
    """A batch handed to the pool: its shards and the workers' result refs."""
    step: int
    shards: list[Experience]
    refs: dict[int, ray.ObjectRef]
    weights_version: int  # the policy update the workers sample with


class RolloutPool(ActorGroup):
    """Driver-side handle on the workers. ``current_weights`` returns an object ref of the
    policy's latest state dict (or None: the SFT weights), for restarted workers; the weight
    sync sets it (actors/weight_sync.py)."""

    def __init__(self, actors: list, seed: int = 0):
        super().__init__("rollout", actors)
        self.current_weights: Callable[[], ray.ObjectRef | None] = lambda: None
        self.seed = seed
        self.version = 0
        self.restarts = 0  # workers recovered so far; a broadcast group must be formed again

    def generate(self, batch: Experience, step: int) -> Experience:
        """Sample one response per prompt of ``batch`` (prompt fields only), in order."""
        return self.collect(self.submit(batch, step))

    def submit(self, batch: Experience, step: int) -> PendingRollout:
        """Start generating ``batch`` on the workers' current weights; :meth:`collect` waits."""
        shards = batch.split(len(self))
        return PendingRollout(step, shards, {i: self._submit(i, shard, step) for i, shard in enumerate(shards)},
                              self.version)

    def collect(self, pending: PendingRollout) -> Experience:
        """The responses of a submitted batch; a lost worker's shard is generated again."""
        results: dict[int, Experience] = {}
        refs, shards, step = dict(pending.refs), pending.shards, pending.step
        while refs:
            i, ref = next(iter(refs.items()))
            try:
                results[i] = ray.get(ref)
                del refs[i]
            except (*WORKER_LOST, StaleWeightsError) as error:
                log.warning("rollout worker %d was lost during step %d (%s); generating its %d prompts again",
                            i, step, type(error).__name__, len(shards[i]))
                self._recover(i)
                refs[i] = self._submit(i, shards[i], step)
        return Experience.cat([results[i] for i in range(len(shards))])

    def _submit(self, i: int, shard: Experience, step: int) -> ray.ObjectRef:
        return self.actors[i].generate.remote(shard.prompt_index, shard.prompt_ids, shard.prompt_mask,
                                              shard_seed(self.seed, step, i), self.version)

    def _recover(self, i: int) -> None:
        """Give the restarted worker the current weights; calls made while Ray restarts it
        wait for the restart, or fail while it is unavailable and are tried again."""
        self.restarts += 1
        weights = self.current_weights()
        for attempt in range(RECOVERY_ATTEMPTS):
            try:
                if weights is not None:
                    ray.get(self.actors[i].load_weights.remote(weights, self.version))
                else:
                    ray.get(self.actors[i].version.remote())
                return
            except WORKER_LOST:
                if attempt == RECOVERY_ATTEMPTS - 1:
                    raise
                time.sleep(1.0)
