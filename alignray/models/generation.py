"""Sampling responses from a causal LM and scoring given tokens with it: batched, pure torch.

One layout is used everywhere (rollout workers, policy, reference, critic), so a token's
log-prob is computed from the same inputs whoever computes it:

- prompts are left-padded, ``prompt_ids``/``prompt_mask`` ``[B, P]``;
- responses are right-padded, ``response_ids`` ``[B, T]``, with ``response_mask`` marking
  the tokens up to and including the end token;
- the model reads ``cat(prompt_ids, response_ids)`` with attention on every prompt token
  and every response position, and position ids counted from each row's first prompt token.
  Positions after a row's end token are never read by a valid token (attention is causal),
  so what is there does not matter.

Log-probs are of the temperature-scaled distribution before any top-p filtering: that is
the distribution PPO's ratio is taken against.
"""
from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from alignray.data.prompts import prompt_token_ids


@dataclass
class SampledResponses:
    response_ids: Tensor  # [B, T] long; pad_token_id after the end token
    response_mask: Tensor  # [B, T] bool; tokens up to and including the end token
    logprobs: Tensor  # [B, T] float32; log-prob of each sampled token, 0 on padding
    ended_with_eos: Tensor  # [B] bool; False where the length limit cut the response


def encode_prompts(tokenizer, formatted: Sequence[str], max_prompt_tokens: int) -> tuple[Tensor, Tensor]:
    """``(prompt_ids, prompt_mask)`` ``[B, P]``, left-padded, of prompts formatted by
    ``alignray.data.prompts.format_prompt``, tokenised by ``alignray.data.prompts.prompt_token_ids`` (the
    ids SFT trained on), each cut to its last ``max_prompt_tokens``."""
    rows, _ = prompt_token_ids(tokenizer, formatted, max_prompt_tokens)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids, mask


def end_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends a response: the model's generation config's ``eos_token_id``
    (one id or a list; a chat model ends its turn with its template's own token, e.g.
    SmolLM2's ``<|im_end|>``, which need not be the tokenizer's EOS), then the tokenizer's
    EOS. ``model`` is a loaded model or its folder. Sampling stops on any of them, and PPO's
    truncation penalty and the evaluation read that same stop."""
    config = getattr(model, "generation_config", None)
    if config is None and isinstance(model, (str, os.PathLike)):
        from transformers import GenerationConfig
        try:
            config = GenerationConfig.from_pretrained(str(model))
        except OSError:  # a folder without generation_config.json
            config = None
    listed = getattr(config, "eos_token_id", None)
    ids = ([listed] if isinstance(listed, int) else list(listed or [])) + [tokenizer.eos_token_id]
    # ids outside the tokenizer (a config default never updated, e.g. GPT-2's 50256 over a
    # small vocabulary) cannot be sampled: they are no end token
    return list(dict.fromkeys(i for i in ids if i is not None and 0 <= i < len(tokenizer)))


def turn_end_token(tokenizer, ends: Sequence[int]) -> int:
    """The end token SFT closes a demonstration with: the one of ``ends`` the chat template
    writes after an assistant's turn (Llama 3 lists both ``<|end_of_text|>`` and
    ``<|eot_id|>``; a turn ends with the second); without a template, the tokenizer's EOS."""
    if getattr(tokenizer, "chat_template", None):
        turn = [{"role": "user", "content": "a"}]
        cue = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(turn + [{"role": "assistant", "content": "b"}], tokenize=False)
        if whole.startswith(cue):
            after = tokenizer(whole[len(cue):], add_special_tokens=False)["input_ids"]
            found = [i for i in after if i in ends]
            if found:
                return found[0]
    return tokenizer.eos_token_id if tokenizer.eos_token_id in ends or not ends else ends[0]


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability to 0. PPO compares log-probs of the same tokens computed
    in different processes and modes; dropout would make them differ at random."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """0, 1, 2... from each row's first attended token (left padding gets 0)."""
    return (mask.long().cumsum(dim=-1) - 1).clamp_min(0)


def sequence_inputs(prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor) -> dict[str, Tensor]:
    """The model inputs for prompt + response: ``input_ids``, ``attention_mask``, ``position_ids``."""
    attention = torch.cat([prompt_mask.long(), torch.ones_like(response_ids)], dim=1)
    return {"input_ids": torch.cat([prompt_ids, response_ids], dim=1), "attention_mask": attention,
            "position_ids": position_ids_from_mask(attention)}


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Logits with every token outside the nucleus (the smallest set of most likely tokens
    whose probability reaches ``top_p``) set to ``-inf``; the most likely token always stays."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # a token is dropped when the tokens more likely than it already reach top_p
    drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@functools.lru_cache(maxsize=None)
