"""PPO across two Ray nodes on this machine: custom resources put the model actors on one
node and the rollout workers on the other (``cluster.model_resources`` /
``cluster.rollout_resources``), three steps run with the weights crossing nodes at every
sync (object store, broadcast, auto), the probe check holds, and nothing is left running.
The cluster runs in a subprocess (tests/two_node_ppo.py): this session's driver is already
attached to its own Ray."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from alignray.cluster.local_cluster import MARKER_VAR, kill_marked_leftovers

REPO = Path(__file__).resolve().parent.parent


def test_ppo_runs_with_policy_and_rollout_workers_on_different_nodes(tiny_base_model, prompts_path, tmp_path):
    marker = f"two-nodes-{uuid.uuid4().hex}"  # inherited by every process of that cluster
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    token = tmp_path / "auth_token"
    token.write_text(uuid.uuid4().hex * 2)
    env |= {MARKER_VAR: marker, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}  # never the user's token
    started = time.monotonic()
    try:
        run = subprocess.run([sys.executable, str(REPO / "tests" / "two_node_ppo.py"), str(tiny_base_model),
                              str(prompts_path), str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
    finally:
        leftovers = kill_marked_leftovers(marker, grace_s=30)
    print(f"two-node PPO: {time.monotonic() - started:.0f} s")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert leftovers == [], f"processes of the two-node cluster outlived it: {leftovers}"

    result = json.loads((tmp_path / "two_nodes.json").read_text())
    nodes = {node_id: resources for node_id, resources in result["nodes"].items()}
    assert len(nodes) == 2
    placements = result["placements"]
    model_nodes = {p["node_id"] for name, p in placements.items() if not name.startswith("rollout")}
    rollout_nodes = {p["node_id"] for name, p in placements.items() if name.startswith("rollout")}
    assert len(model_nodes) == len(rollout_nodes) == 1 and model_nodes != rollout_nodes
    assert "model_node" in nodes[model_nodes.pop()] and "rollout_node" in nodes[rollout_nodes.pop()]
    assert [m["weight_sync"] for m in result["metrics"]] == ["object_store", "broadcast", "auto"]
    for metrics in result["metrics"]:
        assert metrics["probe_max_abs_diff"] <= 1e-5 and metrics["sync/bytes_per_worker"] > 0
        assert metrics["policy_updates"] > 0

