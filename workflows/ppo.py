"""Phase 4: PPO against the reward model; this process is the coordinator (single controller).

    python -m workflows.ppo                                  # base model, oracle needs kind:
    python -m workflows.ppo ppo.reward.kind=annotators ppo.steps=40
    python -m workflows.ppo ppo.sft_model_path=... ppo.reward_model_path=...

One PPO step (DESIGN.md, "One PPO step"), as ``PPOCoordinator.step`` reads top to bottom:
prompts -> rollout pool generates (behaviour log-probs) -> in parallel reference log-probs,
critic values, reward scores, constraint penalties -> per-token KL folded into the reward ->
GAE and whitening -> in parallel policy and critic updates -> weights to the pool, checked
on a fixed probe -> metrics with the wall time of every stage -> checkpoint on schedule.

``ppo.policy_lag=1`` overlaps generation with training: the pool takes the weights at the
start of a step and generates the next step's batch while this one trains, so each batch
is one update behind the policy that trains on it (the ratio is taken against the rollout
log-probs, which is what makes that correct). Off by default; a resumed run generates its
first batch again with the restored weights, so it is not bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import hydra
import ray
import torch
from omegaconf import DictConfig, OmegaConf

from actors.base import wait_named
from actors.placement import PPOActors, launch_ppo_actors
from actors.rollout import PendingRollout
from actors.runtime import connect, shutdown_if_owned
from actors.weight_sync import WeightSync
from alignray.config.ppo import PPOConfig
from alignray.data import format_prompt, prepare_embedded_data, read_prompts, response_text
from alignray.experience import Experience, PromptStream, assemble_advantages, sequence_scores
from alignray.generation import decode_responses
from alignray.metrics import MetricsLogger, plot_curves, read_metrics
from alignray.base_model import resolve_base_model
from alignray.modeling import load_tokenizer
from alignray.ppo import (
    TWEET_CONSTRAINTS_EXAMPLE,
    ConstraintPenalty,
    RunningRewardNormalizer,
    explained_variance,
    make_kl_controller,
)
from workflows.common import CONFIG_PATH, is_complete, mark_complete, phase_dir, start_app

log = logging.getLogger("alignray.ppo")
PROGRESS_KEYS = ("reward_raw", "kl", "response_length", "value_loss", "approx_kl", "step_s")
CURVES = ["reward_raw", "reward_normalized", "kl", "response_length", "value_loss"]


def mean_of(stats: list[dict], key: str) -> float:
    values = [s[key] for s in stats if s.get(key) is not None]
    return sum(values) / len(values) if values else float("nan")


class PPOCoordinator:
    def __init__(self, ppo: PPOConfig, cluster_cfg, data_cfg, seed: int, sft_model_path: str,
                 reward_model_path: str | None, out: Path):
        self.ppo, self.seed, self.out = ppo, seed, out
        self.ckpt_dir = out / "checkpoints"
        self.tokenizer = load_tokenizer(sft_model_path)
        self.tokenizer.truncation_side = "left"  # keep a long prompt's end, next to the response
        self.prompts = load_prompt_texts(data_cfg, self.tokenizer, out, ppo.max_prompts)
        self.max_prompt_tokens = data_cfg.max_prompt_tokens
        self.stream = PromptStream(len(self.prompts), seed)
        self.kl = make_kl_controller(ppo.kl.controller, ppo.kl.coef, ppo.kl.target, ppo.kl.horizon)
        self.normalizer = RunningRewardNormalizer() if ppo.reward.normalize else None
        self.constraints = ConstraintPenalty.from_config(
            TWEET_CONSTRAINTS_EXAMPLE if ppo.reward.constraints == "tweets" else {})
        if ppo.policy_lag not in (0, 1):
            raise ValueError(f"ppo.policy_lag must be 0 or 1, not {ppo.policy_lag}")
        self.nonfinite_in_a_row = 0
        self.pending: PendingRollout | None = None  # policy_lag=1: the next step's batch, in flight
        self.stream_state_before_pending: dict | None = None
        self.actors: PPOActors = launch_ppo_actors(ppo, cluster_cfg, seed, sft_model_path, reward_model_path,
                                                   data_cfg.max_prompt_tokens)
        self.weights = WeightSync(self.actors.policy, self.actors.pool, self.make_probe(), ppo)

    # ------------------------------------------------------------------ one PPO step
    def step(self, step: int) -> dict[str, float]:
        ppo, actors, times = self.ppo, self.actors, {}

        # 1-2. a batch of prompts; the rollout pool samples responses and records their
        # behaviour log-probs (with policy_lag=1 it did so while the last step trained)
        started = time.monotonic()
        pending, self.pending = self.pending or self.submit_next_batch(step), None
        exp = actors.pool.collect(pending)
        times["generation"] = time.monotonic() - started
        if ppo.policy_lag:  # the pool takes the current weights and starts on the next batch
            sync = self.weights.sync(version=step)
            if step + 1 < ppo.steps:
                self.pending = self.submit_next_batch(step + 1)
        prompts = [self.prompts[i] for i in exp.prompt_index.tolist()]
        responses = decode_responses(self.tokenizer, exp.response_ids, exp.response_mask)

        # 3. in parallel: reference log-probs, critic values, reward scores; penalties here
        started = time.monotonic()
        sequences = (exp.prompt_ids, exp.prompt_mask, exp.response_ids)
        parallel = {"reference": actors.reference.logprobs.remote(*sequences),
                    "critic0": actors.critic.actors[0].values.remote(*sequences),
                    "reward": actors.reward.score.remote([p.raw for p in prompts], responses)}
        constraint_costs, violations = self.constraints.penalties(responses)
        parts, seconds = wait_named(parallel)
        times |= {"reference": seconds["reference"], "critic_values": seconds["critic0"],
                  "scoring": seconds["reward"], "experience": time.monotonic() - started}

        # 4-5. KL folded into per-token rewards; GAE; whitening
        raw = parts["reward"]
        scores = sequence_scores(raw, self.normalizer, clip=ppo.reward.clip, constraint_costs=constraint_costs,
                                 ended_with_eos=exp.ended_with_eos, truncation_cost=ppo.reward.truncation_penalty)
        exp = dataclasses.replace(exp, ref_logprobs=parts["reference"], values=parts["critic0"], scores=scores)
        exp, advantage_stats = assemble_advantages(
            exp, kl_coef=self.kl.coef, kl_estimator=ppo.kl.estimator, estimator=ppo.advantage_estimator,
            gamma=ppo.gamma, lam=ppo.lam, whiten=ppo.whiten_advantages)

        # 6. in parallel: the policy's and the critic's updates, each rank on its shard
        started = time.monotonic()
        training = {f"policy{i}": ref for i, ref in enumerate(
            actors.policy.call_each("train", [(shard, step) for shard in exp.split(len(actors.policy))]))}
        training |= {f"critic{i}": ref for i, ref in enumerate(
            actors.critic.call_each("train", [(shard, step) for shard in exp.split(len(actors.critic))]))}
        train_stats, seconds = wait_named(training)
        policy_stats = [v for k, v in train_stats.items() if k.startswith("policy")]
        critic_stats = [v for k, v in train_stats.items() if k.startswith("critic")]
        times |= {"training": time.monotonic() - started, "policy_train": seconds["policy0"],
                  "critic_train": seconds["critic0"]}
        self.count_nonfinite(step, policy_stats + critic_stats)

        # 7. new weights to the pool, then the pool must reproduce the policy's log-probs
        if not ppo.policy_lag:
            sync = self.weights.sync(version=step + 1)

        self.kl.update(advantage_stats["kl"], len(exp))
        mask = exp.response_mask
        metrics = {
            "reward_raw": raw.mean().item(), "reward_normalized": scores.mean().item(),
            "reward_raw_std": raw.std().item(), "kl_coef": self.kl.coef, **advantage_stats,
            "constraint_violation_rate": (constraint_costs > 0).float().mean().item(),
            "constraint_penalty_mean": constraint_costs.mean().item(),
            "entropy": mean_of(policy_stats, "entropy"), "clip_fraction": mean_of(policy_stats, "clip_fraction"),
            "approx_kl": mean_of(policy_stats, "approx_kl"), "policy_loss": mean_of(policy_stats, "policy_loss"),
            "ratio_max": max(s["ratio_max"] for s in policy_stats),
            "policy_updates": sum(s["policy_updates"] for s in policy_stats),
            "micro_batches": mean_of(policy_stats, "micro_batches"),
            "value_loss": mean_of(critic_stats, "value_loss"),
            "train_tokens_per_s": sum(s["train_tokens_per_s"] for s in policy_stats),  # over the ranks
            "critic_train_tokens_per_s": sum(s["critic_train_tokens_per_s"] for s in critic_stats),
            **{key: mean_of(stats, key) for stats, key in ((policy_stats, "mfu"), (critic_stats, "critic_mfu"))
               if key in stats[0]},  # only where the device's peak is known
            "value_clip_fraction": mean_of(critic_stats, "value_clip_fraction"),
            "explained_variance": explained_variance(exp.values, exp.returns, mask),
            "response_length": mask.sum(dim=1).float().mean().item(),
            "truncated_share": (~exp.ended_with_eos).float().mean().item(),
            **sync, "pool_restarts": actors.pool.restarts,
            "prompts_taken": self.stream.consumed, "policy_lag": step - pending.weights_version,
            **{f"violations/{name}": v.float().mean().item() for name, v in violations.items()},
            **{f"time/{stage}": round(s, 3) for stage, s in times.items()},
        }
        return metrics

    # ------------------------------------------------------------------ the run
    def run(self) -> list[dict]:
        ppo = self.ppo
        start_step = self.resume() if ppo.resume else 0
        self.weights.sync(version=start_step)  # the pool starts from the policy, resumed or not
        metrics_log = MetricsLogger(self.out, total_steps=ppo.steps, name="ppo")
        step_times = []
        for step in range(start_step, ppo.steps):
            started = time.monotonic()
            metrics = self.step(step)
            metrics["step_s"] = time.monotonic() - started
            step_times.append({"step": step, **{k[5:]: v for k, v in metrics.items() if k.startswith("time/")}})
            metrics_log.log(step + 1, PROGRESS_KEYS, **metrics)
            last = step + 1 == ppo.steps
            if last or (ppo.checkpoint_every and (step + 1) % ppo.checkpoint_every == 0):
                self.save_checkpoint(step + 1)
        return step_times

    def count_nonfinite(self, step: int, stats: list[dict]) -> None:
        skipped = sum(s["nonfinite_updates"] for s in stats)
        if not skipped:
            self.nonfinite_in_a_row = 0
            return
        self.nonfinite_in_a_row += 1
        log.warning("step %d: %d updates skipped for a non-finite loss (%d steps in a row)",
                    step, skipped, self.nonfinite_in_a_row)
        if self.nonfinite_in_a_row >= self.ppo.max_nonfinite_in_a_row:
            raise FloatingPointError(f"non-finite losses in {self.nonfinite_in_a_row} steps in a row; stopping")

    # ------------------------------------------------------------------ prompts
    def submit_next_batch(self, step: int) -> PendingRollout:
        self.stream_state_before_pending = self.stream.state_dict()
        return self.actors.pool.submit(self.prompt_batch(self.stream.next_batch(self.ppo.prompts_per_step)), step)

    def prompt_batch(self, rows: torch.Tensor) -> Experience:
        """Prompt fields of an Experience: left-padded, the longest cut from the left."""
        encoded = self.tokenizer([self.prompts[i].formatted for i in rows.tolist()], return_tensors="pt",
                                 padding=True, truncation=True, max_length=self.max_prompt_tokens)
        empty = torch.empty(len(rows), 0)
        return Experience(prompt_index=rows, prompt_ids=encoded["input_ids"], prompt_mask=encoded["attention_mask"],
                          response_ids=empty.long(), response_mask=empty.bool(), logprobs=empty,
                          ended_with_eos=torch.zeros(len(rows), dtype=torch.bool))

    def make_probe(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fixed sequences whose log-probs the pool must reproduce after each sync: the first
        prompts, answered with the text of the next ones (any real text will do)."""
        k = min(self.ppo.probe_prompts, len(self.prompts) // 2)
        batch = self.prompt_batch(torch.arange(k))
        answers = [response_text(self.tokenizer, self.prompts[k + i].raw) for i in range(k)]
        self.tokenizer.padding_side = "right"
        encoded = self.tokenizer(answers, return_tensors="pt", padding="max_length", truncation=True,
                                 max_length=self.ppo.max_new_tokens)
        self.tokenizer.padding_side = "left"
        return batch.prompt_ids, batch.prompt_mask, encoded["input_ids"], encoded["attention_mask"].bool()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int) -> None:
        """Actors first, the coordinator's state last: its file names the actor checkpoints
        that belong to it, so a crash in between resumes consistently."""
        tags = ray.get(self.actors.policy.call("save_checkpoint", str(self.ckpt_dir / "policy"), {"step": step})
                       + self.actors.critic.call("save_checkpoint", str(self.ckpt_dir / "critic"), {"step": step}))
        state = {"step": step, "tags": {"policy": Path(tags[0]).name, "critic": Path(tags[-1]).name},
                 # a batch in flight is not saved: a resumed run draws its prompts again
                 "kl": self.kl.state_dict(),
                 "stream": self.stream_state_before_pending if self.pending else self.stream.state_dict(),
                 "normalizer": self.normalizer.state_dict() if self.normalizer else None,
                 "nonfinite_in_a_row": self.nonfinite_in_a_row, "torch_rng": torch.get_rng_state()}
        partial = self.ckpt_dir / "coordinator.pt.partial"
        torch.save(state, partial)
        os.replace(partial, self.ckpt_dir / "coordinator.pt")
        log.info("checkpoint after step %d in %s", step, self.ckpt_dir)

    def resume(self) -> int:
        """Restore the last checkpoint, if any; returns the step to continue from."""
        path = self.ckpt_dir / "coordinator.pt"
        if not path.exists():
            return 0
        state = torch.load(path, weights_only=False)
        for role, group in (("policy", self.actors.policy), ("critic", self.actors.critic)):
            (self.ckpt_dir / role / "latest").write_text(state["tags"][role])
            ray.get(group.call("load_checkpoint", str(self.ckpt_dir / role)))
        self.kl.load_state_dict(state["kl"])
        self.stream.load_state_dict(state["stream"])
        if self.normalizer is not None:
            self.normalizer.load_state_dict(state["normalizer"])
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]
        torch.set_rng_state(state["torch_rng"])
        keep_metrics_until(self.out / "metrics.jsonl", state["step"])
        log.info("resumed from the checkpoint after step %d", state["step"])
        return state["step"]

    def export_policy(self) -> Path:
        ray.get(self.actors.policy.call("export_hf", str(self.out / "policy")))
        return self.out / "policy"


