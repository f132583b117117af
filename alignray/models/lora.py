"""LoRA through peft, for every trained role (SFT, the reward model, DPO, the PPO policy and
critic); each role's ``lora`` block (:class:`alignray.config.lora.LoRAConfig`) turns it on.

- Training: :func:`with_lora` wraps the model; only the adapters train, and a sequence
  classifier's score head (new, so it must learn) trains whole through peft's
  ``modules_to_save``. The critic wraps its backbone; its value head sits outside and trains.
- The reference of a LoRA policy is the same model with its adapter disabled
  (``model.disable_adapter()``), so PPO loads no second copy of the weights.
- Weight sync: :func:`adapter_state` is all the policy sends; a rollout worker keeps a plain
  model (the static decoder reads plain weights) and :class:`AdapterMerger` folds each new
  adapter into it from the base weights it started with.
- Saving: :func:`save_adapter_and_merged` writes the merged model (any Hugging Face loader
  reads it; the later phases load it) and the adapter alone in ``adapter/``.
"""
from __future__ import annotations

import copy
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from transformers.pytorch_utils import Conv1D

from alignray.config.lora import LoRAConfig
from alignray.core.artifacts import ADAPTER_DIR
from alignray.core.model_card import ModelCard, default_card, write_model_card

if TYPE_CHECKING:  # peft is imported where LoRA is on: it costs every process ~0.15 s of start
    from peft import LoraConfig, PeftModel

# peft's state-dict key of a LoRA factor: base_model.model.<layer path>.lora_A.weight
_FACTOR_KEY = re.compile(r"^base_model\.model\.(?P<path>.+)\.lora_(?P<factor>[AB])\.weight$")


def peft_config(settings: LoRAConfig, task_type: str | None, fan_in_fan_out: bool = False) -> LoraConfig:
    """``task_type``: one of peft's ``TaskType`` names; ``fan_in_fan_out``: the model stores its
    projections as (in, out), as GPT-2's Conv1D does."""
    from peft import LoraConfig
    targets = settings.target_modules.strip()
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=targets if targets == "all-linear" else
                      [name.strip() for name in targets.split(",") if name.strip()],
                      task_type=task_type, fan_in_fan_out=fan_in_fan_out)


def with_lora(model: torch.nn.Module, settings: LoRAConfig,
              task_type: str | None = "CAUSAL_LM") -> torch.nn.Module:
    """``model`` with LoRA adapters when ``settings.rank`` > 0, else ``model`` itself.
    ``"SEQ_CLS"`` (peft's ``TaskType``) keeps the classifier's score head trainable; ``None``: a bare backbone."""
    if settings.rank < 0 or settings.alpha <= 0:
        raise ValueError(f"lora.rank must be >= 0 and lora.alpha > 0, not {settings.rank} and {settings.alpha}")
    if not settings.enabled:
        return model
    from peft import get_peft_model
    conv1d = any(isinstance(module, Conv1D) for module in model.modules())
    return get_peft_model(model, peft_config(settings, task_type, conv1d))


def is_lora(model: torch.nn.Module) -> bool:
    """A model can be peft's only once peft is imported (by :func:`with_lora`)."""
    return "peft" in sys.modules and isinstance(model, sys.modules["peft"].PeftModel)


def _adapter_tensors(model: PeftModel) -> dict[str, Tensor]:
    from peft import get_peft_model_state_dict
    return get_peft_model_state_dict(model)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def adapter_state(model: PeftModel) -> dict[str, Tensor]:
    """The adapter's weights (and any head kept whole) as CPU copies: what a weight sync sends."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in _adapter_tensors(model).items()}


def adapter_bytes(model: PeftModel) -> int:
    return sum(t.numel() * t.element_size() for t in _adapter_tensors(model).values())


def adapter_factors(adapter: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """(A, B) by the adapted layer's path in the plain model. Anything else (a head kept whole,
    an embedding's adapter) is refused: a rollout worker can fold only linear layers' LoRA."""
    factors: dict[str, dict[str, Tensor]] = {}
    for key, tensor in adapter.items():
        match = _FACTOR_KEY.match(key)
        if match is None:
            raise ValueError(f"the policy's adapter holds {key!r}: only LoRA on linear layers can be merged into "
                             "a rollout worker's model (set ppo.policy.lora.target_modules to linear layers)")
        factors.setdefault(match["path"], {})[match["factor"]] = tensor
    return {path: (pair["A"], pair["B"]) for path, pair in factors.items()}


def merged_weight(base: Tensor, a: Tensor, b: Tensor, scale: float, transposed: bool) -> Tensor:
    """``base + scale x B @ A`` in fp32, rounded once to the base's dtype; ``transposed``: the
    layer stores its weight as (in, out), as GPT-2's Conv1D does."""
    delta = (b.to(base.device, torch.float32) @ a.to(base.device, torch.float32)) * scale
    return (base.float() + (delta.T if transposed else delta)).to(base.dtype)


class AdapterMerger:
    """A rollout worker's end of a LoRA weight sync: each adapter is folded into the worker's
    plain model (:func:`merged_weight`), always from the base weights the worker started with
    (kept aside for the adapted layers), so no rounding piles up over syncs."""

    def __init__(self, model: torch.nn.Module, settings: LoRAConfig):
        self.model, self.scale = model, settings.alpha / settings.rank
        self.base: dict[str, Tensor] = {}  # the adapted layers' starting weights, by path

    @torch.no_grad()
    def merge(self, adapter: dict[str, Tensor]) -> None:
        for path, (a, b) in adapter_factors(adapter).items():
            layer = self.model.get_submodule(path)
            base = self.base.setdefault(path, layer.weight.detach().clone())
            layer.weight.copy_(merged_weight(base, a, b, self.scale, isinstance(layer, Conv1D)))


@contextmanager
def as_merged(model: PeftModel):
    """Inside the block ``model`` computes as a rollout worker's merged copy does: adapter
    disabled, each adapted layer's weight swapped for :func:`merged_weight` (rounded alike), so
    the sync's probe check compares like with like also in bf16; the weights are put back after."""
    config = model.peft_config[model.active_adapter]
    factors = adapter_factors(_adapter_tensors(model))
    layers = {path: model.base_model.model.get_submodule(path).base_layer for path in factors}
    originals = {path: layer.weight.data for path, layer in layers.items()}
    with torch.no_grad(), model.disable_adapter():
        try:
            for path, (a, b) in factors.items():
                layers[path].weight.data = merged_weight(originals[path], a, b, config.lora_alpha / config.r,
                                                         isinstance(layers[path], Conv1D))
            yield model
        finally:
            for path, layer in layers.items():
                layer.weight.data = originals[path]


def merged_model(model: PeftModel) -> torch.nn.Module:
    """A plain Hugging Face model with the adapter folded in, by peft's ``merge_and_unload``
    on a copy (the model in training keeps its adapter)."""
    return copy.deepcopy(model).merge_and_unload()


def save_adapter_and_merged(model: PeftModel, tokenizer, out_dir: str | os.PathLike,
                            card: ModelCard | None = None) -> Path:
    """The merged model in ``out_dir`` (safetensors, config, tokenizer, card) and the adapter
    alone in ``out_dir/adapter`` (peft's format); the card says which is which."""
    out = Path(out_dir)
    model.save_pretrained(out / ADAPTER_DIR)
    merged = merged_model(model)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_model_card(out, card or default_card(merged))
    return out
