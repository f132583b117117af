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


def test_the_shipped_base_model_is_the_default_recipes():
    """The files in alignray/pretrain/shipped/ declare the default recipe and seed with the key
    that recipe hashes to now, and their config, tokenizer and weights are that recipe's: a
    changed recipe without new weights fails here instead of seeding a mismatched model."""
    from safetensors import safe_open
    from transformers import GPT2Config, GPT2LMHeadModel

    from alignray.config.model import EmbeddedRecipe
    from alignray.pretrain.shipped import SHIPPED_DIR, WEIGHTS_FILE, shipped_recipe
    shipped = shipped_recipe()
    recipe = EmbeddedRecipe()
    assert shipped["recipe"] == dataclasses.asdict(recipe) and shipped["seed"] == 0
    assert shipped["key"] == recipe_hash(recipe, 0)
    config = GPT2Config.from_pretrained(SHIPPED_DIR)
    assert (config.n_layer, config.n_head, config.n_embd, config.n_positions) == (
        recipe.n_layer, recipe.n_head, recipe.n_embd, recipe.n_positions)
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_DIR)
    assert len(tokenizer) == config.vocab_size and recipe.vocab_size <= config.vocab_size
    expected = {name: tuple(t.shape) for name, t in GPT2LMHeadModel(config).state_dict().items()}
    with safe_open(str(SHIPPED_DIR / WEIGHTS_FILE), "pt") as weights:
        stored = {name: weights.get_slice(name) for name in weights.keys()}
        assert all(piece.get_dtype() == "BF16" for piece in stored.values())
        assert {name: tuple(piece.get_shape()) for name, piece in stored.items()} == {
            name: shape for name, shape in expected.items() if name in stored}
    assert set(expected) - set(stored) <= {"lm_head.weight"}  # tied to the embedding


def test_a_cache_of_the_default_recipe_is_seeded_from_the_shipped_files(tmp_path, tiny_base_model):
    """No pretraining: the cache gets the shipped weights widened to fp32, marked as shipped;
    another recipe (the tests' tiny one, the session's base model) is pretrained as before."""
    from safetensors.torch import load_file

    from alignray.config.model import EmbeddedRecipe
    from alignray.pretrain.embedded import build_base_model
    from alignray.pretrain.shipped import SHIPPED_DIR, WEIGHTS_FILE
    model_dir = build_base_model(EmbeddedRecipe(), tmp_path, seed=0)
    assert json.loads((model_dir.parent / "summary.json").read_text())["source"] == "shipped"
    seeded, shipped = load_file(str(model_dir / WEIGHTS_FILE)), load_file(str(SHIPPED_DIR / WEIGHTS_FILE))
    assert all(seeded[name].dtype == torch.float32 and torch.equal(seeded[name], shipped[name].float())
               for name in shipped)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.dtype == torch.float32
    assert json.loads((tiny_base_model.parent / "summary.json").read_text())["source"] == "pretrained"
