"""Loading and saving causal LMs in Hugging Face format, and choosing a device.

Everything downstream loads models through these functions, so any local folder or hub
id works where the embedded default does. Only the embedded default forces the hub offline
(``alignray.workflows.common.start_app``); a hub id is fetched where the hub is reachable and cached.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignray.core.model_card import ModelCard, default_card, write_model_card


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


def from_pretrained(loader, path: str | os.PathLike, **kwargs):
    """``loader.from_pretrained(path)``; a hub id that cannot be had (not cached, and the
    hub offline or unreachable) is an error naming the model and what to do."""
    try:
        return loader.from_pretrained(str(path), **kwargs)
    except OSError as error:
        if Path(path).exists():
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "the hub is offline (HF_HUB_OFFLINE is set)" if offline else "the hub could not be reached"
        raise OSError(f"model {str(path)!r} is not a local folder nor in the Hugging Face cache, and {why}: "
                      f"download it once where the hub is reachable (`hf download {path}`), "
                      "or give a local folder") from error


def load_tokenizer(path: str | os.PathLike, padding_side: str = "left") -> PreTrainedTokenizerBase:
    """Left padding by default: generation appends to the right end of every row."""
    tokenizer = from_pretrained(AutoTokenizer, path)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | os.PathLike, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    model = from_pretrained(AutoModelForCausalLM, path, dtype=dtype, **fused_activation(path))
    return model.to(device or pick_device())


def fused_activation(path: str | os.PathLike) -> dict[str, str]:
    """``from_pretrained`` overrides that swap GPT-2's tanh-approximated GELU, six elementwise
    ops in Python, for the same function as one fused kernel (~8% of a small model's
    training step on CPU). Every loader of a causal LM backbone passes them."""
    if getattr(from_pretrained(AutoConfig, path), "activation_function", None) == "gelu_new":
        return {"activation_function": "gelu_pytorch_tanh"}
    return {}


def save_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    out_dir: str | os.PathLike, card: ModelCard | None = None) -> Path:
    """Save weights (safetensors), config, tokenizer and model card (``card``, or one that
    knows only where the model came from) so any tool can read the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_model_card(out, card or default_card(model))
    return out


def check_model_supported(path: str | os.PathLike) -> None:
    """Refuse, before any work starts, a model the phases cannot train correctly, naming its
    type and what is missing: every phase loads it as a causal LM (the critic's backbone and
    the reward model's classifier come from the same family), and every forward is given
    position ids counted from each row's first token, which left-padded prompts need."""
    import inspect

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = from_pretrained(AutoConfig, path)
    kind = getattr(config, "model_type", type(config).__name__)
    missing = []
    causal = AutoModelForCausalLM._model_mapping[type(config)] if type(config) in AutoModelForCausalLM._model_mapping \
        else None
    if causal is None:
        missing.append("a causal LM class in transformers (alignray trains decoder-only models)")
    elif "position_ids" not in inspect.signature(causal.forward).parameters:
        missing.append(f"position_ids in {causal.__name__}.forward (left-padded prompts need them)")
    if type(config) not in AutoModelForSequenceClassification._model_mapping:
        missing.append("a sequence-classification class in transformers (the reward model's score head)")
    if missing:
        raise ValueError(f"model {str(path)!r} of type {kind!r} is not supported: it lacks " + "; ".join(missing))


def position_limit(model) -> int | None:
    """How many positions ``model`` reads, from its config: a loaded model, its config, or
    a model folder or hub id. None when the config states no limit."""
    if isinstance(model, (str, os.PathLike)):
        model = from_pretrained(AutoConfig, model)
    config = getattr(model, "config", model)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def check_position_limit(model, needed: int, what: str) -> None:
    """Refuse now what would crash the position embedding later: ``needed`` positions (made
    of ``what``, named by the config keys that set it) beyond the model's limit."""
    limit = position_limit(model)
    if limit is not None and needed > limit:
        where = f" ({model})" if isinstance(model, (str, os.PathLike)) else ""
        raise ValueError(f"{what} = {needed} positions exceed the model's {limit}{where}")