def _keeps_last_logits(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def response_logits(model, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor) -> Tensor:
    """Logits ``[B, T, V]`` that predict each response token (the prediction of token t is
    read at the position before it). ``model`` is any callable HF causal LM (or a DeepSpeed
    engine wrapping one). The LM head runs on those T positions alone where the model
    allows (``logits_to_keep``): on a small model it is half the cost of the forward."""
    inputs = sequence_inputs(prompt_ids, prompt_mask, response_ids)
    response_len = response_ids.shape[1]
    if _keeps_last_logits(type(getattr(model, "module", model))):
        return model(**inputs, logits_to_keep=response_len + 1).logits[:, :-1]
    logits = model(**inputs).logits
    prompt_len = prompt_ids.shape[1]
    return logits[:, prompt_len - 1: prompt_len - 1 + response_len]


def vocab_logprobs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``log_softmax(logits / temperature)`` over the vocabulary ``[..., V]``, in float32."""
    logits = logits.float()
    return torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-prob ``[B, T]`` of ``tokens`` under ``softmax(logits / temperature)``, in float32."""
    return gather_tokens(vocab_logprobs(logits, temperature), tokens)


def gather_tokens(vocab: Tensor, tokens: Tensor) -> Tensor:
    """Each token's entry of ``vocab`` (``[..., V]`` -> ``[...]``)."""
    return vocab.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


class HFDecoder:
    """The reference path: the Hugging Face model with its own (dynamic) KV cache, one call
    per token. Works for every causal LM; on a GPU it is launch-bound (``StaticDecoder``)."""

    def __init__(self, model):
        self.model = model
        # transformers renamed ``past_key_values`` to ``cache`` (5.2x); take whichever it has
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.cache = self.attention = self.next_position = None
        self.slot = 0  # the cache slot of the next token

    def new_cache(self):
        """The cache a prefill starts with; None: the model makes its own dynamic one."""
        return None

    def cache_inputs(self, count: int) -> dict:
        """What the forward over the next ``count`` tokens is told of the cache."""
        return {} if self.cache is None else {self.cache_arg: self.cache}

    @torch.no_grad()
    def prefill(self, prompt_ids: Tensor, prompt_mask: Tensor) -> Tensor:
        self.cache, self.slot = self.new_cache(), 0
        self.attention = prompt_mask.long()
        positions = position_ids_from_mask(self.attention)
        logits = self._forward(prompt_ids, positions)
        self.next_position = positions[:, -1:] + 1
        return logits

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        self.attention = torch.cat([self.attention, torch.ones_like(self.attention[:, :1])], dim=1)
        logits = self._forward(tokens.unsqueeze(1), self.next_position)
        self.next_position = self.next_position + 1
        return logits

    def _forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        """The last position's logits; the cache keeps the keys and values of ``ids``."""
        out = self.model(input_ids=ids, attention_mask=self.attention, position_ids=positions, use_cache=True,
                         **self.cache_inputs(ids.shape[1]))
        self.cache, self.slot = getattr(out, self.cache_arg), self.slot + ids.shape[1]
        return out.logits[:, -1, :].float()


@torch.no_grad()
def sample_responses(decoder, prompt_ids: Tensor, prompt_mask: Tensor, *, max_new_tokens: int,
                     end_token_ids: Sequence[int] | None, pad_token_id: int, temperature: float = 1.0,
                     top_p: float = 1.0, generator: torch.Generator | None = None) -> SampledResponses:
    """Sample up to ``max_new_tokens`` tokens per prompt with a KV cache.

    ``decoder`` is an ``HFDecoder``/``StaticDecoder`` (a plain HF model gets an ``HFDecoder``).
    A row stops at its first end token, any of ``end_token_ids`` (it is part of the
    response: it carries the score; None never stops, every response is ``max_new_tokens`` long);
    responses are padded to exactly ``max_new_tokens``. With the same ``generator`` seed the
    same tokens come out, so a lost shard can be generated again. Sampling runs on the
    model's device, outside any CUDA graph, with the same draws on either path.
    """
    if isinstance(decoder, torch.nn.Module):
        decoder = HFDecoder(decoder)
    batch, device = prompt_ids.shape[0], prompt_ids.device
    logits = decoder.prefill(prompt_ids, prompt_mask)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    ends = None if end_token_ids is None else torch.tensor(list(end_token_ids), dtype=torch.long, device=device)
    tokens, logprobs, valid = [], [], []
    for step in range(max_new_tokens):
        logits = logits / temperature
        probs = top_p_filter(logits, top_p).softmax(dim=-1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        token = torch.where(finished, pad_token_id, token)
        logprob = torch.log_softmax(logits, dim=-1).gather(1, token.unsqueeze(1)).squeeze(1)
        valid.append(~finished)
        tokens.append(token)
        logprobs.append(torch.where(finished, 0.0, logprob))
        if ends is not None:
            finished = finished | torch.isin(token, ends)
        if step == max_new_tokens - 1 or (ends is not None and finished.all()):
            break
        logits = decoder.decode(token)
    missing = max_new_tokens - len(tokens)
    response_ids = torch.nn.functional.pad(torch.stack(tokens, 1), (0, missing), value=pad_token_id)
    return SampledResponses(
        response_ids=response_ids,
        response_mask=torch.nn.functional.pad(torch.stack(valid, 1), (0, missing), value=False),
        logprobs=torch.nn.functional.pad(torch.stack(logprobs, 1), (0, missing), value=0.0),
        ended_with_eos=finished,
    )


def decode_responses(tokenizer, response_ids: Tensor, response_mask: Tensor) -> list[str]:
    """The response texts, without the end token and padding."""
    return [tokenizer.decode(ids[mask.bool()], skip_special_tokens=True).strip()
            for ids, mask in zip(response_ids, response_mask)]
