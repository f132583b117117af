"""Where the PPO actors run, and launching them.

Layouts (``cluster.placement``):
- ``separate`` (default): one placement group with a ``{GPU: gpus_per_role, CPU: cpus_per_role}``
  bundle per model actor (policy ranks, critic ranks, reference, reward), so no two share a
  GPU. Rollout workers are scheduled outside it, with ``ppo.rollout_gpus`` each.
- ``colocated``: one ``{GPU: 1}`` bundle that every actor, rollout workers included, shares
  through equal fractional requests: for one-GPU machines.
- no GPU in the cluster (a CPU-only local run with ``cluster.num_gpus`` unset): no placement
  group; every actor asks for ``cpus_per_role`` CPUs and no GPU.

A test cluster with logical GPUs runs the GPU layouts on CPU: the actors hold a GPU id but
choose their device from torch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.base import ActorGroup
from actors.critic import CriticActor
from actors.policy import PolicyActor
from actors.reference import ReferenceActor
from actors.reward import RewardActor
from actors.rollout import RolloutPool, RolloutWorker
from alignray.config.ppo import PPOConfig
from alignray.reward.client import TOKEN_ENV

PLACEMENT_TIMEOUT_S = 120
GPU_FRACTION_GRANULARITY = 1e-4  # Ray's smallest unit of a fractional resource


@dataclass
class Layout:
    """Resource requests: ``model_options[i]`` for the i-th model actor (policy ranks, critic
    ranks, reference, reward), ``rollout_options`` for every rollout worker."""

    placement_group: Any
    model_options: list[dict]
    rollout_options: dict


def plan_layout(cluster_cfg, num_model_actors: int, num_rollout_workers: int, rollout_gpus: float) -> Layout:
    cpus = float(cluster_cfg.cpus_per_role)
    if ray.cluster_resources().get("GPU", 0) == 0:
        options = {"num_gpus": 0, "num_cpus": cpus}
        return Layout(None, [options] * num_model_actors, options)
    if cluster_cfg.placement == "separate":
        bundle = {"GPU": float(cluster_cfg.gpus_per_role)} | ({"CPU": cpus} if cpus else {})
        pg = _ready(placement_group([dict(bundle) for _ in range(num_model_actors)], strategy="PACK"))
        model_options = [{"num_gpus": float(cluster_cfg.gpus_per_role), "num_cpus": cpus,
                          "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, i)}
                         for i in range(num_model_actors)]
        return Layout(pg, model_options, {"num_gpus": rollout_gpus, "num_cpus": cpus})
    if cluster_cfg.placement == "colocated":
        total = num_model_actors + num_rollout_workers
        share = int(1.0 / total / GPU_FRACTION_GRANULARITY) * GPU_FRACTION_GRANULARITY
        bundle = {"GPU": 1.0} | ({"CPU": cpus * total} if cpus else {})
        pg = _ready(placement_group([bundle]))
        options = {"num_gpus": share, "num_cpus": cpus,
                   "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, 0)}
        return Layout(pg, [options] * num_model_actors, options)
    raise ValueError(f"cluster.placement must be separate or colocated, not {cluster_cfg.placement!r}")


def _ready(pg):
    try:
        ray.get(pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise RuntimeError(f"the cluster cannot place the PPO bundles {pg.bundle_specs} "
                           f"(resources: {ray.cluster_resources()})") from None
    return pg


@dataclass
class PPOActors:
    policy: ActorGroup
    critic: ActorGroup
    reference: Any
    reward: Any
    pool: RolloutPool
    placement_group: Any

    def model_actors(self) -> dict[str, Any]:
        """Every model actor by a name that says which it is (``policy0``, ``reference``...)."""
        named = {f"policy{i}": a for i, a in enumerate(self.policy.actors)}
        named |= {f"critic{i}": a for i, a in enumerate(self.critic.actors)}
        return named | {"reference": self.reference, "reward": self.reward}

    def shutdown(self) -> None:
        for actor in [*self.model_actors().values(), *self.pool.actors]:
            ray.kill(actor)
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)


def launch_ppo_actors(ppo: PPOConfig, cluster_cfg, seed: int, sft_model_path: str,
                      reward_model_path: str | None, max_prompt_tokens: int) -> PPOActors:
    """Place and start every PPO actor, form the policy's and the critic's DeepSpeed worlds,
    and wait until all are ready."""
    n_policy, n_critic = ppo.policy_actors, ppo.critic_actors
    layout = plan_layout(cluster_cfg, n_policy + n_critic + 2, ppo.rollout_workers, ppo.rollout_gpus)
    options = iter(layout.model_options)
    critic_backbone = reward_model_path if ppo.critic_init == "reward_model" else sft_model_path
    if ppo.critic_init == "reward_model" and not reward_model_path:
        raise ValueError("ppo.critic_init=reward_model needs a reward model path")

    policy = ActorGroup("policy", [
        ray.remote(PolicyActor).options(max_restarts=0, **next(options)).remote(
            sft_model_path, ppo, rank, n_policy, seed) for rank in range(n_policy)])
    critic = ActorGroup("critic", [
        ray.remote(CriticActor).options(max_restarts=0, **next(options)).remote(
            critic_backbone, ppo, rank, n_critic, seed) for rank in range(n_critic)])
    reference = ray.remote(ReferenceActor).options(max_restarts=0, **next(options)).remote(
        sft_model_path, ppo.temperature, ppo.deepspeed.precision, seed)
    # the endpoint's bearer token travels as an environment variable, never in the config
    token_env = {"env_vars": {TOKEN_ENV: os.environ[TOKEN_ENV]}} if os.environ.get(TOKEN_ENV) else None
    reward = ray.remote(RewardActor).options(max_restarts=0, runtime_env=token_env, **next(options)).remote(
        ppo.reward, reward_model_path, seed)
    workers = [ray.remote(RolloutWorker).options(max_restarts=ppo.rollout_max_restarts, max_task_retries=0,
                                                 **layout.rollout_options).remote(
        sft_model_path, ppo, max_prompt_tokens, seed)
        for _ in range(ppo.rollout_workers)]
    actors = PPOActors(policy, critic, reference, reward, RolloutPool(workers, seed),
                       layout.placement_group)
    try:
        policy.form_world()
        critic.form_world()
        ray.get([a.placement.remote() for a in [*actors.model_actors().values(), *workers]])
    except Exception:
        actors.shutdown()
        raise
    return actors
