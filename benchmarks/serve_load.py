"""Load on the reward endpoint from many concurrent clients, with and without batching.

    python benchmarks/serve_load.py                      # tiny embedded RM, 8 and 32 clients
    python benchmarks/serve_load.py --backbone wide      # 19M parameters instead of 0.14M
    python benchmarks/serve_load.py --model-path PATH --clients 64 --requests-per-client 50

Starts a private Ray instance and the Serve app on 127.0.0.1 only, runs each mode for a
bounded number of requests (and at most --max-seconds), prints a table and writes JSON.
Each client sends one (prompt, response) per request, as a PPO reward actor scoring
rollouts one by one would. Modes: `batching` (max_batch_size 32) and `no batching`
(max_batch_size 1: every request is its own forward pass).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

MODES = {"batching": {"max_batch_size": 32, "batch_wait_timeout_s": 0.01},
         "no batching": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}}
PROMPTS = ["I love the new", "Flying with this airline", "Self-driving cars are", "My favourite band just"]
RESPONSES = ["phone, it is great and fast", "was a nightmare again today", "the future, or so they say",
             "released a new album and it rocks"]


# Backbones for the default reward model: the embedded tiny base model as trained, or its
# architecture widened (random weights) so that the forward pass costs what a small real
# reward model's does; scores are meaningless either way, timings are not.
BACKBONES = {"tiny": None, "wide": {"n_layer": 6, "n_embd": 512, "n_head": 8}}


def benchmark_reward_model(out_dir: Path, backbone: str) -> Path:
    """A reward model (fresh scalar head) on the chosen backbone, built through
    alignray.reward.model like any other."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from alignray.pretrain.embedded import TINY_TEST_RECIPE, build_base_model
    from alignray.models.modeling import load_tokenizer, save_pretrained
    from alignray.reward.model import init_reward_model, save_reward_model
    torch.manual_seed(0)
    base = build_base_model(TINY_TEST_RECIPE, cache_dir=Path(".alignray-cache") / "tests", seed=0)
    if BACKBONES[backbone]:
        config = AutoConfig.from_pretrained(base)
        config.update(BACKBONES[backbone])
        base = save_pretrained(AutoModelForCausalLM.from_config(config), load_tokenizer(base), out_dir / "backbone")
    model, tokenizer = init_reward_model(base)
    return save_reward_model(model, tokenizer, out_dir / f"{backbone}-rm", 0.0, 1.0)


def run_clients(url: str, clients: int, requests_per_client: int, max_seconds: float) -> dict:
    """Every client sends its requests back to back; returns latencies and throughput."""
    latencies: list[float] = []
    batch_requests: list[int] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def client(index: int) -> None:
        nonlocal errors
        session = requests.Session()
        for n in range(requests_per_client):
            if time.monotonic() > deadline:
                return
            k = (index + n) % len(PROMPTS)
            start = time.perf_counter()
            try:
                reply = session.post(url, json={"prompts": [PROMPTS[k]], "responses": [RESPONSES[k]]}, timeout=30)
                ok = reply.status_code == 200
            except requests.RequestException:
                ok = False
            elapsed = time.perf_counter() - start
            with lock:
                if ok:
                    latencies.append(elapsed)
                    batch_requests.append(reply.json()["batch_requests"])
                else:
                    errors += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def percentile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

    return {"requests": len(latencies), "errors": errors, "wall_s": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(percentile(0.50), 1), "p99_ms": round(percentile(0.99), 1),
            "mean_batch_requests": round(statistics.fmean(batch_requests), 2) if batch_requests else 0.0,
            "max_batch_requests": max(batch_requests, default=0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", help="a saved reward model (default: one built on --backbone)")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="tiny")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32], help="one run per count")
    parser.add_argument("--requests-per-client", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per mode")
    parser.add_argument("--out", help="default: benchmarks/results/serve_load_<backbone or custom>.json")
    args = parser.parse_args()

    from ray import serve

    from alignray.actors.runtime import connect
    from alignray.config import ClusterConfig, ServeConfig
    from alignray.actors.reward_server import build_reward_app

    with tempfile.TemporaryDirectory() as scratch:
        model_path = args.model_path or str(benchmark_reward_model(Path(scratch), args.backbone))
        model_label = args.model_path or f"{args.backbone} embedded-architecture reward model (fresh head)"
        owned = connect(ClusterConfig(num_cpus=4))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}/v1/score"
        results = []
        try:
            for mode, batching in MODES.items():
                cfg = ServeConfig(model_path=model_path, port=port, token_env=None,
                                  max_ongoing_requests=max(64, *args.clients), **batching)
                serve.run(build_reward_app(cfg), name="serve-load", route_prefix="/")
                run_clients(url, clients=4, requests_per_client=5, max_seconds=10)  # warm-up
                for clients in args.clients:
                    measured = run_clients(url, clients, args.requests_per_client, args.max_seconds)
                    results.append({"mode": mode, "clients": clients, **measured})
                serve.delete("serve-load")
        finally:
            serve.shutdown()
            if owned:
                import ray
                ray.shutdown()

    # The host's load decides these numbers as much as the server does: record it.
    from alignray.core.machine import machine_info
    machine = machine_info() | {"load_average_1m": round(os.getloadavg()[0], 1)}
    print(f"one item per request, {args.requests_per_client} requests per client, {model_label}, {machine}")
    print(f"{'mode':<12} {'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'mean batch':>10} {'max batch':>9}")
    for r in results:
        print(f"{r['mode']:<12} {r['clients']:>7} {r['requests']:>8} {r['errors']:>6} {r['requests_per_s']:>7} "
              f"{r['p50_ms']:>8} {r['p99_ms']:>8} {r['mean_batch_requests']:>10} {r['max_batch_requests']:>9}")
    out = Path(args.out or f"benchmarks/results/serve_load_{'custom' if args.model_path else args.backbone}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "requests_per_client": args.requests_per_client,
                               "model": model_label, "modes": MODES, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
