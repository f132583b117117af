"""Where the PPO actors run, and launching them: the plan of ``alignray.ppo.layout`` (one GPU
bundle per model role, a bundle per rollout worker, or every actor colocated on one GPU) as
Ray placement groups. Each group must be ready within ``cluster.placement_timeout_s``,
otherwise the launch stops with an error that names the missing resources.

A test cluster with logical GPUs runs the GPU layouts on CPU: the actors hold a GPU id but
choose their device from torch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from alignray.actors.base import ActorGroup
from alignray.actors.critic import CriticActor
from alignray.actors.policy import PolicyActor
from alignray.actors.reference import ReferenceActor
from alignray.actors.reward import RewardActor
from alignray.actors.rollout import RolloutPool, RolloutWorker
from alignray.actors.runtime import placement_timeout
from alignray.core.metrics import StageTimes
from alignray.config.ppo import PPOConfig
from alignray.ppo.layout import LayoutPlan, Slot, model_actor_count, plan_layout, sync_methods
from alignray.ppo import needs_critic
from alignray.reward.client import TOKEN_ENV
from alignray.reward.model import reward_member_dirs


def reserve(plan: LayoutPlan, timeout_s: float) -> list:
    """A placement group per group of the plan, each ready; on a timeout the groups made so
    far are removed and PlacementTimeout names what is missing."""
    groups = []
    try:
        for bundles, name in zip(plan.groups, plan.group_names):
            groups.append(placement_group([dict(b) for b in bundles], strategy="PACK"))
            try:
                ray.get(groups[-1].ready(), timeout=timeout_s)
            except ray.exceptions.GetTimeoutError:
                raise placement_timeout(f"the PPO {name}", bundles, timeout_s) from None
    except BaseException:
        for group in groups:
            remove_placement_group(group)
        raise
    return groups


def actor_options(slot: Slot, groups: list) -> dict[str, Any]:
    options = {"num_cpus": slot.cpus, "num_gpus": slot.gpus}
    if slot.group is not None:
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(groups[slot.group], slot.bundle)
    return options


@dataclass
class PPOActors:
    policy: ActorGroup
    critic: ActorGroup  # empty when the advantage estimator needs no critic
    reference: Any  # None for a LoRA policy: the policy serves the reference log-probs
    reward: Any
    pool: RolloutPool
    placement_group: Any  # the model actors' (None when they need none)
    placement_groups: list  # every group of the launch, removed at shutdown
    placements: dict[str, dict] = field(default_factory=dict)  # by actor name: ModelActor.placement()
    startup_s: dict[str, float] = field(default_factory=dict)  # launch_ppo_actors' parts

    def model_actors(self) -> dict[str, Any]:
        """Every model actor by a name that says which it is (``policy0``, ``reference``...)."""
        named = {f"policy{i}": a for i, a in enumerate(self.policy.actors)}
        named |= {f"critic{i}": a for i, a in enumerate(self.critic.actors)}
        return named | ({"reference": self.reference} if self.reference else {}) | {"reward": self.reward}

    def reference_description(self) -> str:
        """Where the reference log-probs come from, in words (the PPO summary and report)."""
        if self.reference is None:
            return "the LoRA policy with its adapter disabled (no reference actor)"
        return "the reference actor (a frozen copy of the SFT model)"

    def reference_logprobs(self, prompt_ids, prompt_mask, response_ids) -> ray.ObjectRef:
        """The reference's log-probs: the reference actor's, or a LoRA policy's with its adapter disabled."""
        if self.reference is None:
            return self.policy.actors[0].ref_logprobs.remote(prompt_ids, prompt_mask, response_ids)
        return self.reference.logprobs.remote(prompt_ids, prompt_mask, response_ids)

    def trainable(self) -> dict[str, ActorGroup]:
        """The groups that train, by role: the policy, and the critic where there is one."""
        return {"policy": self.policy} | ({"critic": self.critic} if len(self.critic) else {})

    def shutdown(self) -> None:
        for actor in [*self.model_actors().values(), *self.pool.actors]:
            ray.kill(actor)
        for group in self.placement_groups:
            remove_placement_group(group)


