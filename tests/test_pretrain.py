"""Phase 1 on the embedded default: the tiny recipe pretrains, saves and reloads."""
import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignray.pretrain.embedded import TINY_TEST_RECIPE, recipe_hash
from alignray.core.model_card import read_model_card


def test_pretraining_lowers_heldout_loss(tiny_base_model):
    summary = json.loads((tiny_base_model.parent / "summary.json").read_text())
    assert summary["heldout_loss"] < summary["heldout_loss_untrained"] - 0.5
    assert (tiny_base_model.parent / "loss.png").stat().st_size > 1000


def test_saved_model_reloads_with_from_pretrained_and_generates(tiny_base_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_model)
    assert (tiny_base_model / "model.safetensors").exists()
    matter, body = read_model_card(tiny_base_model)
    assert matter["library_name"] == "transformers" and "base_model" not in matter  # trained from scratch
    summary = json.loads((tiny_base_model.parent / "summary.json").read_text())
    assert f"| `heldout_loss` | {summary['heldout_loss']:.4g} |" in body
    batch = tokenizer(["I love the new"], return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**batch, max_new_tokens=8, do_sample=True, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > batch["input_ids"].shape[1]
    assert tokenizer.decode(out[0], skip_special_tokens=True).startswith("I love the new")


def test_recipe_hash_changes_with_recipe_and_seed():
    other = dataclasses.replace(TINY_TEST_RECIPE, n_layer=3)
    assert recipe_hash(TINY_TEST_RECIPE, 0) == recipe_hash(TINY_TEST_RECIPE, 0)
    assert recipe_hash(other, 0) != recipe_hash(TINY_TEST_RECIPE, 0)
    assert recipe_hash(TINY_TEST_RECIPE, 1) != recipe_hash(TINY_TEST_RECIPE, 0)


def test_the_recipe_gives_the_same_model_on_any_cpu(tiny_base_model):
    """Pretraining is fp32 whatever the CPU supports, so a recipe and seed mean one model:
    its held-out loss matches the figure recorded on another machine (an AVX512-BF16 EPYC)
    within 0.01. Under bf16 autocast it would depend on whether the CPU has native bf16."""
    summary = json.loads((tiny_base_model.parent / "summary.json").read_text())
    assert summary["heldout_loss"] == pytest.approx(4.4534, abs=0.01)
    assert not any("bf16" in field.name or "precision" in field.name
                   for field in dataclasses.fields(TINY_TEST_RECIPE))
