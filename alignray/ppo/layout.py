"""Where the PPO actors go, planned without Ray, and whether a set of nodes can hold it.

A plan is a list of placement groups (each a list of resource bundles such as
``{"GPU": 1.0, "CPU": 2.0, "model_node": 1.0}``) and, for every actor, its CPUs and GPUs and
the bundle it runs in. ``actors/placement.py`` turns a plan into Ray placement groups;
``tests/test_layout.py`` plans every preset against the shipped cluster manifests.

Layouts (``cluster.placement``), when the cluster has GPUs:
- ``separate``: a bundle of ``{GPU: gpus_per_role, CPU: cpus_per_role}`` per model actor
  (policy ranks, critic ranks, reference, reward), so no two share a GPU; a second group
  with a ``{GPU: ppo.rollout.gpus, CPU: cpus_per_role}`` bundle per rollout worker.
- ``colocated``: one ``{GPU: 1}`` bundle that every actor, rollout workers included, shares
  through equal fractional requests: for one-GPU machines.
Without a GPU in the cluster every actor asks for ``cpus_per_role`` CPUs and no GPU.
``cluster.model_resources`` / ``cluster.rollout_resources`` are added to the bundles of each
kind, which sends the two kinds to the nodes that offer those custom resources. An actor
that asks for nothing at all needs no bundle.
"""
from __future__ import annotations

from dataclasses import dataclass

Resources = dict[str, float]
GPU_FRACTION_GRANULARITY = 1e-4  # Ray's smallest unit of a fractional resource


@dataclass(frozen=True)
class Slot:
    """One actor's request: ``cpus``/``gpus``, run in bundle ``bundle`` of placement group
    ``group`` (None: no placement group)."""
    cpus: float
    gpus: float
    group: int | None = None
    bundle: int = 0


@dataclass(frozen=True)
class LayoutPlan:
    groups: list[list[Resources]]  # the bundles of each placement group
    group_names: list[str]  # what each group holds, for messages
    model_actors: list[Slot]
    rollout_workers: list[Slot]

    def bundles(self) -> list[Resources]:
        return [bundle for group in self.groups for bundle in group]


def plan_layout(cluster_cfg, num_model_actors: int, num_rollout_workers: int, rollout_gpus: float,
                cluster_has_gpus: bool) -> LayoutPlan:
    cpus = float(cluster_cfg.cpus_per_role)
    model_extra = {k: float(v) for k, v in dict(cluster_cfg.model_resources or {}).items()}
    rollout_extra = {k: float(v) for k, v in dict(cluster_cfg.rollout_resources or {}).items()}
    if not cluster_has_gpus:
        model_gpus, rollout_gpus = 0.0, 0.0
    elif cluster_cfg.placement == "colocated":
        return _colocated(cpus, model_extra, rollout_extra, num_model_actors, num_rollout_workers)
    elif cluster_cfg.placement == "separate":
        model_gpus, rollout_gpus = float(cluster_cfg.gpus_per_role), float(rollout_gpus)
    else:
        raise ValueError(f"cluster.placement must be separate or colocated, not {cluster_cfg.placement!r}")
    groups, names = [], []
    model = _one_bundle_each("model actors", model_gpus, cpus, model_extra, num_model_actors, groups, names)
    rollout = _one_bundle_each("rollout workers", rollout_gpus, cpus, rollout_extra, num_rollout_workers,
                               groups, names)
    return LayoutPlan(groups, names, model, rollout)


def _one_bundle_each(name: str, gpus: float, cpus: float, extra: Resources, count: int,
                     groups: list, names: list) -> list[Slot]:
    """A placement group with a bundle per actor, appended to ``groups``; none when the
    actors ask for nothing."""
    bundle = nonzero({"GPU": gpus, "CPU": cpus} | extra)
    if not bundle or not count:
        return [Slot(cpus, gpus)] * count
    groups.append([dict(bundle) for _ in range(count)])
    names.append(name)
    return [Slot(cpus, gpus, len(groups) - 1, i) for i in range(count)]


def _colocated(cpus: float, model_extra: Resources, rollout_extra: Resources, num_model_actors: int,
               num_rollout_workers: int) -> LayoutPlan:
    if rollout_extra and rollout_extra != model_extra:
        raise ValueError("cluster.placement=colocated puts every actor on one GPU: cluster.rollout_resources "
                         "cannot send the rollout workers elsewhere (use placement=separate)")
    total = num_model_actors + num_rollout_workers
    share = int(1.0 / total / GPU_FRACTION_GRANULARITY) * GPU_FRACTION_GRANULARITY
    bundle = nonzero({"GPU": 1.0, "CPU": cpus * total} | model_extra)
    slot = Slot(cpus, share, 0, 0)
    return LayoutPlan([[bundle]], ["every PPO actor (colocated)"], [slot] * num_model_actors,
                      [slot] * num_rollout_workers)


def nonzero(resources: Resources) -> Resources:
    return {k: float(v) for k, v in resources.items() if v}


