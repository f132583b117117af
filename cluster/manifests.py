"""What the shipped cluster manifests provide: the nodes (their Ray resources), the command
they run, and the install recipe of their image, read from the files themselves so a test
can plan every preset against them (tests/test_layout.py).

- ``ray-cluster.yaml`` (Ray cluster launcher): every node type's ``resources``, times its
  ``max_workers`` (the head once); the install recipe is its ``setup_commands``; it runs
  whatever is submitted to it.
- ``rayjob.yaml`` (KubeRay): each pod's CPUs and ``nvidia.com/gpu`` from its container
  limits unless ``rayStartParams`` sets ``num-cpus`` / ``num-gpus``, times ``replicas``;
  the install recipe is ``cluster/Dockerfile``, which builds its image.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

CLUSTER_DIR = Path(__file__).resolve().parent
MANIFESTS = ("ray-cluster.yaml", "rayjob.yaml")


@dataclass(frozen=True)
class Manifest:
    name: str
    nodes: list[dict[str, float]]  # Ray resources of every node, head first
    overrides: list[str]  # the Hydra overrides of the workflow it runs itself ([]: what is submitted)
    install: str  # the commands that install alignray where it runs


def load_manifest(name: str, cluster_dir: Path = CLUSTER_DIR) -> Manifest:
    spec = yaml.safe_load((cluster_dir / name).read_text())
    if spec.get("kind") == "RayJob":
        return _rayjob(name, spec, (cluster_dir / "Dockerfile").read_text())
    return _launcher(name, spec)


def _launcher(name: str, spec: dict) -> Manifest:
    nodes = []
    for type_name, node_type in spec["available_node_types"].items():
        count = 1 if type_name == spec["head_node_type"] else int(node_type["max_workers"])
        nodes += [{k: float(v) for k, v in node_type["resources"].items()} for _ in range(count)]
    return Manifest(name, nodes, [], "\n".join(spec["setup_commands"]))


def _rayjob(name: str, spec: dict, dockerfile: str) -> Manifest:
    cluster = spec["spec"]["rayClusterSpec"]
    nodes = [_pod_resources(cluster["headGroupSpec"])]
    for group in cluster["workerGroupSpecs"]:
        nodes += [_pod_resources(group) for _ in range(int(group["replicas"]))]
    command = shlex.split(spec["spec"]["entrypoint"])
    overrides = [arg for arg in command if "=" in arg and not arg.startswith("-")]
    return Manifest(name, nodes, overrides, dockerfile)


def _pod_resources(group: dict) -> dict[str, float]:
    params = group.get("rayStartParams") or {}
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    return {"CPU": _quantity(params.get("num-cpus", limits.get("cpu", 0))),
            "GPU": _quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}


def _quantity(value) -> float:
    """A Kubernetes quantity of CPUs or GPUs: "8", "500m", 2."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
