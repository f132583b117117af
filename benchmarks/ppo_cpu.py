"""alignray's PPO against Hugging Face TRL's PPOTrainer on one CPU machine, same settings.

    bash benchmarks/trl_env.sh              # once: trl==1.12.0 in benchmarks/.venv-trl
    .venv/bin/python benchmarks/ppo_cpu.py  # ~5 minutes on 2 cores

Both run as child processes of this script, one after the other, on identical models
and prompts: a tiny GPT-2 (2 layers, width 128, 4 heads, vocab 4,096; random weights) as
policy, reference, reward model and value model; 32 rollouts per update of exactly 24 new
tokens; 4 PPO epochs x 2 minibatches; fp32; AdamW lr 3e-6; KL coefficient 0.05 fixed;
clip 0.2, value clip 0.2; gamma 1, lambda 0.95; 10 updates. Throughput is rollouts per
second of update wall time, the median over updates 2-10 (the first pays for warm-up).
alignray runs as a user would: ``python -m alignray.workflows.ppo`` with Hydra overrides, its
actors on a private local Ray instance; its update time is the ``step_s`` it logs.

Known differences, both small next to the compute: alignray's reward model reads text
(decoded responses, tokenised again: its one format for every consumer), TRL's reads
the token ids; alignray's critic starts with a zeroed value head, TRL's with a random one.

The arithmetic is counted (alignray/ppo/flops.py: 2 FLOP per weight per position forward,
6 training, the LM head only where logits are read; the same useful work for both systems)
and set against this machine's fp32 matmul peak, measured in the same run: one 2048 x 2048
GEMM on every core, the best of ~3 s, before and after the two runs. alignray's stages get
their own FLOP/s from the ``time/<stage>`` it logs, and its start-up is split into its parts
(the PPO summary's ``startup_s``). Beside them, the floor of the architecture on this machine:
`benchmarks/ray_start_floor.py` starts Ray and one process per alignray actor, each loading
the policy model, with no alignray code (what any design with a Ray actor per model pays).

Writes benchmarks/results/ppo_cpu.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
TRL_PYTHON = ROOT / "benchmarks" / ".venv-trl" / "bin" / "python"
ROLLOUTS, NEW_TOKENS, PROMPT_TOKENS = 32, 24, 32
SETTINGS = {"rollouts_per_update": ROLLOUTS, "new_tokens": NEW_TOKENS, "max_prompt_tokens": PROMPT_TOKENS,
            "ppo_epochs": 4, "minibatches": 2, "lr": 3e-6, "kl_coef": 0.05, "clip": 0.2, "value_clip": 0.2,
            "gamma": 1.0, "lam": 0.95, "precision": "fp32",
            "model": "GPT-2, 2 layers, width 128, 4 heads, vocab 4096, random weights"}


def make_models(work: Path, seed: int) -> Path:
    """policy/ (causal LM), reward/ and value/ (one scalar head, the same weights), each
    with the embedded tokenizer (byte-level BPE of 4,096 tokens)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from alignray.pretrain.embedded import train_tokenizer
    from alignray.data.tweets import load_tweets
    from alignray.reward.model import init_reward_model, save_reward_model

    models = work / "models"
    tokenizer = train_tokenizer([t.text for t in load_tweets()], 4096)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=128, n_head=4, n_positions=128,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(models / "policy")
    tokenizer.save_pretrained(models / "policy")
    reward, reward_tokenizer = init_reward_model(models / "policy")
    save_reward_model(reward, reward_tokenizer, models / "reward", mean=0.0, std=1.0)
    shutil.copytree(models / "reward", models / "value", dirs_exist_ok=True)
    return models


def make_prompts(work: Path, models: Path, count: int) -> tuple[Path, Path]:
    """The same prompts for both: a parquet of texts for alignray, and for TRL the token ids
    alignray's coordinator makes of them (its prompt format, cut to the last 32 tokens)."""
    from alignray.data.prompts import format_prompt
    from alignray.data.tweets import load_tweets
    from alignray.models.modeling import load_tokenizer

    texts = [" ".join(t.text.split()[:8]) for t in load_tweets()[:count]]
    parquet = work / "prompts.parquet"
    pq.write_table(pa.table({"prompt_id": [f"p{i}" for i in range(count)], "prompt": texts}), parquet)
    tokenizer = load_tokenizer(str(models / "policy"))
    tokenizer.truncation_side = "left"
    ids = [tokenizer(format_prompt(tokenizer, t), truncation=True, max_length=PROMPT_TOKENS)["input_ids"]
           for t in texts]
    token_file = work / "prompts.json"
    token_file.write_text(json.dumps(ids))
    return parquet, token_file


