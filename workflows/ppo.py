"""Phase 4: PPO against the reward model; this process is the coordinator (single controller).

    python -m workflows.ppo                                  # base model, oracle needs kind:
    python -m workflows.ppo ppo.reward.kind=annotators ppo.steps=40
    python -m workflows.ppo ppo.sft_model_path=... ppo.reward_model_path=...

One PPO step, as ``PPOCoordinator.step`` reads top to bottom: the policy's weights to the
rollout pool, checked on a fixed probe -> prompts -> the pool generates (behaviour log-probs)
-> in parallel reference log-probs, critic values, reward scores; constraint penalties ->
scores normalised once -> per-token KL folded into the reward -> GAE and whitening -> in
parallel policy and critic updates -> metrics with the wall time of every stage ->
checkpoint on schedule.

``ppo.policy_lag=1`` overlaps generation with training: as soon as a step's batch is in, the
pool takes the current weights and generates the next step's batch while this one trains, so each batch
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
from actors.runtime import ray_session
from actors.weight_sync import WeightSync
from alignray.config.ppo import PPOConfig
from alignray.data import format_prompt, prepare_embedded_data, read_prompts, response_text
from alignray.experience import (CriticTrainStats, PolicyTrainStats, PromptBatch, PromptStream, Rollout,
                                 build_experience, sequence_scores, step_metrics)
from alignray.generation import decode_responses, encode_prompts
from alignray.artifacts import CURVES_FIGURE, METRICS_FILE, POLICY_DIR, STAGE_TIMES_FIGURE
from alignray.base_model import resolve_base_model
from alignray.metrics import MetricsLogger, StageTimes, plot_curves, read_metrics
from alignray.model_card import ModelCard, write_model_card
from alignray.modeling import check_position_limit, load_tokenizer
from alignray.ppo import (
    ConstraintPenalty,
    RunningRewardNormalizer,
    make_kl_controller,
)
from workflows.common import CONFIG_PATH, is_complete, mark_complete, phase_dir, start_app

log = logging.getLogger("alignray.ppo")
PROGRESS_KEYS = ("reward_raw", "kl", "response_length", "value_loss", "approx_kl", "step_s")
CURVES = ["reward_raw", "reward_normalized", "kl", "response_length", "value_loss"]


class PPOCoordinator:
    def __init__(self, ppo: PPOConfig, cluster_cfg, data_cfg, seed: int, sft_model_path: str,
                 reward_model_path: str | None, out: Path):
        self.ppo, self.seed, self.out = ppo, seed, out
        self.ckpt_dir = out / "checkpoints"
        self.tokenizer = load_tokenizer(sft_model_path)
        self.tokenizer.truncation_side = "left"
        self.prompts = load_prompt_texts(data_cfg, self.tokenizer, out, ppo.max_prompts)
        self.max_prompt_tokens = data_cfg.max_prompt_tokens
        self.stream = PromptStream(len(self.prompts), seed)
        self.kl = make_kl_controller(ppo.kl.controller, ppo.kl.coef, ppo.kl.target, ppo.kl.horizon)
        self.normalizer = RunningRewardNormalizer() if ppo.reward.normalize else None
        self.constraints = ConstraintPenalty.from_rule_set(ppo.reward.constraints)
        if ppo.policy_lag not in (0, 1):
            raise ValueError(f"ppo.policy_lag must be 0 or 1, not {ppo.policy_lag}")
        self.nonfinite_in_a_row = 0
        self.pending: PendingRollout | None = None  # policy_lag=1: the next step's batch, in flight
        self.stream_state_before_pending: dict | None = None
        self.actors: PPOActors = launch_ppo_actors(ppo, cluster_cfg, seed, sft_model_path, reward_model_path,
                                                   data_cfg.max_prompt_tokens)
        self.weights = WeightSync(self.actors.policy, self.actors.pool, self.make_probe(), ppo,
                                  self.actors.placements)

    # ------------------------------------------------------------------ one PPO step
    def step(self, step: int) -> dict[str, float]:
        ppo, actors, times = self.ppo, self.actors, StageTimes()

        # 1-2. a batch of prompts; the rollout pool samples responses and records their
        # behaviour log-probs (with policy_lag=1 it did so while the last step trained)
        rollout, sampled_by, sync = self.take_rollout(step, times)
        prompts = [self.prompts[i] for i in rollout.prompt_index.tolist()]
        responses = decode_responses(self.tokenizer, rollout.response_ids, rollout.response_mask)

        # 3. in parallel: reference log-probs, critic values, reward scores, and the policy's own
        # log-probs of the sampled tokens (their gap to the sampler's finds stale weights); penalties here
        with times("experience"):
            sequences = (rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids)
            refs = {"reference": actors.reference.logprobs.remote(*sequences),
                    "policy_logprobs": actors.policy.actors[0].logprobs.remote(*sequences),  # for the gap
                    "critic_values": actors.critic.actors[0].values.remote(*sequences),
                    "scoring": actors.reward.score.remote([p.raw for p in prompts], responses)}
            constraint_costs, violations = self.constraints.penalties(responses)
            parts = times.record(*wait_named(refs))

        # 4-5. scores normalised once and penalised; KL folded into per-token rewards; advantages
        scores = sequence_scores(parts["scoring"], self.normalizer, clip=ppo.reward.clip,
                                 constraint_costs=constraint_costs, ended_with_eos=rollout.ended_with_eos,
                                 truncation_cost=ppo.reward.truncation_penalty)
        exp, advantage_stats = build_experience(
            rollout, ref_logprobs=parts["reference"], values=parts["critic_values"], scores=scores,
            kl_coef=self.kl.coef, kl_estimator=ppo.kl.estimator, estimator=ppo.advantage_estimator,
            gamma=ppo.gamma, lam=ppo.lam, whiten=ppo.whiten_advantages)

        # 6. in parallel: the policy's and the critic's updates, each rank on its shard
        with times("training"):
            trained = times.record(*wait_named({
                "policy_train": actors.policy.call_each("train", [(s, step) for s in exp.split(len(actors.policy))]),
                "critic_train": actors.critic.call_each("train", [(s, step) for s in exp.split(len(actors.critic))])}))
        self.count_nonfinite(step, trained["policy_train"] + trained["critic_train"])
        self.kl.update(advantage_stats["kl"], len(exp))

        return (step_metrics(exp, parts["scoring"], parts["policy_logprobs"], constraint_costs, violations,
                             advantage_stats, self.kl.coef, trained["policy_train"], trained["critic_train"])
                | sync | {"pool_restarts": actors.pool.restarts, "prompts_taken": self.stream.consumed,
                          "policy_lag": step - sampled_by} | times.metrics())

    def take_rollout(self, step: int, times: StageTimes) -> tuple[Rollout, int, dict[str, float]]:
        """The batch this step trains on, the weights version that sampled it, and the metrics
        of the weight sync. The one place weights reach the pool: right before a batch is
        submitted, the pool takes the policy's current weights. With ``policy_lag=1`` the next
        step's batch is submitted as soon as this one is in, so it samples while this step
        trains, one update behind."""
        sync = {}
        if self.pending is None:  # policy_lag=0, or the first step of a run
            sync = self.weights.sync(version=step)
            self.pending = self.submit_next_batch(step)
        pending, self.pending = self.pending, None
        with times("generation"):
            rollout = self.actors.pool.collect(pending, self.weights.restore)
        if self.ppo.policy_lag:
            sync = sync or self.weights.sync(version=step)
            if step + 1 < self.ppo.steps:
                self.pending = self.submit_next_batch(step + 1)
        return rollout, pending.weights_version, sync

    # ------------------------------------------------------------------ the run
    def run(self) -> list[dict]:
        ppo = self.ppo
        start_step = self.resume() if ppo.resume else 0
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

    def count_nonfinite(self, step: int, stats: list[PolicyTrainStats | CriticTrainStats]) -> None:
        skipped = sum(s.nonfinite_updates for s in stats)
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

    def prompt_batch(self, rows: torch.Tensor) -> PromptBatch:
        """The prompts of ``rows``, left-padded, the longest cut from the left."""
        ids, mask = encode_prompts(self.tokenizer, [self.prompts[i].formatted for i in rows.tolist()],
                                   self.max_prompt_tokens)
        return PromptBatch(prompt_index=rows, prompt_ids=ids, prompt_mask=mask)

    def make_probe(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fixed sequences whose log-probs the pool must reproduce after each sync: the first
        prompts, answered with the text of the next ones (any real text will do)."""
        k = min(self.ppo.probe_prompts, len(self.prompts) // 2)
        batch = self.prompt_batch(torch.arange(k))
        answers = [response_text(self.tokenizer, self.prompts[k + i].raw) for i in range(k)]
        self.tokenizer.padding_side = "right"
        encoded = self.tokenizer(answers, return_tensors="pt", padding="max_length", truncation=True,
                                 max_length=self.ppo.max_new_tokens, add_special_tokens=False)
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
        keep_metrics_until(self.out / METRICS_FILE, state["step"])
        log.info("resumed from the checkpoint after step %d", state["step"])
        return state["step"]

    def export_policy(self) -> Path:
        ray.get(self.actors.policy.call("export_hf", str(self.out / POLICY_DIR)))
        return self.out / POLICY_DIR


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
    table, _ = read_prompts(path, data_cfg.max_text_chars)
    rows = table.to_pylist()[: max_prompts or None]
    return [PromptText(r["prompt"], format_prompt(tokenizer, r["prompt"], r.get("system"), r.get("conversation")))
            for r in rows]


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop the records an interrupted run logged after its last checkpoint: they are redone."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


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
    check_position_limit(
        str(sft_model_path), cfg.data.max_prompt_tokens + ppo.max_new_tokens,
        f"data.max_prompt_tokens {cfg.data.max_prompt_tokens} + ppo.max_new_tokens {ppo.max_new_tokens}")
    started = time.monotonic()
    with ray_session(cfg.cluster):
        coordinator = PPOCoordinator(ppo, cfg.cluster, cfg.data, int(cfg.seed), str(sft_model_path),
                                     str(reward_model_path) if reward_model_path else None, out)
        try:
            step_times = coordinator.run()
            policy_dir = coordinator.export_policy()
        finally:
            coordinator.actors.shutdown()
    records = read_metrics(out / METRICS_FILE)
    plot_curves(records, CURVES, out / CURVES_FIGURE, title="PPO")
    plot_curves(records, [k for k in records[-1] if k.startswith("time/")], out / STAGE_TIMES_FIGURE,
                title="PPO stage wall time (s)")
    write_model_card(policy_dir, policy_card(ppo, str(sft_model_path), reward_model_path, records))
    mark_complete(out, {"sft_model": str(sft_model_path), "reward_model": reward_model_path,
                        "policy": str(policy_dir), "steps": ppo.steps, "wall_s": round(time.monotonic() - started, 1),
                        "stage_times_per_step": step_times, "final_metrics": records[-1]})
    return out


def policy_card(ppo: PPOConfig, sft_model_path: str, reward_model_path: str | None, records: list[dict]) -> ModelCard:
    scorer = (f"the reward model `{reward_model_path}`" if ppo.reward.kind == "model"
              else f"`ppo.reward.kind={ppo.reward.kind}`")
    first, last = records[0], records[-1]
    return ModelCard(
        title="alignray PPO policy", tags=["ppo", "rlhf"], base_model=sft_model_path,
        description="A causal language model trained with PPO against a reward, held near its SFT model by a "
                    "KL penalty and rule-based constraint penalties.",
        data=f"{ppo.steps} steps of {ppo.prompts_per_step} prompts, up to {ppo.max_new_tokens} new tokens per "
             f"response; rewarded by {scorer}"
             + (", normalised with running statistics." if ppo.reward.normalize else "."),
        config={"lr": ppo.lr, "kl_coef": ppo.kl.coef, "kl_controller": ppo.kl.controller, "clip_eps": ppo.clip_eps,
                "epochs": ppo.epochs, "minibatches": ppo.minibatches, "advantage_estimator": ppo.advantage_estimator},
        metrics={"reward_raw_first_step": first["reward_raw"], "reward_raw_last_step": last["reward_raw"],
                 "kl_last_step": last["kl"], "response_length_last_step": last["response_length"]})


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> str:
    start_app(cfg, "ppo")
    sft = cfg.ppo.sft_model_path or resolve_base_model(cfg.model, cfg.cache_dir, cfg.seed)
    out = run_ppo(cfg, sft, cfg.ppo.reward_model_path)
    print(f"PPO policy: {out / 'policy'}")
    return str(out)


if __name__ == "__main__":
    main()
