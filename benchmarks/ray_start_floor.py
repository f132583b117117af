"""What any design that hosts each model in its own Ray actor pays before its first update.

    .venv/bin/python benchmarks/ray_start_floor.py --model DIR [--actors 6] [--out floor.json]

One process does only this, and times each part: import Ray, torch and transformers; start a
local Ray instance as alignray does (loopback, with its dashboard); start ``--actors``
actors, each its own process, that import torch and transformers and load the causal LM in
``DIR``; shut Ray down. No alignray code runs in it, so set beside alignray's own start
(``startup_s`` in a PPO run's summary) and its process wall time it shows how much of a
short job is the floor of this architecture on this machine and how much is alignray's.
`benchmarks/ppo_cpu.py` runs it with alignray's actor count (policy, critic, reference,
reward model, two rollout workers).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

STARTED = time.monotonic()
import ray  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

IMPORTED = time.monotonic()


@ray.remote(num_cpus=0)
class ModelHost:
    """A process that holds one model, as every PPO role does; nothing else."""

    def __init__(self, model_dir: str):
        started = time.monotonic()
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.load_s = time.monotonic() - started

    def load_seconds(self) -> float:
        return self.load_s


def measure(model_dir: str, actors: int) -> dict[str, float]:
    """Seconds of each part, from this process's start."""
    parts = {"driver_imports": IMPORTED - STARTED}
    started = time.monotonic()
    ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    parts["ray_init"] = time.monotonic() - started
    started = time.monotonic()
    hosts = [ModelHost.remote(model_dir) for _ in range(actors)]
    loads = ray.get([host.load_seconds.remote() for host in hosts])
    parts["actors_ready"] = time.monotonic() - started
    parts["slowest_model_load"] = max(loads)
    started = time.monotonic()
    ray.shutdown()
    parts["shutdown"] = time.monotonic() - started
    parts["total"] = time.monotonic() - STARTED
    return {name: round(seconds, 3) for name, seconds in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a Hugging Face causal LM folder")
    parser.add_argument("--actors", type=int, default=6)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    parts = measure(args.model, args.actors) | {"actors": args.actors}
    print(json.dumps(parts))
    if args.out:
        args.out.write_text(json.dumps(parts, indent=2))


if __name__ == "__main__":
    main()