def fp32_matmul_peak(threads: int, size: int = 2048, seconds: float = 3.0) -> float:
    """FLOP/s of the best fp32 GEMM of ``size`` on ``threads`` threads within ``seconds``."""
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best, deadline = 0.0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - started))
    return best


def update_flops(models: Path, token_file: Path) -> dict[str, int]:
    """FLOP of one update's stages at the benchmark's settings; prompts padded to the mean
    of each batch's longest (both systems pad a batch to its longest prompt)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from alignray.ppo.flops import ModelShape, StepShape, step_flops
    lengths = [len(ids) for ids in json.loads(token_file.read_text())]
    batches = [lengths[i:i + ROLLOUTS] for i in range(0, len(lengths), ROLLOUTS)]
    prompt = round(statistics.mean(max(b) for b in batches))
    policy = ModelShape.of(AutoModelForCausalLM.from_pretrained(models / "policy"))
    scalar = ModelShape.of(AutoModelForSequenceClassification.from_pretrained(models / "reward"))
    return step_flops(StepShape(ROLLOUTS, prompt, NEW_TOKENS, SETTINGS["ppo_epochs"]), policy, scalar, scalar)


def alignray_stages(records: list[dict], flops: dict[str, int], peak: float) -> dict[str, dict]:
    """Each stage's median seconds over updates 2.., its FLOP and their share of the peak."""
    stages = {}
    for stage, count in flops.items():
        seconds = statistics.median(r[f"time/{stage}"] for r in records[1:])
        stages[stage] = {"seconds": seconds, "gflop": count / 1e9, "gflop_per_s": count / seconds / 1e9,
                         "share_of_peak": count / seconds / peak}
    return stages


def run_alignray(work: Path, models: Path, prompts: Path, updates: int) -> Path:
    """The PPO app as a user runs it; returns its run folder (metrics.jsonl, summary.json)."""
    out = work / "alignray"
    overrides = [
        f"workdir={out}", "data.source=files", f"data.prompts_path={prompts}",
        f"data.max_prompt_tokens={PROMPT_TOKENS}",
        f"ppo.sft_model_path={models / 'policy'}", f"ppo.reward_model_path={models / 'reward'}",
        "ppo.reward.kind=reward_model", "ppo.critic.init=reward_model", "ppo.reward.normalize=false",
        "ppo.reward.constraints=none", f"ppo.steps={updates}", f"ppo.prompts_per_step={ROLLOUTS}",
        f"ppo.rollout.max_new_tokens={NEW_TOKENS}", "ppo.rollout.stop_at_eos=false", "ppo.epochs=4",
        "ppo.minibatches=2", "ppo.policy.lr=3e-6", "ppo.critic.lr=3e-6", "ppo.kl.controller=fixed",
        "ppo.kl.coef=0.05", "ppo.policy.clip_eps=0.2", "ppo.critic.value_clip_eps=0.2", "ppo.gamma=1.0",
        "ppo.lam=0.95", "ppo.deepspeed.precision=fp32",
        "ppo.policy_lag=0",  # TRL generates and trains in turn; alignray's default overlaps them
        "ppo.checkpoint_every=0", "ppo.resume=false",
    ]
    subprocess.run([sys.executable, "-m", "alignray.workflows.ppo", *overrides], cwd=ROOT, check=True)
    return sorted(out.glob("ppo-*/summary.json"), key=lambda p: p.stat().st_mtime)[-1].parent


def run_trl(work: Path, models: Path, token_file: Path, updates: int, threads: int) -> dict:
    if not TRL_PYTHON.exists():
        raise SystemExit(f"{TRL_PYTHON} is missing: run `bash benchmarks/trl_env.sh` first")
    result = work / "trl.json"
    subprocess.run([str(TRL_PYTHON), str(ROOT / "benchmarks" / "trl_ppo.py"), "--models", str(models),
                    "--prompts", str(token_file), "--updates", str(updates), "--threads", str(threads),
                    "--out", str(result)], cwd=ROOT, check=True)
    return json.loads(result.read_text())


