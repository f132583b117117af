"""Which pretrained model a run starts from, by ``model.source``: the embedded default
(pretrained here on first use, cached), SmolLM2 converted from GGUF, or any Hugging Face
folder or hub id."""
from __future__ import annotations

import os

from alignray.pretrain.embedded import build_base_model
from alignray.pretrain.smollm2 import convert_smollm2
from alignray.core.tracking import TrackingSettings


def resolve_base_model(model_cfg, cache_dir: str | os.PathLike, seed: int = 0,
                       tracking: TrackingSettings | None = None) -> str:
    """The base model's path or hub id for `model.source` (embedded / hf / smollm2_gguf);
    pretraining the embedded one reports to the tracker of `tracking`."""
    if model_cfg.source == "embedded":
        return str(build_base_model(model_cfg.embedded, cache_dir, seed, tracking, rebuild=model_cfg.rebuild))
    if model_cfg.source == "smollm2_gguf":
        return str(convert_smollm2(cache_dir))
    if model_cfg.source == "hf":
        if not model_cfg.path:
            raise ValueError("model.source=hf needs model.path (a hub id or a local folder)")
        return str(model_cfg.path)
    raise ValueError(f"model.source must be embedded, hf or smollm2_gguf, not {model_cfg.source!r}")
