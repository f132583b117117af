"""Run by tests/test_two_nodes.py in a subprocess of its own (the test session's driver is
attached to another Ray): two Ray nodes on 127.0.0.1 (``ray.cluster_utils.Cluster``), the
head offering ``model_node`` and the second node ``rollout_node``; PPO at experiment=tiny
sizes asks for them (``cluster.model_resources`` / ``cluster.rollout_resources``), so the
weights cross nodes at every sync. Three steps (object store, broadcast, auto), then every
actor, node and process is stopped by its handle. Writes the placements and metrics as JSON.

    python tests/two_node_ppo.py MODEL_DIR PROMPTS_PARQUET OUT_DIR
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def compose_tiny(prompts: str):
    from alignray.workflows.common import compose_app_config
    overrides = ["experiment=tiny", "data.source=files", f"data.prompts_path={prompts}",
                 "ppo.reward.kind=target_word", "ppo.reward.target_word=the",
                 "+cluster.model_resources.model_node=1", "+cluster.rollout_resources.rollout_node=1"]
    return compose_app_config(overrides)


def run(model: str, prompts: str, out: Path) -> dict:
    import ray

    from alignray.workflows.ppo import PPOCoordinator
    cfg = compose_tiny(prompts)
    coordinator = PPOCoordinator(cfg.ppo, cfg.cluster, cfg.data, 0, model, None, out, cfg.eval.num_prompts)
    try:
        actors = coordinator.actors
        named = actors.model_actors() | {f"rollout{i}": w for i, w in enumerate(actors.pool.actors)}
        placements = dict(zip(named, ray.get([a.placement.remote() for a in named.values()])))
        coordinator.weights.sync(version=0)
        metrics = []
        for step, mode in enumerate(("object_store", "broadcast", "auto")):
            coordinator.ppo.sync.method = mode
            metrics.append(coordinator.step(step) | {"weight_sync": mode})
        return {"placements": placements, "metrics": metrics,
                "nodes": {node["NodeID"]: node["Resources"] for node in ray.nodes() if node["Alive"]}}
    finally:
        coordinator.actors.shutdown()


def main(model: str, prompts: str, out: str) -> None:
    import ray
    from ray.cluster_utils import Cluster
    temp_dir = tempfile.mkdtemp(prefix="ar2n-", dir="/tmp")  # short: Ray's Unix sockets live there
    common = {"object_store_memory": 150 * 1024 * 1024, "temp_dir": temp_dir}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4, "resources": {"model_node": 4}, "include_dashboard": False, **common})
    try:
        cluster.add_node(num_cpus=2, resources={"rollout_node": 2}, **common)
        ray.init(address=cluster.address, runtime_env={"env_vars": {
            "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}})
        result = run(model, prompts, Path(out))
        (Path(out) / "two_nodes.json").write_text(json.dumps(result, indent=2, default=str))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