def ray_start_floor(models: Path, actors: int) -> dict[str, float]:
    """Seconds of each part of the floor (driver imports, ray.init, actors ready, shutdown, total)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ray_start_floor.py"), "--model",
                           str(models / "policy"), "--actors", str(actors)],
                          cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def throughput(update_seconds: list[float]) -> tuple[float, float]:
    """Median seconds of updates 2.. and the rollouts per second it gives."""
    median = statistics.median(update_seconds[1:])
    return median, ROLLOUTS / median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of TRL's process")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-ppo-cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ppo_cpu.json")
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    models = make_models(args.work, args.seed)
    parquet, token_file = make_prompts(args.work, models, ROLLOUTS * args.updates * 2)

    peak_before = fp32_matmul_peak(args.threads)
    started = time.monotonic()
    ours_run = run_alignray(args.work, models, parquet, args.updates)
    ours_wall = time.monotonic() - started
    started = time.monotonic()
    trl = run_trl(args.work, models, token_file, args.updates, args.threads)
    trl_wall = time.monotonic() - started
    ours_summary = json.loads((ours_run / "summary.json").read_text())
    floor = ray_start_floor(models, len(ours_summary["actors"]))
    peak = max(peak_before, fp32_matmul_peak(args.threads))
    flops = update_flops(models, token_file)
    per_update = sum(flops.values())
    print(f"\nfp32 matmul peak on {args.threads} threads: {peak / 1e9:.1f} GFLOP/s "
          f"(before {peak_before / 1e9:.1f}); one update is {per_update / 1e9:.1f} GFLOP")

    from alignray.core.metrics import read_metrics
    records = read_metrics(ours_run / "metrics.jsonl")
    rows = {"alignray": ([r["step_s"] for r in records], ours_wall), "trl": (trl["update_seconds"], trl_wall)}
    print(f"\n{'system':<10} {'median s/update':>16} {'rollouts/s':>11} {'GFLOP/s':>8} {'of peak':>8} "
          f"{'process wall s':>15}")
    summary = {}
    for name, (seconds, wall) in rows.items():
        median, rate = throughput(seconds)
        summary[name] = {"update_seconds": seconds, "median_update_s": median, "rollouts_per_s": rate,
                         "gflop_per_s": per_update / median / 1e9, "share_of_peak": per_update / median / peak,
                         "process_wall_s": wall}
        print(f"{name:<10} {median:>16.3f} {rate:>11.2f} {per_update / median / 1e9:>8.1f} "
              f"{per_update / median / peak:>8.1%} {wall:>15.1f}")
    stages = alignray_stages(records, flops, peak)
    print(f"\n{'alignray stage':<16} {'median s':>9} {'GFLOP':>7} {'GFLOP/s':>8} {'of peak':>8}")
    for stage, row in stages.items():
        print(f"{stage:<16} {row['seconds']:>9.3f} {row['gflop']:>7.2f} {row['gflop_per_s']:>8.1f} "
              f"{row['share_of_peak']:>8.1%}")
    startup = ours_summary["startup_s"]
    print(f"\nalignray start-up seconds: {startup}")
    print(f"the floor, {floor['actors']} Ray actors each loading the policy with no alignray code: {floor}")
    ratio = summary["alignray"]["rollouts_per_s"] / summary["trl"]["rollouts_per_s"]
    wall_ratio = ours_wall / trl_wall
    floor_ratio = floor["total"] / trl_wall
    print(f"alignray / TRL update throughput: {ratio:.2f}x (goal >= 2.5x); job wall time {wall_ratio:.2f}x TRL's "
          f"(goal <= 1.2x); the floor alone {floor_ratio:.2f}x TRL's")
    from alignray.core.machine import machine_info
    result = {"ratio_alignray_over_trl": ratio, "goal": 2.5, "wall_ratio_alignray_over_trl": wall_ratio,
              "wall_goal": 1.2, "fp32_matmul_peak_gflop_per_s": peak / 1e9, "gflop_per_update": per_update / 1e9,
              "flop_count": "alignray/ppo/flops.py (dense matmuls; LM head only where logits are read)",
              "alignray_stages": stages, "alignray_startup_s": startup,
              "ray_start_floor_s": floor, "floor_wall_ratio_over_trl": floor_ratio,
              "settings": SETTINGS, "updates": args.updates,
              "median_of": "updates 2..N", "machine": machine_info(),
              "trl_versions": trl.get("versions"), "trl_notes": trl.get("notes"), **summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