# ----------------------------------------------------------------------------- capacity
def unplaceable(bundles: list[Resources], nodes: list[Resources]) -> list[Resources]:
    """The bundles that do not fit on ``nodes`` (their capacities), placed largest first, each
    on the first node with room (first-fit decreasing: may miss a packing that exists, never
    claims one that does not)."""
    free = [dict(node) for node in nodes]
    left = []
    for bundle in sorted(bundles, key=lambda b: (-b.get("GPU", 0.0), -b.get("CPU", 0.0))):
        node = next((n for n in free if all(n.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())), None)
        if node is None:
            left.append(bundle)
            continue
        for k, v in bundle.items():
            node[k] -= v
    return left


def shortfall(bundles: list[Resources], available: Resources) -> Resources:
    """By resource: how much more than ``available`` the bundles ask for in all."""
    demand = total(bundles)
    return {k: v - available.get(k, 0.0) for k, v in demand.items() if v > available.get(k, 0.0) + 1e-9}


def total(bundles: list[Resources]) -> Resources:
    summed: Resources = {}
    for bundle in bundles:
        for k, v in bundle.items():
            summed[k] = summed.get(k, 0.0) + v
    return summed


def describe(resources: Resources) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in resources.items()) or "nothing"


def capacity_error(what: str, bundles: list[Resources], nodes: list[Resources],
                   available: Resources | None = None) -> str:
    """Why ``bundles`` cannot be placed on ``nodes`` (with ``available`` free now; None: all of
    it): what is missing in all, which bundle fits no node even empty."""
    available = total(nodes) if available is None else available
    missing = shortfall(bundles, available)
    too_big = [b for b in bundles if unplaceable([b], nodes)]
    reasons = [f"missing {describe(missing)}" if missing else "",
               f"no node can hold a bundle of {describe(too_big[0])}" if too_big else ""]
    return (f"the cluster cannot place {what}: {len(bundles)} bundles asking for {describe(total(bundles))} "
            f"in all; {'; '.join(r for r in reasons if r) or 'they do not pack onto the nodes'}. "
            f"Free now: {describe(_relevant(available, bundles))}; the cluster has "
            f"{describe(_relevant(total(nodes), bundles))} on {len(nodes)} nodes")


def _relevant(resources: Resources, bundles: list[Resources]) -> Resources:
    keys = {k for bundle in bundles for k in bundle}
    return {k: resources.get(k, 0.0) for k in sorted(keys)}


# ----------------------------------------------------------------------------- weight sync
SYNC_METHODS = ("auto", "object_store", "broadcast", "cuda_ipc")


def same_gpu(a: dict, b: dict) -> bool:
    """Whether two actors (their ``placement()``) hold the same GPU: one node, a shared Ray GPU id."""
    gpus_a, gpus_b = set(a["accelerator_ids"].get("GPU", [])), set(b["accelerator_ids"].get("GPU", []))
    return a["node_id"] == b["node_id"] and bool(gpus_a & gpus_b)


def choose_sync_method(requested: str, policy: dict, worker: dict, adapter_only: bool = False) -> str:
    """How weights go from policy rank 0 to one rollout worker, given both placements (device,
    node, Ray GPU ids): ``auto`` is CUDA IPC on the policy's own GPU (NCCL refuses two ranks on
    one device), an NCCL broadcast between GPUs, and the object store where either end is on a
    CPU (gloo and NCCL cannot meet). A LoRA policy (``adapter_only``) sends its adapter alone,
    a few MB, through the object store. A forced method that cannot work is refused, naming the fix."""
    if requested not in SYNC_METHODS:
        raise ValueError(f"ppo.sync.method must be one of {SYNC_METHODS}, not {requested!r}")
    if adapter_only:
        if requested not in ("auto", "object_store"):
            raise ValueError(f"ppo.sync.method={requested}: a LoRA policy (ppo.policy.lora) sends its adapter "
                             "through the object store; use auto or object_store")
        return "object_store"
    on_gpu = policy["device"].startswith("cuda"), worker["device"].startswith("cuda")
    shared = all(on_gpu) and same_gpu(policy, worker)
    if requested == "auto":
        return ("cuda_ipc" if shared else "broadcast") if all(on_gpu) else "object_store"
    if requested == "broadcast" and shared:
        raise ValueError("ppo.sync.method=broadcast: the policy and a rollout worker share one GPU, which NCCL "
                         "refuses; use auto (CUDA IPC) or object_store")
    if requested == "broadcast" and any(on_gpu) != all(on_gpu):
        raise ValueError(f"ppo.sync.method=broadcast: the policy is on {policy['device']} and a rollout worker on "
                         f"{worker['device']}, so a gloo group would meet an NCCL one (NCCL vs gloo). Give the "
                         "rollout workers GPUs (ppo.rollout.gpus=1, or cluster=one_gpu to share one) or use auto")
    if requested == "cuda_ipc" and not shared:
        raise ValueError("ppo.sync.method=cuda_ipc needs every rollout worker on the policy's GPU; use auto")
    return requested


def sync_methods(requested: str, policy: dict, workers: list[dict], adapter_only: bool = False) -> list[str]:
    """The weight-sync method of each rollout worker (``choose_sync_method``)."""
    return [choose_sync_method(requested, policy, worker, adapter_only) for worker in workers]


def model_actor_count(policy_ranks: int, critic_ranks: int, lora_policy: bool) -> int:
    """The PPO model actors a plan places: the policy's and critic's ranks, the reward actor
    and a reference actor, except for a LoRA policy, which is its own reference (its adapter
    disabled)."""
    return policy_ranks + critic_ranks + 1 + (0 if lora_policy else 1)
