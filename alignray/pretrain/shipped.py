"""The embedded base model as the project ships it, so a first run does not pretrain.

`alignray/pretrain/shipped/` holds the default recipe's model: its weights in bf16
safetensors (about 8.5 MB, half of fp32), its config, its tokenizer, its model card, and
`recipe.json` with the recipe, the seed and the recipe key (`recipe_hash`) they came from.
When a run asks for a base model whose key equals the shipped one, the cache is seeded from
these files (weights widened to fp32, as every phase loads them); any other recipe or seed is
pretrained as before, and `model.rebuild=true` pretrains even the shipped one.

A rebuild keeps fp32 weights; the shipped ones are the same training rounded to bf16
(`benchmarks/shipped_base_model.py` retrains the recipe, compares the held-out loss of both
and writes these files).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
RECIPE_FILE = "recipe.json"  # {"recipe": ..., "seed": ..., "key": ..., "summary": ...}
WEIGHTS_FILE = "model.safetensors"


def shipped_recipe(folder: Path = SHIPPED_DIR) -> dict | None:
    """What the shipped files declare (None when the project ships no base model)."""
    path = folder / RECIPE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def seed_from_shipped(model_dir: Path, folder: Path = SHIPPED_DIR) -> None:
    """Write the shipped model into ``model_dir`` as an fp32 Hugging Face folder."""
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.to(torch.float32) for name, tensor in load_file(str(folder / WEIGHTS_FILE)).items()}
    save_file(weights, str(model_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    _copy_all_but_weights(folder, model_dir)


def write_shipped(model_dir: Path, recipe: dict, seed: int, key: str, summary: dict,
                  folder: Path = SHIPPED_DIR) -> None:
    """Replace the shipped files with the model in ``model_dir``, its weights stored as bf16."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    weights = load_file(str(model_dir / WEIGHTS_FILE))
    save_file({name: tensor.to(torch.bfloat16).contiguous() for name, tensor in weights.items()},
              str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    _copy_all_but_weights(model_dir, folder)
    (folder / RECIPE_FILE).write_text(json.dumps({"recipe": recipe, "seed": seed, "key": key, "summary": summary},
                                                 indent=2, sort_keys=True) + "\n")


def _copy_all_but_weights(source: Path, target: Path) -> None:
    """Config, tokenizer and model card: a Hugging Face folder's files other than its weights."""
    for path in source.iterdir():
        if path.is_file() and path.name not in (WEIGHTS_FILE, RECIPE_FILE):
            shutil.copy2(path, target / path.name)
