"""Loading and saving causal LMs in Hugging Face format, and choosing a device.

Everything downstream loads models through these functions, so any local folder or hub
id works where the embedded default does.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


def pick_device() -> torch.device:
    """The device comes from torch, never from Ray's GPU ids: inside an actor that holds a
    logical GPU on a CPU machine, CUDA_VISIBLE_DEVICES is set but no GPU exists."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def training_dtype(precision: str, device: torch.device) -> torch.dtype:
    """'auto' is bf16 on a GPU that supports it and fp32 elsewhere."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_tokenizer(path: str | os.PathLike, padding_side: str = "left") -> PreTrainedTokenizerBase:
    """Left padding by default: generation appends to the right end of every row."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | os.PathLike, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **fused_activation(path))
    return model.to(device or pick_device())


def fused_activation(path: str | os.PathLike) -> dict[str, str]:
    """``from_pretrained`` overrides that swap GPT-2's tanh-approximated GELU, six elementwise
    ops in Python, for the same function as one fused kernel (~8% of a small model's
    training step on CPU). Every loader of a causal LM backbone passes them."""
    if getattr(AutoConfig.from_pretrained(str(path)), "activation_function", None) == "gelu_new":
        return {"activation_function": "gelu_pytorch_tanh"}
    return {}


def save_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    out_dir: str | os.PathLike) -> Path:
    """Save weights (safetensors), config and tokenizer so any tool can read the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def resolve_base_model(model_cfg, cache_dir: str | os.PathLike, seed: int = 0) -> str:
    """The base model's path or hub id for `model.source` (embedded / hf / smollm2_gguf)."""
    if model_cfg.source == "embedded":
        from alignray.embedded.pretrain import build_base_model
        return str(build_base_model(model_cfg.embedded, cache_dir, seed))
    if model_cfg.source == "smollm2_gguf":
        from alignray.embedded.smollm2 import convert_smollm2
        return str(convert_smollm2(cache_dir))
    if model_cfg.source == "hf":
        if not model_cfg.path:
            raise ValueError("model.source=hf needs model.path (a hub id or a local folder)")
        return str(model_cfg.path)
    raise ValueError(f"model.source must be embedded, hf or smollm2_gguf, not {model_cfg.source!r}")
