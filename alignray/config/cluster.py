"""Where the work runs: a local Ray instance or the cluster a job was submitted to."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ClusterConfig:
    # None starts a local Ray bound to 127.0.0.1; "auto" (or RAY_ADDRESS) joins a cluster.
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    # Logical GPUs for a local instance: lets the GPU layout run (and be tested) on CPU.
    num_gpus: Optional[int] = None
    object_store_memory_mb: int = 512
    # Ray Train workers for SFT and reward-model training.
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # torch threads of a Ray Train worker without a GPU (Ray sets OMP_NUM_THREADS=1);
    # 0: the node's cores shared out among the workers on it.
    train_threads: int = 0
    # PPO model roles: "separate" puts policy, reference, reward and critic on their own
    # GPU bundles; "colocated" shares one GPU through fractional requests.
    placement: str = "separate"
    gpus_per_role: float = 1.0
    cpus_per_role: float = 0.0
    # Custom Ray node resources each PPO actor's bundle also asks for, to choose its nodes:
    # e.g. nodes started with `ray start --resources='{"model_node": 4}'` and
    # model_resources={model_node: 1} take the policy, critic, reference and reward;
    # rollout_resources does the same for every rollout worker (separate layout only).
    model_resources: dict[str, float] = field(default_factory=dict)
    rollout_resources: dict[str, float] = field(default_factory=dict)
    # Seconds to wait for the cluster to hold what a phase asks for (PPO placement groups,
    # Ray Train workers) before stopping with an error that names the missing resources.
    placement_timeout_s: float = 120.0
