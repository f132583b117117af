"""alignray's rollout, training and PPO step on one GPU at the SmolLM2-135M shape.

    python benchmarks/ppo_gpu.py                # one GPU; about 4 minutes
    python benchmarks/ppo_gpu.py --cpu-smoke    # a tiny shape on CPU: checks the path (~2 min)

On a GPU machine of this project (no network, no Ray/Hydra/DeepSpeed), bring the device
kit (shared/devkit/README.md) and run from the repository root:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devkit/*.whl
    PYTHONPATH=/tmp/site:. python3 benchmarks/ppo_gpu.py

The model is the SmolLM2-135M shape with random weights (speed does not depend on the
values) and a small byte-level BPE tokenizer trained here on generated text (ids it does
not know decode to nothing; the reward model does not care). Three parts, in one process:

1. generation: tokens/s of the rollout worker's path (alignray.models.static_decoder, CUDA
   graphs) against plain ``model.generate`` (dynamic cache) and the static path without
   graphs, at batch 64 and 256, 64-token prompts, exactly 128 new tokens, bf16. Goal:
   >= 10x plain generate at batch 256.
2. training: the policy actor's own update (actors/policy.py: DeepSpeed engine, clipped
   surrogate) on a 64 x (64 + 128)-token batch, ZeRO-0 and ZeRO-2: tokens/s and model-FLOPs
   utilisation as the actor reports them (6 x params x tokens over the dense bf16 peak).
   Goal: >= 30%.
3. PPO: ``run_ppo`` for a few steps with every role on this one GPU (cluster=one_gpu):
   the stage breakdown of a step and the weight-sync bandwidth, from its metrics.

Prints a table; writes benchmarks/results/ppo_gpu.json (runs/ppo_gpu_cpu_smoke.json with --cpu-smoke).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from alignray.core.machine import describe_machine, machine_info

REPO = Path(__file__).resolve().parent.parent
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                     max_position_embeddings=2048)
TINY_SHAPE = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                  max_position_embeddings=256)
WORDS = ("the cat dog sat ran on a mat when it rained all day long and night we saw birds fly "
         "over hills near old town under blue sky happy sad good bad very much so").split()


def synthetic_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20))) for _ in range(count)]


def build_model(out: Path, shape: dict) -> Path:
    """A Llama of ``shape`` with random weights and a tokenizer, saved as an HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignray.pretrain.embedded import train_tokenizer
    from alignray.models.modeling import save_pretrained
    torch.manual_seed(0)
    tokenizer = train_tokenizer(synthetic_texts(2000), vocab_size=4096)
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return Path(save_pretrained(LlamaForCausalLM(config), tokenizer, out / "policy"))


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call (graph capture, allocator, kernels)."""
    fn()
    seconds = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def bench_generation(model, batches: list[int], prompt_len: int, new_tokens: int, repeats: int) -> list[dict]:
    from alignray.models.generation import sample_responses
    from alignray.models.static_decoder import StaticDecoder
    device, rows = next(model.parameters()).device, []
    graphs = StaticDecoder(model, prompt_len + new_tokens)  # CUDA graphs where CUDA is
    eager = StaticDecoder(model, prompt_len + new_tokens, use_cuda_graph=False)
    for batch in batches:
        ids = torch.randint(10, model.config.vocab_size, (batch, prompt_len), device=device)
        mask = torch.ones_like(ids)

        def plain():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, pad_token_id=0)

        def ours(decoder):
            return lambda: sample_responses(decoder, ids, mask, max_new_tokens=new_tokens, end_token_ids=None,
                                            pad_token_id=0)

        paths = {"plain generate": plain, "alignray static, eager": ours(eager)}
        if graphs.use_cuda_graph:
            paths["alignray static + CUDA graphs"] = ours(graphs)
        for name, fn in paths.items():
            seconds = timed(fn, repeats)
            rows.append({"batch": batch, "path": name, "seconds": seconds,
                         "tokens_per_s": batch * new_tokens / seconds})
    return rows


def bench_training(model_path: Path, batch: int, prompt_len: int, new_tokens: int, zero_stage: int) -> dict:
    """The policy actor's update, in this process (a DeepSpeed world of one)."""
    from alignray.actors.policy import PolicyActor
    from alignray.models import deepspeed_strategy as ds
    from alignray.config.ppo import PPOConfig, RolloutConfig
    from alignray.config.training import DeepSpeedConfig
    from alignray.ppo.experience import Experience
    ppo = PPOConfig(prompts_per_step=batch, epochs=2, minibatches=1, rollout=RolloutConfig(max_new_tokens=new_tokens),
                    deepspeed=DeepSpeedConfig(zero_stage=zero_stage))
    policy = PolicyActor(str(model_path), ppo.policy, ppo.update_settings(), ppo.policy_objective())
    policy.setup("127.0.0.1", ds.free_port("127.0.0.1"))
    vocab = policy.model.config.vocab_size
    rows, zeros = torch.arange(batch), torch.zeros(batch, new_tokens)
    exp = Experience(prompt_index=rows, prompt_ids=torch.randint(10, vocab, (batch, prompt_len)),
                     prompt_mask=torch.ones(batch, prompt_len, dtype=torch.long),
                     response_ids=torch.randint(10, vocab, (batch, new_tokens)),
                     response_mask=torch.ones(batch, new_tokens, dtype=torch.bool),
                     logprobs=torch.full((batch, new_tokens), -5.0), ended_with_eos=torch.ones(batch, dtype=torch.bool),
                     ref_logprobs=zeros, old_logprobs=torch.full((batch, new_tokens), -5.0),
                     correction_weights=torch.ones(batch, new_tokens), values=zeros, scores=torch.zeros(batch), rewards=zeros,
                     advantages=torch.randn(batch, new_tokens), returns=zeros)  # the update reads the advantages
    policy.train(exp, 0)  # warm-up
    stats = policy.train(exp, 1)
    return {"batch": batch, "tokens_per_update": batch * (prompt_len + new_tokens), "zero_stage": zero_stage,
            "dtype": str(next(policy.engine.module.parameters()).dtype),
            "train_tokens_per_s": stats.train_tokens_per_s, "mfu": stats.mfu}


