"""The rollout pool: N workers that sample responses with the current policy weights.

A worker that dies mid-step is restarted by Ray (``max_restarts``) with the SFT weights it
was created with; the pool has the weight sync restore the current policy weights into it
(``WeightSync.restore``) and generates its shard again, with the same seed, so every prompt is answered exactly once and as it would
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

from alignray.actors.base import ActorGroup, ModelActor
from alignray.actors.weight_sync import WeightReceiver
from alignray.config.lora import LoRAConfig
from alignray.config.ppo import RolloutConfig
from alignray.models.lora import AdapterMerger
from alignray.ppo.experience import PromptBatch, Rollout
from alignray.models.generation import disable_dropout, end_token_ids, sample_responses
from alignray.models.modeling import load_causal_lm, load_tokenizer, training_dtype
from alignray.core.seeds import derived_seed
from alignray.models.static_decoder import generation_path, make_decoder

log = logging.getLogger(__name__)
WORKER_LOST = (ActorDiedError, ActorUnavailableError, RayActorError)
RECOVERY_ATTEMPTS = 30  # seconds of waiting for Ray to restart a worker


class StaleWeightsError(RuntimeError):
    """A worker restarted by Ray holds the weights it was created with, not the current ones."""


class RolloutWorker(ModelActor, WeightReceiver):
    role = "rollout"

    def __init__(self, model_path: str, rollout: RolloutConfig, precision: str, max_prompt_tokens: int,
                 seed: int = 0, policy_lora: LoRAConfig = LoRAConfig()):
        super().__init__(seed)
        self.max_new_tokens, self.temperature, self.top_p = rollout.max_new_tokens, rollout.temperature, rollout.top_p
        dtype = training_dtype(precision, self.device)
        self.model = disable_dropout(load_causal_lm(model_path, self.device, dtype)).eval()
        self.model.requires_grad_(False)
        # a LoRA policy sends adapters: folded into this plain model, which the static decoder reads
        self.adapter = AdapterMerger(self.model, policy_lora) if policy_lora.enabled else None
        self.decoder = make_decoder(self.model, rollout.generation_engine,
                                    max_len=max_prompt_tokens + rollout.max_new_tokens)
        log.info("rollout worker: %s generates on the %s path", self.model.config.model_type,
                 generation_path(self.decoder))
        tokenizer = load_tokenizer(model_path)
        # stop_at_eos=False: every response is max_new_tokens long (fixed-length benchmarks)
        self.end_token_ids = end_token_ids(self.model, tokenizer) if rollout.stop_at_eos else None
        self.pad_token_id = tokenizer.pad_token_id
        self.weights_version = 0  # 0: the weights it was created with
        self.sync_group = None

    def generate(self, prompts: PromptBatch, seed: int, expected_version: int) -> Rollout:
        if self.weights_version != expected_version:  # restarted by Ray since the last sync
            raise StaleWeightsError(f"worker holds weights version {self.weights_version}, "
                                    f"the pool expects {expected_version}")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        ids, mask = self._to_device(prompts.prompt_ids, prompts.prompt_mask)
        sampled = sample_responses(self.decoder, ids, mask, max_new_tokens=self.max_new_tokens,
                                   end_token_ids=self.end_token_ids, pad_token_id=self.pad_token_id,
                                   temperature=self.temperature, top_p=self.top_p, generator=generator)
        return Rollout.of(prompts, sampled).to("cpu")

    def logprobs(self, prompt_ids, prompt_mask, response_ids) -> torch.Tensor:
        return self._logprobs(self.model, prompt_ids, prompt_mask, response_ids, self.temperature)


@dataclass
class PendingRollout:
    """A batch handed to the pool: its shards and the workers' result refs."""
    step: int
    shards: list[PromptBatch]
    refs: dict[int, ray.ObjectRef]
    weights_version: int  # the policy update the workers sample with


class RolloutPool(ActorGroup):
    """Driver-side handle on the workers. ``version`` is the policy update their weights hold
    (set by the weight sync)."""

    def __init__(self, actors: list, seed: int = 0):
        super().__init__("rollout", actors)
        self.seed = seed
        self.version = 0
        self.restarts = 0  # workers recovered so far; a broadcast group must be formed again

    def submit(self, batch: PromptBatch, step: int, group_size: int = 1) -> PendingRollout:
        """Start generating ``batch`` on the workers' current weights; :meth:`collect` waits.
        Its rows come in groups of ``group_size`` (a prompt repeated, one row per response):
        a group goes to one worker whole, so its responses are sampled together and come back
        together; fewer groups than workers leave workers idle."""
        shards = batch.split(min(len(self), len(batch) // group_size), group_size)
        return PendingRollout(step, shards, {i: self._submit(i, shard, step) for i, shard in enumerate(shards)},
                              self.version)

    def collect(self, pending: PendingRollout, restore: Callable[[ray.actor.ActorHandle], None]) -> Rollout:
        """The responses of a submitted batch, in its row order (so every group is whole); a
        lost worker is given the current weights by ``restore`` (``WeightSync.restore``) and
        generates its shard again, with the same seed: the same responses, none lost or twice."""
        results: dict[int, Rollout] = {}
        refs, shards, step = dict(pending.refs), pending.shards, pending.step
        while refs:
            i, ref = next(iter(refs.items()))
            try:
                results[i] = ray.get(ref)
                del refs[i]
            except (*WORKER_LOST, StaleWeightsError) as error:
                log.warning("rollout worker %d was lost during step %d (%s); generating its %d prompts again",
                            i, step, type(error).__name__, len(shards[i]))
                self._recover(i, restore)
                refs[i] = self._submit(i, shards[i], step)
        return Rollout.cat([results[i] for i in range(len(shards))])

    def _submit(self, i: int, shard: PromptBatch, step: int) -> ray.ObjectRef:
        return self.actors[i].generate.remote(shard, derived_seed(self.seed, step, i), self.version)

    def _recover(self, i: int, restore: Callable[[ray.actor.ActorHandle], None]) -> None:
        """Restore the restarted worker's weights; calls made while Ray restarts it wait for
        the restart, or fail while it is unavailable and are tried again."""
        self.restarts += 1
        for attempt in range(RECOVERY_ATTEMPTS):
            try:
                restore(self.actors[i])
                return
            except WORKER_LOST:
                if attempt == RECOVERY_ATTEMPTS - 1:
                    raise
                time.sleep(1.0)
