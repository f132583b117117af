"""Model cards: the README.md of every saved model folder, in the Hugging Face convention
(YAML front matter, then prose), so a folder can be shared as it is.

The front matter holds what the hub reads (``library_name``, ``base_model``, ``tags``,
``pipeline_tag``); the body says what the model is, the data it saw, its key settings, its
metrics where known, and how to load it (for a reward model: how to apply the stored
normalisation). Pure: the saving functions and the phases build a :class:`ModelCard` and call
:func:`write_model_card`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from alignray.core.artifacts import ADAPTER_DIR

if TYPE_CHECKING:
    from alignray.config.ppo import PPOConfig

CARD_FILE = "README.md"
# A hub id (``owner/name`` or a bare name); anything else (a local path) is named in the body only,
# since the hub rejects a base_model that is not a model id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class ModelCard:
    title: str
    description: str
    pipeline_tag: str = "text-generation"
    base_model: str | None = None  # a hub id or a local folder
    tags: list[str] = field(default_factory=list)
    data: str = ""
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    usage: str = ""


def hub_id(name: str | None) -> str | None:
    """``name`` when it reads as a hub model id, else None (a local path, empty)."""
    if not name or Path(name).exists() or name.startswith(".") or not _HUB_ID.match(name):
        return None
    return name


def front_matter(card: ModelCard) -> dict:
    matter = {"library_name": "transformers", "pipeline_tag": card.pipeline_tag,
              "tags": ["alignray", *card.tags]}
    if hub_id(card.base_model):
        matter["base_model"] = card.base_model
    return matter


def render(card: ModelCard) -> str:
    parts = ["---", yaml.safe_dump(front_matter(card), sort_keys=False).rstrip(), "---", "",
             f"# {card.title}", "", card.description]
    if card.base_model:
        parts += ["", f"Starts from `{card.base_model}`."]
    if card.data:
        parts += ["", "## Data", "", card.data]
    if card.config:
        parts += ["", "## Key settings", "", _table(card.config)]
    if card.metrics:
        parts += ["", "## Metrics", "", _table(card.metrics)]
    parts += ["", "## How to load", "", card.usage or causal_lm_usage()]
    return "\n".join(parts) + "\n"


def _table(values: dict) -> str:
    rows = ["| key | value |", "|---|---|"]
    for key, value in values.items():
        shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value, default=str)
        rows.append(f"| `{key}` | {shown.strip(chr(34))} |")
    return "\n".join(rows)


def write_model_card(model_dir: str | Path, card: ModelCard) -> Path:
    """``card`` as the folder's README.md; a folder trained with LoRA (an ``adapter/`` inside)
    also gets a section on its two forms, whichever phase writes the card."""
    path = Path(model_dir) / CARD_FILE
    adapter_config = Path(model_dir) / ADAPTER_DIR / "adapter_config.json"
    text = render(card)
    if adapter_config.exists():
        text += "\n" + lora_section(json.loads(adapter_config.read_text()))
    path.write_text(text)
    return path


def lora_section(adapter_config: dict) -> str:
    """Which file is which in a folder trained with LoRA, and how to load each."""
    loader = "AutoModelForSequenceClassification" if adapter_config.get("task_type") == "SEQ_CLS" \
        else "AutoModelForCausalLM"
    return (f"## LoRA: merged model and adapter\n\n"
            f"Trained with LoRA (rank {adapter_config.get('r')}, alpha {adapter_config.get('lora_alpha')}, "
            f"on `{adapter_config.get('target_modules')}`). This folder's weights are the **merged** model "
            f"(the adapter folded into the base weights): load it as above, no peft needed. "
            f"`{ADAPTER_DIR}/` holds the **adapter** alone (peft's format, a few MB; a new score head is in it "
            f"too), to apply to the model it was trained from, `{adapter_config.get('base_model_name_or_path')}`:\n\n"
            f"```python\nfrom peft import PeftModel\nfrom transformers import {loader}\n\n"
            f"base = {loader}.from_pretrained(\"<the base model>\")\n"
            f"model = PeftModel.from_pretrained(base, \"<this folder>/{ADAPTER_DIR}\")\n```\n")


def read_model_card(model_dir: str | Path) -> tuple[dict, str]:
    """(front matter, body) of ``<model_dir>/README.md``; a clear error if it has no front matter."""
    path = Path(model_dir) / CARD_FILE
    text = path.read_text()
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        raise ValueError(f"{path}: no YAML front matter (a model card starts with a '---' block)")
    matter, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(matter), body


def causal_lm_usage() -> str:
    return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            "model = AutoModelForCausalLM.from_pretrained(\"<this folder>\")\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"<this folder>\")\n```\n\n"
            "Or sample from it: `alignray generate --model <this folder> --prompt \"...\"`.")


def reward_model_usage(mean: float, std: float, mean_key: str, std_key: str) -> str:
    return (f"A sequence classifier with one output, the raw reward. The config stores the raw "
            f"reward's mean ({mean:.6g}) and standard deviation ({std:.6g}) on a reference set "
            f"(`{mean_key}`, `{std_key}`); the normalised reward PPO uses is "
            f"`(raw - {mean_key}) / {std_key}`.\n\n"
            "```python\nimport torch\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
            "model = AutoModelForSequenceClassification.from_pretrained(\"<this folder>\")\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"<this folder>\")\n"
            "batch = tokenizer([prompt + response], return_tensors=\"pt\")\n"
            "with torch.no_grad():\n    raw = model(**batch).logits[:, 0]\n"
            f"reward = (raw - model.config.{mean_key}) / model.config.{std_key}\n```\n\n"
            "`alignray.reward.model.load_reward_model(folder).score(prompts, responses)` formats the "
            "text as training did (chat template, end of text) and normalises.")


def default_card(model) -> ModelCard:
    """The card of a model saved by code that knows nothing more about it (a training
    checkpoint, an export): its class, where it started (the folder or id it was loaded
    from) and how to load it. The phase that owns the folder writes a fuller one."""
    name = type(model).__name__
    classifier = name.endswith("ForSequenceClassification")
    return ModelCard(title=f"alignray {name}", description=f"A `{name}` saved by alignray.",
                     pipeline_tag="text-classification" if classifier else "text-generation",
                     base_model=getattr(model, "name_or_path", None) or None,
                     usage="Load it with `AutoModelForSequenceClassification.from_pretrained(<this folder>)`."
                     if classifier else "")


def ppo_policy_card(ppo: PPOConfig, sft_model_path: str, reward_model_path: str | None, records: list[dict]) -> ModelCard:
    """The PPO (or GRPO, RLOO...) policy's card: its start, its reward, key settings, first and last step."""
    scorer = (f"the reward model `{reward_model_path}`" if ppo.reward.kind == "reward_model"
              else f"`ppo.reward.kind={ppo.reward.kind}`")
    first, last = records[0], records[-1]
    answered = f" x {ppo.samples_per_prompt} responses" if ppo.samples_per_prompt > 1 else ""
    return ModelCard(
        title="alignray PPO policy", tags=["ppo", "rlhf"], base_model=sft_model_path,
        description=f"A causal language model trained with PPO ({ppo.advantage_estimator} advantages) against a "
                    "reward, held near its SFT model by a KL penalty and rule-based constraint penalties.",
        data=f"{ppo.steps} steps of {ppo.prompts_per_step} prompts{answered}, up to {ppo.rollout.max_new_tokens} "
             f"new tokens per response; rewarded by {scorer}"
             + (", normalised with running statistics." if ppo.reward.normalize else "."),
        config={"lr": ppo.policy.lr, "kl_coef": ppo.kl.coef, "kl_controller": ppo.kl.controller,
                "clip_eps": ppo.policy.clip_eps,
                "epochs": ppo.epochs, "minibatches": ppo.minibatches, "advantage_estimator": ppo.advantage_estimator,
                "samples_per_prompt": ppo.samples_per_prompt, "kl_placement": ppo.kl.placement,
                "policy_loss": ppo.policy.loss, "loss_aggregation": ppo.policy.loss_aggregation,
                "lora_rank": ppo.policy.lora.rank},
        metrics={"reward_raw_first_step": first["reward_raw"], "reward_raw_last_step": last["reward_raw"],
                 "kl_last_step": last["kl"], "response_length_last_step": last["response_length"]})