def bench_ppo(work: Path, model_path: Path, cpu_smoke: bool, steps: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from alignray.core.metrics import read_metrics
    from alignray.reward.model import init_reward_model, save_reward_model
    from alignray.workflows.common import compose_app_config
    from alignray.workflows.ppo import run_ppo
    prompts = work / "prompts.parquet"
    texts = synthetic_texts(1024, seed=1)
    pq.write_table(pa.table({"prompt_id": [f"p{i}" for i in range(len(texts))], "prompt": texts}), prompts)
    reward, tokenizer = init_reward_model(model_path)
    save_reward_model(reward, tokenizer, work / "reward", mean=0.0, std=1.0)
    batch, new_tokens = (16, 16) if cpu_smoke else (128, 128)
    overrides = [f"workdir={work}/runs", "cluster=local" if cpu_smoke else "cluster=one_gpu", "data.source=files",
                 f"data.prompts_path={prompts}", "data.max_prompt_tokens=64", f"ppo.steps={steps}",
                 f"ppo.prompts_per_step={batch}", f"ppo.rollout.max_new_tokens={new_tokens}",
                 "ppo.rollout.stop_at_eos=false",
                 "ppo.minibatches=2", "ppo.epochs=1", "ppo.checkpoint_every=0", "ppo.resume=false",
                 "ppo.sync.method=broadcast", "ppo.reward.constraints=none"]
    cfg = compose_app_config(overrides)
    out = run_ppo(cfg, str(model_path), str(work / "reward"))
    records = read_metrics(out / "metrics.jsonl")[1:]  # the first step pays for start-up
    mean = lambda key: statistics.fmean(r[key] for r in records)  # noqa: E731
    stages = sorted({k for r in records for k in r if k.startswith("time/")})
    return {"steps_measured": len(records), "prompts_per_step": batch, "new_tokens": new_tokens,
            "step_s": mean("step_s"), "stage_seconds": {k[5:]: mean(k) for k in stages},
            "sync_gb_per_s": mean("sync/gb_per_s"), "sync_bytes_per_worker": records[-1]["sync/bytes_per_worker"],
            "policy_mfu": mean("mfu") if "mfu" in records[-1] else None,
            "generation_tokens_per_s": batch * new_tokens / mean("time/generation")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shape on CPU, to check the path")
    parser.add_argument("--ppo-steps", type=int, default=4)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: generation,training,ppo")
    args = parser.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        raise SystemExit("no GPU here: run with --cpu-smoke to check the path on CPU")
    skip = set(filter(None, args.skip.split(",")))
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    dtype = torch.float32 if args.cpu_smoke else torch.bfloat16
    work = Path(tempfile.mkdtemp(prefix="alignray-ppo-gpu-"))
    model_path = build_model(work, TINY_SHAPE if args.cpu_smoke else SMOLLM2_SHAPE)
    result = {"device": torch.cuda.get_device_name(0) if not args.cpu_smoke else "cpu",
              "shape": "tiny" if args.cpu_smoke else "SmolLM2-135M", "machine": machine_info()}
    started = time.monotonic()
    if "generation" not in skip:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
        batches = [4, 8] if args.cpu_smoke else [64, 256]
        result["generation"] = bench_generation(model, batches, 64, 16 if args.cpu_smoke else 128,
                                                repeats=2 if args.cpu_smoke else 3)
        del model
    if "training" not in skip:
        result["training"] = [bench_training(model_path, 8 if args.cpu_smoke else 64, 64, 16 if args.cpu_smoke else 128,
                                             stage) for stage in (0, 2)]
    if "ppo" not in skip:
        result["ppo"] = bench_ppo(work, model_path, args.cpu_smoke, args.ppo_steps)
    result["wall_s"] = time.monotonic() - started
    print_table(result)
    # a smoke run's numbers say nothing about a GPU: they go to the ignored runs/ folder
    out = REPO / ("runs/ppo_gpu_cpu_smoke.json" if args.cpu_smoke else "benchmarks/results/ppo_gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def print_table(result: dict) -> None:
    rows = [("machine", describe_machine(result["machine"])), ("shape", result["shape"])]
    generation = result.get("generation", [])
    for row in generation:
        plain = next(r for r in generation if r["batch"] == row["batch"] and r["path"] == "plain generate")
        rows.append((f"generate b={row['batch']}: {row['path']}",
                     f"{row['tokens_per_s']:,.0f} tok/s ({row['tokens_per_s'] / plain['tokens_per_s']:.1f}x plain)"))
    for t in result.get("training", []):
        mfu = f"{t['mfu']:.1%}" if t["mfu"] is not None else "n/a (peak unknown)"
        rows.append((f"policy update b={t['batch']} (ZeRO-{t['zero_stage']})",
                     f"{t['train_tokens_per_s']:,.0f} tok/s, MFU {mfu}"))
    if "ppo" in result:
        p = result["ppo"]
        rows.append(("PPO step (mean of steps 2..)", f"{p['step_s']:.2f} s"))
        rows += [(f"  stage {k}", f"{v:.3f} s") for k, v in p["stage_seconds"].items()]
        rows.append(("weight sync (broadcast)",
                     f"{p['sync_gb_per_s']:.2f} GB/s, {p['sync_bytes_per_worker'] / 1e6:.0f} MB per worker"))
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))


if __name__ == "__main__":
    main()
