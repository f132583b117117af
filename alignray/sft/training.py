"""Supervised fine-tuning, the pure part: demonstrations become token rows whose loss
mask covers the response only, and the loss is summed over those tokens.

A row is ``prompt tokens + response tokens + end token``. The prompt is formatted the way
the model will later see it at generation time (`alignray.data.prompts.format_prompt`: the chat
template when the tokenizer has one, else the plain format; a conversation's turns
included) and tokenised on its own by `alignray.data.prompts.prompt_token_ids`, the tokenisation
PPO, feedback sampling and evaluation use too, so training conditions on exactly the tokens
generation will start from (a BOS-adding tokenizer's BOS included).

Lengths are capped, never silently: a prompt longer than ``max_prompt_tokens`` loses its oldest
content and keeps its chat template whole (`alignray.data.prompts.fit_prompt`), or, in the plain
format, keeps its leading special tokens and last tokens (the ones next to the response); a response longer than
``max_response_tokens`` keeps its first tokens and loses its end token; each row carries
flags saying so, and the phase counts and reports them.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from alignray.config.lora import LoRAConfig
from alignray.data.prompts import fit_prompt, prompt_token_ids, response_text
from alignray.models.generation import end_token_ids, turn_end_token
from alignray.models.lora import with_lora
from alignray.models.modeling import load_causal_lm, load_tokenizer

IGNORE = 0  # loss-mask value of prompt and padding positions


def sequence_length(max_prompt_tokens: int, max_response_tokens: int) -> int:
    """Width of a tokenised row: the longest prompt, the longest response, the end token."""
    return max_prompt_tokens + max_response_tokens + 1


def tokenize_demonstrations(tokenizer, prompts, responses, systems, max_prompt_tokens: int,
                            max_response_tokens: int, conversations=None, *,
                            end_token: int | None = None) -> dict[str, np.ndarray]:
    """Token rows, right-padded to :func:`sequence_length`, each response closed by
    ``end_token`` (the model's turn end, :func:`alignray.models.generation.turn_end_token`;
    None: the tokenizer's EOS):

    - ``input_ids`` (int32), ``attention_mask`` (int8): the row and where it is real;
    - ``loss_mask`` (int8): 1 on the response tokens and the end token, which the model
      learns to predict; 0 on the prompt and the padding;
    - ``prompt_truncated``, ``response_truncated`` (int8): the caps that were applied.
    """
    width = sequence_length(max_prompt_tokens, max_response_tokens)
    conversations = [None] * len(prompts) if conversations is None else conversations
    fitted = [fit_prompt(tokenizer, p, s or None, c, max_prompt_tokens) for p, s, c in zip(prompts, systems, conversations)]
    response_texts = [response_text(tokenizer, r) for r in responses]
    prompt_ids, token_cut = prompt_token_ids(tokenizer, [text for text, _ in fitted], max_prompt_tokens)
    prompt_cut = [cut or content_cut for cut, (_, content_cut) in zip(token_cut, fitted)]
    response_ids = tokenizer(response_texts, add_special_tokens=False)["input_ids"]

    rows = len(fitted)
    out = {
        "input_ids": np.full((rows, width), tokenizer.pad_token_id, dtype=np.int32),
        "attention_mask": np.zeros((rows, width), dtype=np.int8),
        "loss_mask": np.full((rows, width), IGNORE, dtype=np.int8),
        "prompt_truncated": np.zeros(rows, dtype=np.int8),
        "response_truncated": np.zeros(rows, dtype=np.int8),
    }
    out["prompt_truncated"][:] = prompt_cut
    for i, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        if len(response) > max_response_tokens:
            response = response[:max_response_tokens]  # cut mid-text: no end token
            out["response_truncated"][i] = 1
        else:
            response = response + [tokenizer.eos_token_id if end_token is None else end_token]
        ids = prompt + response
        out["input_ids"][i, :len(ids)] = ids
        out["attention_mask"][i, :len(ids)] = 1
        out["loss_mask"][i, len(prompt):len(ids)] = 1
    return out


def tokenize_batch(batch: dict[str, np.ndarray], model_path: str, max_prompt_tokens: int,
                   max_response_tokens: int) -> dict[str, np.ndarray]:
    """For ``Dataset.map_batches``: a batch of demonstrations (numpy columns) becomes token
    rows; other columns (``example_id``) pass through. The tokenizer is loaded once per
    worker process and kept (tasks reuse their processes)."""
    rows = len(batch["prompt"])
    systems = batch["system"] if "system" in batch else [None] * rows
    # Ray Data hands a list-of-struct column over as arrays of dicts (None: single-turn)
    conversations = [None if c is None else list(c) for c in batch.get("conversation", [None] * rows)]
    tokens = tokenize_demonstrations(_tokenizer(model_path), batch["prompt"], batch["response"], systems,
                                     max_prompt_tokens, max_response_tokens, conversations,
                                     end_token=_end_token(model_path))
    passed_on = {k: v for k, v in batch.items() if k not in ("prompt", "response", "system", "source", "conversation")}
    return passed_on | tokens


@functools.lru_cache(maxsize=4)
def _tokenizer(model_path: str):
    return load_tokenizer(model_path, padding_side="right")


@functools.lru_cache(maxsize=4)
def _end_token(model_path: str) -> int:
    tokenizer = _tokenizer(model_path)
    return turn_end_token(tokenizer, end_token_ids(model_path, tokenizer))


def build_sft_model(model_path: str, lora: LoRAConfig) -> torch.nn.Module:
    """The causal LM to fine-tune, with LoRA adapters when ``sft.lora.rank`` > 0."""
    return with_lora(load_causal_lm(model_path), lora)


def collate_token_rows(rows: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Tensors on ``device``, cut to the longest real row of the batch (rows are
    right-padded, so the tail columns beyond it are padding everywhere)."""
    length = int(rows["attention_mask"].sum(axis=1).max())
    return {name: torch.as_tensor(rows[name][:, :length], dtype=torch.long, device=device)
            for name in ("input_ids", "attention_mask", "loss_mask")}


def response_token_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy summed over the response tokens (prompt and padding masked out).

    Returns the sum and ``{"units": response tokens, "tokens": all real tokens}``; the
    training loop divides by the response tokens of the whole global batch, so every
    response token weighs the same whatever the number of workers.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Position t predicts token t+1.
    predicted = logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    mask = batch["loss_mask"][:, 1:].bool()
    token_losses = F.cross_entropy(predicted.reshape(-1, predicted.size(-1)), targets.reshape(-1),
                                   reduction="none").view_as(targets)
    loss_sum = torch.where(mask, token_losses, torch.zeros((), device=token_losses.device)).sum()
    return loss_sum, {"units": float(mask.sum()), "tokens": float(batch["attention_mask"].sum())}
