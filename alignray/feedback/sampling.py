"""What simulated and AI feedback judge: prompts drawn from a prompts file and responses
sampled from the policy model (pure torch, no Ray)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from alignray.data.prompts import DEFAULT_MAX_CHARS, fit_prompt, read_prompts
from alignray.models.generation import (decode_responses, disable_dropout, encode_prompts, end_token_ids,
                                        sample_responses)
from alignray.models.modeling import check_position_limit, load_causal_lm, load_tokenizer


def take_prompts(path: Path, count: int, seed: int, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """``count`` distinct prompts drawn at random (seeded) from a validated prompts file."""
    table, _ = read_prompts(path, max_chars)
    distinct = sorted(set(table.column("prompt").to_pylist()))
    order = np.random.default_rng(seed).permutation(len(distinct))[:count]
    return [distinct[i] for i in order]


def prompt_conversations(path: Path, max_chars: int = DEFAULT_MAX_CHARS) -> dict[str, list[dict]]:
    """The turns of each multi-turn prompt of a prompts file, by its prompt text."""
    table, _ = read_prompts(path, max_chars)
    return {row["prompt"]: row["conversation"] for row in table.select(["prompt", "conversation"]).to_pylist()
            if row["conversation"] is not None}


def load_policy(model_path: str):
    """The policy model in eval mode without dropout, and its tokenizer."""
    tokenizer = load_tokenizer(model_path)
    # Keep a long prompt's end: with a chat template the generation prompt is there.
    tokenizer.truncation_side = "left"
    return disable_dropout(load_causal_lm(model_path)).eval(), tokenizer


def sample_policy_responses(model, tokenizer, prompts: list[str], per_prompt: int, max_prompt_tokens: int,
                            max_new_tokens: int, batch_size: int, temperature: float, seed: int,
                            label: str, conversations: dict[str, list[dict]] | None = None) -> list[list[str]]:
    """``per_prompt`` sampled responses to each prompt (batched, KV cache, seeded), with
    progress. ``conversations`` maps a multi-turn prompt to its turns (:func:`take_prompts`)."""
    check_position_limit(model, max_prompt_tokens + max_new_tokens,
                         f"data.max_prompt_tokens {max_prompt_tokens} + {max_new_tokens} response tokens")
    conversations = conversations or {}
    texts = [fit_prompt(tokenizer, prompt, conversation=conversations.get(prompt), max_tokens=max_prompt_tokens)[0]
             for prompt in prompts for _ in range(per_prompt)]
    generator = torch.Generator(device=model.device).manual_seed(seed)
    responses, started, ends = [], time.monotonic(), end_token_ids(model, tokenizer)
    for start in range(0, len(texts), batch_size):
        prompt_ids, prompt_mask = encode_prompts(tokenizer, texts[start:start + batch_size], max_prompt_tokens)
        sampled = sample_responses(model, prompt_ids.to(model.device), prompt_mask.to(model.device),
                                   max_new_tokens=max_new_tokens,
                                   end_token_ids=ends, pad_token_id=tokenizer.pad_token_id,
                                   temperature=temperature, generator=generator)
        responses += decode_responses(tokenizer, sampled.response_ids, sampled.response_mask)
        print(f"sampling {label} responses: {len(responses)}/{len(texts)} ({time.monotonic() - started:.0f} s)",
              flush=True)
    return [responses[i:i + per_prompt] for i in range(0, len(responses), per_prompt)]
