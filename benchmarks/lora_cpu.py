"""What LoRA saves, measured: trainable parameters, peak memory, the time of a training step
and the bytes a weight sync sends each rollout worker, with and without LoRA, at the embedded
default's shape and at SmolLM2-135M's.

    .venv/bin/python benchmarks/lora_cpu.py        # ~5 minutes on 2 cores; writes results/lora_cpu.json
    python3 benchmarks/lora_cpu.py --device cuda --shapes smollm2 --out benchmarks/results/lora_gpu.json

Both shapes have random weights (speed and memory do not depend on the values): the embedded
default's GPT-2 (4 layers, width 256, 4 heads, vocab 4,096) and SmolLM2-135M's Llama (30 layers,
width 576, 9 heads, 3 KV heads, MLP 1,536, vocab 49,152, tied embeddings), built from their
configs. LoRA is ``alignray.models.lora.with_lora`` (peft) at rank 8, alpha 16, on every linear
layer (``all-linear``), as ``experiment=lora`` sets it.

A step is what the SFT and PPO policy updates do: a causal-LM loss on ``--batch`` rows of
``--tokens`` tokens, backward, and AdamW over the trainable parameters (fp32 on CPU, as the
training strategy runs there; bf16 weights on a GPU). The time is the median of ``--steps``
steps after one warm-up, on ``--threads`` torch threads (1 by default). Each case runs in a fresh child process, so its peak memory is its
own: the process's peak resident memory (``ru_maxrss``), also less what it held after its
imports, before the model was built; on a GPU also torch's peak allocated GPU memory. Sync
bytes: one full copy of the weights (tied ones once), as ``WeightSender.sync_payload`` counts
them, against the adapter a LoRA policy sends.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's alignray, run from anywhere
LORA = {"rank": 8, "alpha": 16.0, "target_modules": "all-linear"}
SHAPES = {
    "tiny": "embedded default: GPT-2, 4 layers, width 256, 4 heads, vocab 4096",
    "smollm2": "SmolLM2-135M: Llama, 30 layers, width 576, 9 heads / 3 KV heads, MLP 1536, vocab 49152",
}


def build(shape: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    if shape == "tiny":
        return GPT2LMHeadModel(GPT2Config(vocab_size=4096, n_layer=4, n_head=4, n_embd=256, n_positions=64,
                                          activation_function="gelu_pytorch_tanh"))
    return LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                        tie_word_embeddings=True))


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_case(shape: str, lora: bool, device: str, batch: int, tokens: int, steps: int, threads: int) -> dict:
    """One case, in this (fresh) process."""
    import torch
    if threads:
        torch.set_num_threads(threads)

    from alignray.actors.weight_sync import named_weights
    from alignray.config.lora import LoRAConfig
    from alignray.models.lora import adapter_bytes, trainable_parameters, with_lora

    after_imports = max_rss_mb()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build(shape).to(device, dtype)
    full_bytes = sum(t.numel() * t.element_size() for _, t in named_weights(model))
    if lora:
        model = with_lora(model, LoRAConfig(**LORA))
    trainable, total = trainable_parameters(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  fused=device == "cuda")
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), device=device)
    model.train()
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    result = {"shape": shape, "lora": lora, "device": device, "trainable_params": trainable, "params": total,
              "step_s": statistics.median(times[1:]), "peak_rss_mb": round(max_rss_mb(), 1),
              "peak_rss_over_imports_mb": round(max_rss_mb() - after_imports, 1),
              "sync_bytes_per_worker": adapter_bytes(model) if lora else full_bytes}
    if device == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def table(cases: list[dict]) -> str:
    gpu = any("peak_gpu_mb" in c for c in cases)
    head = ["shape", "LoRA", "trainable params", "params", "trainable %", "peak RSS MB", "over imports MB",
            *(["peak GPU MB"] if gpu else []), "step s", "sync bytes/worker"]
    rows = [head] + [[c["shape"], "rank 8" if c["lora"] else "no", f"{c['trainable_params']:,}", f"{c['params']:,}",
                      f"{100 * c['trainable_params'] / c['params']:.2f}", f"{c['peak_rss_mb']:.0f}",
                      f"{c['peak_rss_over_imports_mb']:.0f}", *([f"{c['peak_gpu_mb']:.0f}"] if gpu else []),
                      f"{c['step_s']:.3f}", f"{c['sync_bytes_per_worker']:,}"] for c in cases]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(str(v).rjust(w) for v, w in zip(r, widths)) for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    # one thread by default: on a shared 2-core machine two threads against other work spin and
    # make a step several times slower, at random; 0: torch's default
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lora_cpu.json")
    parser.add_argument("--case", nargs=2, metavar=("SHAPE", "LORA"), help=argparse.SUPPRESS)  # a child's case
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], args.case[1] == "lora", args.device, args.batch, args.tokens,
                                  args.steps, args.threads)))
        return

    from alignray.core.machine import describe_machine, machine_info
    load_before, cases = os.getloadavg(), []
    for shape in args.shapes:
        for mode in ("full", "lora"):
            child = subprocess.run([sys.executable, __file__, "--case", shape, mode, "--device", args.device,
                                    "--batch", str(args.batch), "--tokens", str(args.tokens),
                                    "--steps", str(args.steps), "--threads", str(args.threads)],
                                   capture_output=True, text=True, check=True)
            cases.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(f"{shape} {mode}: {cases[-1]['step_s']:.3f} s a step", flush=True)
    result = {"machine": machine_info(), "lora": LORA, "shapes": {s: SHAPES[s] for s in args.shapes},
              "settings": {"batch": args.batch, "tokens": args.tokens, "steps": args.steps, "device": args.device,
                           "threads": args.threads,
                           "step": "causal-LM loss, backward, AdamW over the trainable parameters"},
              # other work on a shared machine slows the steps: the 1-minute load before and after
              "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
              "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"machine: {describe_machine(result['machine'])}")
    print(table(cases))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