@dataclasses.dataclass(frozen=True)
class PromptText:
    raw: str  # as in the prompts file: what the reward model and the judges read
    formatted: str  # what the policy reads (chat template or plain format)


def load_prompt_texts(data_cfg, tokenizer, out: Path, max_prompts: int) -> list[PromptText]:
    """The training prompts, validated (alignray.data.read_prompts)."""
    if data_cfg.source == "embedded":
        path = prepare_embedded_data(data_cfg, out / "data")["prompts_train"]
    else:
        path = data_cfg.prompts_path
    table, _ = read_prompts(path)
    rows = table.to_pylist()[: max_prompts or None]
    return [PromptText(r["prompt"], format_prompt(tokenizer, r["prompt"], r.get("system"))) for r in rows]


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop the records an interrupted run logged after its last checkpoint: they are redone."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def check_position_limit(model_path: str, max_prompt_tokens: int, max_new_tokens: int) -> None:
    """A prompt plus its response must fit the model's positions (the prototype crashed there)."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(model_path)
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if limit is not None and max_prompt_tokens + max_new_tokens > limit:
        raise ValueError(f"data.max_prompt_tokens {max_prompt_tokens} + ppo.max_new_tokens {max_new_tokens} "
                         f"exceed the model's {limit} positions")


def run_ppo(cfg: DictConfig, sft_model_path: str, reward_model_path: str | None) -> Path:
    """Train the policy with PPO; returns the output folder (``policy/`` in HF format,
    metrics.jsonl, curves.png, summary.json). A finished run with the same settings is reused;
    an interrupted one resumes from its last checkpoint."""
    out = phase_dir(cfg, "ppo", cfg.ppo, str(sft_model_path), str(reward_model_path))
    if is_complete(out):
        log.info("PPO output exists: %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    ppo: PPOConfig = OmegaConf.to_object(cfg.ppo) if OmegaConf.is_config(cfg.ppo) else cfg.ppo
    if ppo.reward.kind == "model" and not reward_model_path:
        raise ValueError("ppo.reward.kind=model needs a reward model (ppo.reward_model_path); "
                         "ppo.reward.kind=annotators is the oracle reward without one")
    check_position_limit(str(sft_model_path), cfg.data.max_prompt_tokens, ppo.max_new_tokens)
    owned = connect(cfg.cluster)
    started = time.monotonic()
    coordinator = None
    try:
        coordinator = PPOCoordinator(ppo, cfg.cluster, cfg.data, int(cfg.seed), str(sft_model_path),
                                     str(reward_model_path) if reward_model_path else None, out)
        step_times = coordinator.run()
        policy_dir = coordinator.export_policy()
    finally:
        if coordinator is not None:
            coordinator.actors.shutdown()
        shutdown_if_owned(owned)
    records = read_metrics(out / "metrics.jsonl")
    plot_curves(records, CURVES, out / "curves.png", title="PPO")
    plot_curves(records, [k for k in records[-1] if k.startswith("time/")], out / "stage_times.png",
                title="PPO stage wall time (s)")
    mark_complete(out, {"sft_model": str(sft_model_path), "reward_model": reward_model_path,
                        "policy": str(policy_dir), "steps": ppo.steps, "wall_s": round(time.monotonic() - started, 1),
                        "stage_times_per_step": step_times, "final_metrics": records[-1]})
    return out


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> str:
    start_app(cfg, "ppo")
    sft = cfg.ppo.sft_model_path or resolve_base_model(cfg.model, cfg.cache_dir, cfg.seed)
    out = run_ppo(cfg, sft, cfg.ppo.reward_model_path)
    print(f"PPO policy: {out / 'policy'}")
    return str(out)


if __name__ == "__main__":
    main()
