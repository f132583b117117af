"""Model cards (alignray/core/model_card.py): the README.md of a saved model folder parses as a
Hugging Face card. The cards of the trained folders are checked where the suite trains them
(test_pretrain, test_sft, test_reward_model, test_ppo_run, test_deepspeed_strategy)."""
import pytest

from alignray.core.model_card import ModelCard, hub_id, read_model_card, render, write_model_card


def test_a_card_round_trips_with_its_front_matter_and_sections(tmp_path):
    card = ModelCard(title="t", description="what it is", base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
                     tags=["sft"], data="12 demonstrations", config={"lr": 3e-4, "epochs": 1},
                     metrics={"heldout_loss": 2.34567})
    write_model_card(tmp_path, card)
    matter, body = read_model_card(tmp_path)
    assert matter == {"library_name": "transformers", "pipeline_tag": "text-generation",
                      "tags": ["alignray", "sft"], "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    for section in ("# t", "## Data", "## Key settings", "## Metrics", "## How to load"):
        assert f"\n{section}\n" in body
    assert "| `heldout_loss` | 2.346 |" in body and "| `lr` | 0.0003 |" in body


def test_a_local_base_model_is_named_in_the_body_not_the_front_matter(tmp_path, monkeypatch):
    write_model_card(tmp_path, ModelCard(title="t", description="d", base_model="/cache/base-1/model"))
    matter, body = read_model_card(tmp_path)
    assert "base_model" not in matter and "Starts from `/cache/base-1/model`." in body
    assert [hub_id(n) for n in ("gpt2", "org/name-1.5", "./model", "/abs/model", "", None, "a/b/c")] == [
        "gpt2", "org/name-1.5", None, None, None, None, None]
    (tmp_path / "runs" / "base").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hub_id("runs/base") is None and hub_id("runs/other") == "runs/other"  # a folder here is local


def test_a_readme_without_front_matter_is_refused_with_its_path(tmp_path):
    (tmp_path / "README.md").write_text("# just a title\n")
    with pytest.raises(ValueError, match=f"{tmp_path}/README.md: no YAML front matter"):
        read_model_card(tmp_path)
    assert render(ModelCard(title="t", description="d")).startswith("---\nlibrary_name: transformers\n")