def launch_ppo_actors(ppo: PPOConfig, cluster_cfg, seed: int, sft_model_path: str,
                      reward_model_path: str | None, max_prompt_tokens: int) -> PPOActors:
    """Place and start every PPO actor (a critic only for an estimator that reads one), form
    the policy's and the critic's DeepSpeed worlds, and wait until all are ready. The seconds
    of each part of the start are kept in ``startup_s``."""
    # a critic-free estimator: no critic is placed (no bundle asked for), loaded or trained
    n_policy, n_critic = ppo.policy.actors, ppo.critic.actors if needs_critic(ppo.advantage_estimator) else 0
    plan = plan_layout(cluster_cfg, model_actor_count(n_policy, n_critic, ppo.policy.lora.enabled),
                       ppo.rollout.workers, ppo.rollout.gpus,
                       cluster_has_gpus=ray.cluster_resources().get("GPU", 0) > 0)
    startup = StageTimes()
    with startup("placement_groups"):
        groups = reserve(plan, float(cluster_cfg.placement_timeout_s))
    with startup("actors_ready"):  # processes started, modules imported, models loaded
        actors = start_actors(ppo, plan, groups, n_critic, seed, sft_model_path, reward_model_path,
                              max_prompt_tokens)
    try:
        named = actors.model_actors() | {f"rollout{i}": w for i, w in enumerate(actors.pool.actors)}
        with startup("actors_ready"):
            actors.placements = dict(zip(named, ray.get([a.placement.remote() for a in named.values()])))
        # refuse a weight sync that cannot work before the worlds form (the sync logs its choice)
        sync_methods(ppo.sync.method, actors.placements["policy0"],
                     [actors.placements[f"rollout{i}"] for i in range(len(actors.pool.actors))],
                     ppo.policy.lora.enabled)
        with startup("deepspeed_worlds"):
            for group in actors.trainable().values():
                group.form_world()
    except Exception:
        actors.shutdown()
        raise
    actors.startup_s = {stage: round(s, 3) for stage, s in startup.seconds.items()} | {
        "slowest_actor_init": max(p["init_s"] for p in actors.placements.values())}
    return actors


def start_actors(ppo: PPOConfig, plan: LayoutPlan, groups: list, n_critic: int, seed: int, sft_model_path: str,
                 reward_model_path: str | None, max_prompt_tokens: int) -> PPOActors:
    """Create every actor of the plan in its slot (Ray starts them in parallel)."""
    n_policy, lora_policy = ppo.policy.actors, ppo.policy.lora.enabled
    critic_backbone = sft_model_path
    if n_critic and ppo.critic.init == "reward_model":
        if not reward_model_path:
            raise ValueError("ppo.critic.init=reward_model needs a reward model path")
        critic_backbone = str(reward_member_dirs(reward_model_path)[0])  # an ensemble's first member
    options = iter(actor_options(slot, groups) for slot in plan.model_actors)
    update = ppo.update_settings()
    policy = ActorGroup("policy", [
        ray.remote(PolicyActor).options(max_restarts=0, **next(options)).remote(
            sft_model_path, ppo.policy, update, ppo.policy_objective(), rank, n_policy, seed)
        for rank in range(n_policy)])
    critic = ActorGroup("critic", [
        ray.remote(CriticActor).options(max_restarts=0, **next(options)).remote(
            critic_backbone, ppo.critic, update, rank, n_critic, seed) for rank in range(n_critic)])
    # a LoRA policy is its own reference (its adapter disabled): no second copy is loaded or placed
    reference = None if lora_policy else ray.remote(ReferenceActor).options(max_restarts=0, **next(options)).remote(
        sft_model_path, ppo.rollout.temperature, ppo.deepspeed.precision, seed)
    # the endpoint's bearer token travels as an environment variable, never in the config
    token_env = {"env_vars": {TOKEN_ENV: os.environ[TOKEN_ENV]}} if os.environ.get(TOKEN_ENV) else None
    reward = ray.remote(RewardActor).options(max_restarts=0, runtime_env=token_env, **next(options)).remote(
        ppo.reward, reward_model_path, seed, (sft_model_path, ppo.judge_reference_sampling(max_prompt_tokens, seed)))
    workers = [ray.remote(RolloutWorker).options(max_restarts=ppo.rollout.max_restarts, max_task_retries=0,
                                                 **actor_options(slot, groups)).remote(
        sft_model_path, ppo.rollout, ppo.deepspeed.precision, max_prompt_tokens, seed, ppo.policy.lora)
        for slot in plan.rollout_workers]
    model_group = plan.model_actors[0].group
    return PPOActors(policy, critic, reference, reward, RolloutPool(workers, seed),
                     None if model_group is None else groups[model_group], groups)
