"""Phase 4: PPO against the reward model; this process is the coordinator (single controller).

    python -m alignray.workflows.ppo                                  # base model, oracle needs kind:
    python -m alignray.workflows.ppo ppo.reward.kind=training_annotators ppo.steps=40
    python -m alignray.workflows.ppo ppo.sft_model_path=... ppo.reward_model_path=...

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

import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import hydra
import ray
import torch
from omegaconf import DictConfig

from alignray.actors.base import wait_named
from alignray.actors.monitor import OverOptimisationMonitor, make_judge, monitor_probe_prompts, monitor_summary
from alignray.actors.placement import PPOActors, launch_ppo_actors
from alignray.actors.rollout import PendingRollout
from alignray.actors.runtime import ray_session
from alignray.actors.weight_sync import WeightSync
from alignray.config import AlignrayConfig, ClusterConfig, DataConfig, PPOConfig
from alignray.data.prompts import format_prompt, load_prompt_texts, response_text
from alignray.ppo.experience import (CriticTrainStats, Experience, PolicyTrainStats, PromptBatch, PromptStream,
                                 Rollout, build_experience, encode_prompt_batch, sequence_scores, step_metrics)
from alignray.models.generation import decode_responses
from alignray.core.artifacts import (CURVES_FIGURE, METRICS_FILE, OVEROPTIMISATION_FIGURE, POLICY_DIR, PPO,
                                STAGE_TIMES_FIGURE)
from alignray.core.metrics import (MetricsLogger, StageTimes, keep_metrics_until, plot_curves, plot_stage_times,
                              read_metrics)
from alignray.ppo.monitor import best_check, plot_overoptimisation
from alignray.core.model_card import ppo_policy_card, write_model_card
from alignray.models.modeling import check_position_limit, load_tokenizer
from alignray.core.tracking import TrackingSettings, open_tracker, tracking_settings
from alignray.ppo.checks import check_algorithm
from alignray.ppo import (
    ConstraintPenalty,
    RunningRewardNormalizer,
    WeightedReward,
    make_kl_controller,
)
from alignray.workflows.phases import run_phase
from alignray.workflows.common import (CONFIG_PATH, is_complete, mark_complete, phase_dir, run_app,
                                       start_app)
from alignray.judges.build import CACHE_FILE
from alignray.scoring import PPO_REWARD, resolve_scorer, reward_scorer

log = logging.getLogger("alignray.ppo")
# keys a run does not log (value_loss without a critic, kl_loss with the KL in the reward) are left out
PROGRESS_KEYS = ("reward_raw", "kl", "response_length", "value_loss", "kl_loss", "approx_kl", "step_s")
CURVES = ["reward_raw", "reward_normalized", "kl", "response_length", "value_loss", "kl_loss"]
# The stages of a step that run one after another (``time/<stage>``): stacked, they make the
# step's time. The rest (reference, scoring, policy_train, ...) run in parallel inside them.
SEQUENTIAL_STAGES = ["sync", "sync_probe", "generation", "experience", "training", "monitor"]


class PPOCoordinator:
    def __init__(self, ppo: PPOConfig, cluster_cfg: ClusterConfig, data_cfg: DataConfig, seed: int,
                 sft_model_path: str, reward_model_path: str | None, out: Path, eval_prompts: int):
        """``eval_prompts``: the held-out prompts the evaluation takes (eval.num_prompts), which
        the monitor's probe must leave to it."""
        self.ppo, self.seed, self.out = ppo, seed, out
        self.ckpt_dir = out / "checkpoints"
        self.tokenizer = load_tokenizer(sft_model_path)
        self.tokenizer.truncation_side = "left"
        self.prompts = load_prompt_texts(data_cfg, self.tokenizer, out, ppo.max_prompts)
        self.max_prompt_tokens = data_cfg.max_prompt_tokens
        self.stream = PromptStream(len(self.prompts), seed)
        self.kl = make_kl_controller(ppo.kl.controller, ppo.kl.coef, ppo.kl.target, ppo.kl.horizon)
        self.reward_sum = WeightedReward.from_config(ppo.reward)  # the scorer's score plus the user's functions
        self.normalizer = RunningRewardNormalizer() if ppo.reward.normalize else None
        self.constraints = ConstraintPenalty.from_rule_set(ppo.reward.constraints)
        check_algorithm(ppo)
        self.nonfinite_in_a_row = 0
        self.pending: PendingRollout | None = None  # policy_lag=1: the next step's batch, in flight
        self.stream_state_before_pending: dict | None = None
        self.actors: PPOActors = launch_ppo_actors(ppo, cluster_cfg, seed, sft_model_path, reward_model_path,
                                                   data_cfg.max_prompt_tokens)
        self.weights = WeightSync(self.actors.policy, self.actors.pool, self.make_probe(), ppo.sync,
                                  self.actors.placements)
        self.updates = 0  # policy updates the actors hold (a rollback lowers it)
        self.monitor = self.make_monitor(data_cfg, eval_prompts)

    # ------------------------------------------------------------------ one PPO step
    def step(self, step: int) -> dict[str, float]:
        ppo, actors, times = self.ppo, self.actors, StageTimes()

        # 1-2. a batch of prompts; the rollout pool samples responses and records their
        # behaviour log-probs (with policy_lag=1 it did so while the last step trained)
        rollout, sampled_by, sync = self.take_rollout(step, times)
        prompts = [self.prompts[i].raw for i in rollout.prompt_index.tolist()]
        responses = decode_responses(self.tokenizer, rollout.response_ids, rollout.response_mask)

        # 3. in parallel: reference log-probs, critic values, reward scores, and the policy's own
        # log-probs of the sampled tokens (their gap to the sampler's finds stale weights); penalties here
        with times("experience"):
            refs = self.experience_refs(rollout, prompts, responses)
            constraint_costs, violations = self.constraints.penalties(responses)
            parts = times.record(*wait_named(refs))

        # 4-5. the user's reward functions added; scores normalised once and penalised; KL folded
        # into per-token rewards (where it belongs to the reward); advantages
        raw, reward_parts = self.reward_sum.combine(parts["scoring"], prompts, responses)
        scores = sequence_scores(raw, self.normalizer, clip=ppo.reward.clip,
                                 constraint_costs=constraint_costs, ended_with_eos=rollout.ended_with_eos,
                                 truncation_cost=ppo.reward.truncation_penalty)
        exp, advantage_stats = build_experience(
            rollout, ref_logprobs=parts["reference"], scores=scores,
            values=parts.get("critic_values", torch.zeros_like(rollout.logprobs)),  # none without a critic
            kl_coef=self.kl.coef if ppo.kl.placement == "reward" else 0.0, kl_estimator=ppo.kl.estimator,
            estimator=ppo.advantage_estimator,
            gamma=ppo.gamma, lam=ppo.lam, whiten=ppo.whiten_advantages, policy_logprobs=parts["policy_logprobs"],
            correction=(ppo.rollout_correction.mode, ppo.rollout_correction.cap))

        # 6. in parallel: the policy's and (where there is one) the critic's updates, each rank on its shard
        with times("training"):
            trained = times.record(*wait_named(self.train_refs(exp, step)))
        policy_stats, critic_stats = trained["policy_train"], trained.get("critic_train", [])
        self.count_nonfinite(step, policy_stats + critic_stats)
        self.kl.update(advantage_stats["kl"], len(exp))

        return (step_metrics(exp, raw, parts["policy_logprobs"], constraint_costs, violations,
                             advantage_stats, self.kl.coef, policy_stats, critic_stats)
                | reward_parts | sync | {"pool_restarts": actors.pool.restarts, "prompts_taken": self.stream.consumed,
                          "policy_lag": step - sampled_by} | times.metrics())

    def experience_refs(self, rollout: Rollout, raw_prompts: list[str], responses: list[str]) -> dict:
        """What is computed in parallel on a sampled batch: reference log-probs, reward scores,
        the policy's own log-probs of the sampled tokens (their gap to the sampler's finds
        stale weights) and, where there is a critic, its values."""
        actors, sequences = self.actors, (rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids)
        refs = {"reference": actors.reference_logprobs(*sequences),
                "policy_logprobs": actors.policy.actors[0].logprobs.remote(*sequences),
                "scoring": actors.reward.score.remote(raw_prompts, responses)}
        if len(actors.critic):
            refs["critic_values"] = actors.critic.actors[0].values.remote(*sequences)
        return refs

    def train_refs(self, exp: Experience, step: int) -> dict:
        """The update of each role that trains, each rank on its shard of the batch; the
        policy is given the KL's weight (used where the KL is a loss term)."""
        extra = {"policy": (self.kl.coef,)}
        return {f"{role}_train": group.call_each("train", [(shard, step, *extra.get(role, ()))
                                                           for shard in exp.split(len(group))])
                for role, group in self.actors.trainable().items()}

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
    def run(self, tracking: TrackingSettings | None = None) -> list[dict]:
        ppo = self.ppo
        start_step = self.resume() if ppo.resume else 0
        tracker = open_tracker(tracking, self.out, self.out.name)
        step_times = []
        with MetricsLogger(self.out, total_steps=ppo.steps, name="ppo", tracker=tracker) as metrics_log:
            if self.monitor and start_step == 0:
                self.watch(0)  # the SFT model's answers: the judge's baseline
            for step in range(start_step, ppo.steps):
                started = time.monotonic()
                metrics = self.step(step)
                self.updates = step + 1
                stop = False
                if self.monitor:  # its cost is one of the step's stage times
                    watched = time.monotonic()
                    stop = self.monitor.due(step + 1, ppo.steps) and self.watch(step + 1)
                    metrics["time/monitor"] = round(time.monotonic() - watched, 4)
                metrics["step_s"] = time.monotonic() - started
                step_times.append({"step": step, **{k[5:]: v for k, v in metrics.items() if k.startswith("time/")}})
                metrics_log.log(step + 1, PROGRESS_KEYS, **metrics)
                last = step + 1 == ppo.steps or stop
                if last or (ppo.checkpoint_every and (step + 1) % ppo.checkpoint_every == 0):
                    self.save_checkpoint(step + 1)
                if stop:
                    break
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

    # ------------------------------------------------------------------ over-optimisation monitor
    def make_monitor(self, data_cfg: DataConfig, eval_prompts: int) -> OverOptimisationMonitor | None:
        prompts = monitor_probe_prompts(self.ppo.monitor, eval_prompts, data_cfg, self.out)
        if prompts is None:
            return None
        probe = encode_prompt_batch(self.tokenizer, [format_prompt(self.tokenizer, p) for p in prompts],
                                     torch.arange(len(prompts)), self.max_prompt_tokens)
        return OverOptimisationMonitor(self.ppo.monitor, self.actors, self.weights, probe, prompts, self.tokenizer,
                                       judge=make_judge(self.ppo.monitor, data_cfg.source), out=self.out,
                                       seed=self.seed)

    def watch(self, step: int) -> bool:
        """One monitor check after ``step`` updates: keeps a checkpoint of the judge's best
        checks (within ``ppo.monitor.keep_checkpoints``); True when an alarm stops the run
        (``on_alarm=stop``, or ``rollback``, which first restores the judge's best checkpoint)."""
        raised = self.monitor.check(step)
        keep = self.monitor.steps_to_keep()
        if step in keep:
            self.save_checkpoint(step, self.monitor_checkpoint(step))
        for folder in (self.ckpt_dir / "monitor").glob("step-*"):
            if int(folder.name.removeprefix("step-")) not in keep:
                shutil.rmtree(folder)
        action = self.ppo.monitor.on_alarm
        if not raised or action == "log":
            return False
        if action == "rollback":
            self.hand_over_best()
        log.warning("monitor: %s after an alarm at step %d", "rolled back and stopped" if action == "rollback"
                    else "stopped", step)
        return True

    def monitor_checkpoint(self, step: int) -> Path:
        return self.ckpt_dir / "monitor" / f"step-{step}"

    def hand_over_best(self) -> int | None:
        """Put the judge's best checked policy (with critic, optimiser and KL state) in the
        actors, if the monitor ran; returns its step."""
        if not self.monitor:
            return None
        best = best_check(self.monitor.history)
        if best.step != self.updates:
            self.updates = self.restore(self.monitor_checkpoint(best.step))
            log.info("monitor: the judge preferred the policy after %d updates; it is the one kept", best.step)
        return best.step

    # ------------------------------------------------------------------ prompts
    def submit_next_batch(self, step: int) -> PendingRollout:
        """The next ``prompts_per_step`` prompts to the pool, each repeated on
        ``samples_per_prompt`` consecutive rows: a group, kept whole on one worker."""
        self.stream_state_before_pending = self.stream.state_dict()
        rows = self.stream.next_batch(self.ppo.prompts_per_step).repeat_interleave(self.ppo.samples_per_prompt)
        return self.actors.pool.submit(self.prompt_batch(rows), step, self.ppo.samples_per_prompt)

    def prompt_batch(self, rows: torch.Tensor) -> PromptBatch:
        """The training prompts of ``rows``."""
        return encode_prompt_batch(self.tokenizer, [self.prompts[i].formatted for i in rows.tolist()], rows,
                                   self.max_prompt_tokens)

    def make_probe(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fixed sequences whose log-probs the pool must reproduce after each sync: the first
        prompts, answered with the text of the next ones (any real text will do)."""
        k = min(self.ppo.sync.probe_prompts, len(self.prompts) // 2)
        batch = self.prompt_batch(torch.arange(k))
        answers = [response_text(self.tokenizer, self.prompts[k + i].raw) for i in range(k)]
        self.tokenizer.padding_side = "right"
        encoded = self.tokenizer(answers, return_tensors="pt", padding="max_length", truncation=True,
                                 max_length=self.ppo.rollout.max_new_tokens, add_special_tokens=False)
        self.tokenizer.padding_side = "left"
        return batch.prompt_ids, batch.prompt_mask, encoded["input_ids"], encoded["attention_mask"].bool()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, folder: Path | None = None) -> None:
        """Actors first, the coordinator's state last: its file names the actor checkpoints
        that belong to it, so a crash in between resumes consistently."""
        folder = folder or self.ckpt_dir
        saving = {role: group.call("save_checkpoint", str(folder / role), {"step": step})
                  for role, group in self.actors.trainable().items()}
        state = {"step": step, "tags": {role: Path(ray.get(refs)[0]).name for role, refs in saving.items()},
                 # a batch in flight is not saved: a resumed run draws its prompts again
                 "kl": self.kl.state_dict(),
                 "stream": self.stream_state_before_pending if self.pending else self.stream.state_dict(),
                 "normalizer": self.normalizer.state_dict() if self.normalizer else None,
                 "nonfinite_in_a_row": self.nonfinite_in_a_row, "torch_rng": torch.get_rng_state()}
        partial = folder / "coordinator.pt.partial"
        torch.save(state, partial)
        os.replace(partial, folder / "coordinator.pt")
        log.info("checkpoint after step %d in %s", step, folder)

    def resume(self) -> int:
        """Restore the last checkpoint, if any; returns the step to continue from."""
        if not (self.ckpt_dir / "coordinator.pt").exists():
            return 0
        step = self.updates = self.restore(self.ckpt_dir)
        keep_metrics_until(self.out / METRICS_FILE, step)
        if self.monitor:
            self.monitor.resume(step)
        log.info("resumed from the checkpoint after step %d", step)
        return step

    def restore(self, folder: Path) -> int:
        """Load a checkpoint folder into the actors and this coordinator; returns its step."""
        state = torch.load(folder / "coordinator.pt", weights_only=False)
        for role, group in self.actors.trainable().items():
            (folder / role / "latest").write_text(state["tags"][role])
            ray.get(group.call("load_checkpoint", str(folder / role)))
        self.kl.load_state_dict(state["kl"])
        self.stream.load_state_dict(state["stream"])
        if self.normalizer is not None:
            self.normalizer.load_state_dict(state["normalizer"])
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]
        torch.set_rng_state(state["torch_rng"])
        return state["step"]

    def export_policy(self) -> Path:
        ray.get(self.actors.policy.call("export_hf", str(self.out / POLICY_DIR)))
        return self.out / POLICY_DIR


def run_ppo(cfg: AlignrayConfig, sft_model_path: str, reward_model_path: str | None) -> Path:
    """Train the policy with PPO; returns the output folder (``policy/`` in HF format,
    metrics.jsonl, curves.png, summary.json). A finished run with the same settings is reused;
    an interrupted one resumes from its last checkpoint."""
    out = phase_dir(cfg, PPO, sft_model=sft_model_path, reward_model=reward_model_path)
    if is_complete(out):
        log.info("PPO output exists: %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    ppo = with_judge_cache(cfg.ppo, out)
    resolve_scorer(reward_scorer(ppo.reward, reward_model_path), PPO_REWARD)  # a wrong choice fails before Ray starts
    new_tokens = ppo.rollout.max_new_tokens
    check_position_limit(str(sft_model_path), cfg.data.max_prompt_tokens + new_tokens,
                         f"data.max_prompt_tokens {cfg.data.max_prompt_tokens} + ppo.rollout.max_new_tokens {new_tokens}")
    started = time.monotonic()
    with ray_session(cfg.cluster):
        connected = time.monotonic()
        coordinator = PPOCoordinator(ppo, cfg.cluster, cfg.data, cfg.seed, str(sft_model_path),
                                     str(reward_model_path) if reward_model_path else None, out, cfg.eval.num_prompts)
        startup = {"ray_init": round(connected - started, 3), **coordinator.actors.startup_s,
                   "coordinator_total": round(time.monotonic() - connected, 3)}
        log.info("start-up seconds: %s", startup)
        try:
            step_times = coordinator.run(tracking_settings(cfg))
            policy_step = coordinator.hand_over_best() or coordinator.updates
            policy_dir = coordinator.export_policy()
            monitor, reference = coordinator.monitor, coordinator.actors.reference_description()
            actor_names = list(coordinator.actors.placements)
            scorer_stats = ray.get(coordinator.actors.reward.scorer_stats.remote())
        finally:
            coordinator.actors.shutdown()
    records = read_metrics(out / METRICS_FILE)
    plot_curves(records, CURVES, out / CURVES_FIGURE, title="PPO")
    plot_stage_times(records, SEQUENTIAL_STAGES, out / STAGE_TIMES_FIGURE, title="Where a PPO step's time goes")
    if monitor:
        plot_overoptimisation(monitor.history, policy_step, monitor.fired, out / OVEROPTIMISATION_FIGURE)
    write_model_card(policy_dir, ppo_policy_card(ppo, str(sft_model_path), reward_model_path, records))
    mark_complete(out, {"sft_model": str(sft_model_path), "reward_model": reward_model_path,
                        "policy": str(policy_dir), "policy_step": policy_step, "steps": ppo.steps,
                        "steps_run": len(records), "wall_s": round(time.monotonic() - started, 1),
                        "monitor": monitor_summary(monitor), "reference": reference, "actors": actor_names,
                        "startup_s": startup,
                        "stage_times_per_step": step_times, "final_metrics": records[-1]}
                  | ({"reward_scorer": scorer_stats} if scorer_stats else {}))
    return out


def with_judge_cache(ppo: PPOConfig, out: Path) -> PPOConfig:
    """A judge reward without a cache file of its own keeps its verdicts in the run's folder."""
    judge = ppo.reward.judge
    if ppo.reward.kind != "judge" or judge.cache_path:
        return ppo
    return replace(ppo, reward=replace(ppo.reward, judge=replace(judge, cache_path=str(out / CACHE_FILE))))


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> str:
    config = start_app(cfg, "ppo")
    out = run_phase(config, "ppo")
    log.info("PPO policy: %s", out / POLICY_DIR)
    return str(out)


if __name__ == "__main__":
    run_app(main)
