"""Phase 1: the pretrained model. For the embedded default this pretrains the tiny GPT-2 on
the tweets (cached); for any other source it resolves the model and checks it loads.

    python -m alignray.workflows.pretrain                 # embedded default
    python -m alignray.workflows.pretrain model=smollm2   # SmolLM2-135M-Instruct from its GGUF package
"""
from __future__ import annotations

import logging

import hydra
import torch
from omegaconf import DictConfig

from alignray.models.modeling import load_causal_lm, load_tokenizer
from alignray.workflows.common import CONFIG_PATH, run_app, start_app
from alignray.workflows.phases import base_model

log = logging.getLogger("alignray.pretrain")


def sample(model_path: str, prompts: list[str], max_new_tokens: int = 24, seed: int = 0) -> list[str]:
    """Sampled continuations, to see at a glance what the model writes."""
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path).eval()
    torch.manual_seed(seed)
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, top_p=0.95, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> str:
    config = start_app(cfg, "pretrain")
    path = base_model(config)  # built or reused, and checked: a model the phases cannot train stops here
    prompts = ["I love the new", "Flying with this airline", "Self-driving cars are"]
    samples = "".join(f"\n  {p} ->{c}" for p, c in zip(prompts, sample(path, prompts, seed=config.seed)))
    log.info("base model: %s; samples:%s", path, samples)
    return path


if __name__ == "__main__":
    run_app(main)
