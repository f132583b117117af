"""The policy: the SFT model, trained with a policy loss (PPO's clipped surrogate by default,
or GSPO's) in a DeepSpeed engine. With LoRA (``ppo.policy.lora``) it is also the reference:
the same model with its adapter disabled.

Each rank trains on its shard of the batch; DeepSpeed averages the gradients over the
role's world and clips them (``deepspeed.gradient_clipping``).
"""
from __future__ import annotations

import functools
import math
from collections import defaultdict

import torch

from alignray.actors.base import TrainableActor
from alignray.actors.weight_sync import WeightSender
from alignray.config.ppo import PolicyConfig, PolicyObjective, UpdateSettings
from alignray.ppo.experience import Experience, PolicyTrainStats, mean
from alignray.models.generation import disable_dropout, gather_tokens, response_logits, vocab_logprobs
from alignray.models.lora import with_lora
from alignray.models.modeling import load_causal_lm, load_tokenizer, training_dtype
from alignray.ppo import (EarlyStopOnKL, aggregate, entropy_from_logprobs, get_policy_loss, kl_loss,
                          minibatch_indices)
from alignray.core.seeds import derived_seed


class PolicyActor(TrainableActor, WeightSender):
    role = "policy"

    def __init__(self, model_path: str, policy: PolicyConfig, update: UpdateSettings, objective: PolicyObjective,
                 rank: int = 0, world_size: int = 1, seed: int = 0):
        super().__init__(rank, world_size, seed)
        self.policy, self.update, self.objective, self.lr = policy, update, objective, policy.lr
        dtype = training_dtype(update.deepspeed.precision, self.device)
        self.model = disable_dropout(with_lora(load_causal_lm(model_path, self.device, dtype), policy.lora))
        self.tokenizer = load_tokenizer(model_path)
        self.sync_group = None

    def logprobs(self, prompt_ids, prompt_mask, response_ids) -> torch.Tensor:
        self.engine.eval()
        return self._logprobs(self.engine, prompt_ids, prompt_mask, response_ids, self.objective.temperature)

    def ref_logprobs(self, prompt_ids, prompt_mask, response_ids) -> torch.Tensor:
        """The reference's log-probs, from a LoRA policy with its adapter disabled: the SFT model."""
        self.engine.eval()
        with self.engine.module.disable_adapter():
            return self._logprobs(self.engine, prompt_ids, prompt_mask, response_ids, self.objective.temperature)

    def train(self, exp: Experience, step: int, kl_coef: float = 0.0) -> PolicyTrainStats:
        """Epochs x minibatches of the policy loss on this rank's shard (plus ``kl_coef`` x the
        KL to the reference where ``ppo.kl.placement=loss``); minibatches whose loss is not
        finite (on any rank) are skipped and counted."""
        update = self.update
        self.engine.train()
        exp = exp.to(self.device)
        generator = torch.Generator().manual_seed(derived_seed(self.seed, step, self.rank))
        early_stop = EarlyStopOnKL(self.objective.target_kl)
        totals: dict[str, list[float]] = defaultdict(list)
        skipped = 0
        minibatch_size = math.ceil(len(exp) / update.minibatches)
        for n, (_, rows) in enumerate(minibatch_indices(len(exp), minibatch_size, update.epochs, generator,
                                                        early_stop)):
            # without an entropy bonus the entropy is only reported: of the first minibatch,
            # before any update (over the whole vocabulary it costs ~10% of an update)
            loss_fn = functools.partial(self._loss, report_entropy=n == 0, kl_coef=kl_coef)
            result = self._accumulated_step(exp.select(rows.to(self.device)), loss_fn, update.micro_batch_tokens,
                                            per_row=self.policy.loss_aggregation != "token_mean")
            if result is None:
                skipped += 1
                continue
            loss, stats = result
            early_stop.record(self._world_mean(stats["approx_kl"]))
            totals["policy_loss"].append(loss)
            for key, value in stats.items():
                totals[key].append(value)
        tokens_per_s, mfu = self.throughput()
        return PolicyTrainStats(
            **{key: mean(totals[key]) for key in ("policy_loss", "clip_fraction", "approx_kl", "entropy",
                                                 "micro_batches")},
            ratio_max=max(totals["ratio_max"], default=float("nan")), policy_updates=len(totals["policy_loss"]),
            kl_loss=mean(totals["kl_loss"]) if "kl_loss" in totals else None,
            nonfinite_updates=skipped, stopped_after_epoch=early_stop.stopped_after_epoch,
            train_tokens_per_s=tokens_per_s, mfu=mfu)

    def _loss(self, batch: Experience, report_entropy: bool, kl_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
        """The policy loss of a micro-batch (``ppo.policy.loss``, aggregated as
        ``ppo.policy.loss_aggregation``), plus the KL term where it is a loss, minus the entropy bonus."""
        policy, objective = self.policy, self.objective
        logits = response_logits(self.engine, batch.prompt_ids, batch.prompt_mask, batch.response_ids)
        vocab = vocab_logprobs(logits, objective.temperature)
        logprobs = gather_tokens(vocab, batch.response_ids)
        how = {"aggregation": policy.loss_aggregation, "normalizer": objective.max_new_tokens}
        loss, stats = get_policy_loss(policy.loss)(logprobs, batch.old_logprobs, batch.advantages,
                                                   batch.response_mask, policy.clip_eps,
                                                   weights=batch.correction_weights, **how)
        if objective.kl_loss_estimator is not None:
            kl = kl_loss(logprobs, batch.ref_logprobs, batch.response_mask, objective.kl_loss_estimator, **how)
            loss = loss + kl_coef * kl
            stats["kl_loss"] = kl.item()
        if policy.entropy_coef or report_entropy:
            with torch.set_grad_enabled(bool(policy.entropy_coef)):
                entropy = aggregate(entropy_from_logprobs(vocab), batch.response_mask, **how)
            loss = loss - policy.entropy_coef * entropy
            stats["entropy"] = entropy.item()
        return loss, stats

    def export_hf(self, out_dir: str) -> str:
        from alignray.models import deepspeed_strategy as ds
        return str(ds.export_hf(self.engine, self.tokenizer, out_dir))
