"""A policy's sampled answers to held-out prompts, scored against a reference model: the KL per
response and the fluency (mean log-likelihood per token) of each model's answers. Pure torch."""
from __future__ import annotations

import torch

from alignray.config.ppo import RolloutConfig
from alignray.evaluation.compare import words
from alignray.models.generation import (decode_responses, disable_dropout, encode_prompts, end_token_ids, response_logits,
                                        sample_responses, token_logprobs)
from alignray.models.modeling import load_causal_lm
from alignray.ppo import masked_sum

BATCH = 64


@torch.no_grad()
def answer(model, tokenizer, formatted: list[str], sampling: RolloutConfig, max_prompt_tokens: int, seed: int):
    """Sampled responses of ``model`` to prompts formatted by ``format_prompt``, as PPO's
    rollout workers sample (``sampling``): token tensors, texts and their sampling log-probs."""
    generator, ends = torch.Generator().manual_seed(seed), end_token_ids(model, tokenizer)
    chunks = []
    for start in range(0, len(formatted), BATCH):
        prompt_ids, prompt_mask = encode_prompts(tokenizer, formatted[start:start + BATCH], max_prompt_tokens)
        sampled = sample_responses(model, prompt_ids, prompt_mask,
                                   max_new_tokens=sampling.max_new_tokens, end_token_ids=ends,
                                   pad_token_id=tokenizer.pad_token_id, temperature=sampling.temperature,
                                   top_p=sampling.top_p, generator=generator)
        chunks.append((prompt_ids, prompt_mask, sampled))
    return chunks


@torch.no_grad()
def logprobs_under(model, chunks, temperature: float) -> list[torch.Tensor]:
    return [token_logprobs(response_logits(model, ids, mask, s.response_ids), s.response_ids, temperature)
            for ids, mask, s in chunks]


def response_texts(tokenizer, chunks) -> list[str]:
    return [t for _, _, s in chunks for t in decode_responses(tokenizer, s.response_ids, s.response_mask)]


def kl_and_fluency(sft_model, sft_chunks, ppo_chunks, temperature: float) -> tuple[torch.Tensor, float, float]:
    """KL(PPO || SFT) per response: PPO's own sampling log-probs minus the SFT model's (k1,
    summed); and the fluency of PPO's and SFT's responses: their mean log-likelihood per
    token under the SFT model."""
    def per_token_mean(logprob_chunks, chunks):
        total = sum(masked_sum(lp, s.response_mask).item() for lp, (_, _, s) in zip(logprob_chunks, chunks))
        return total / sum(s.response_mask.sum().item() for _, _, s in chunks)

    sft_on_ppo = logprobs_under(sft_model, ppo_chunks, temperature)
    kl_per_response = torch.cat([masked_sum(s.logprobs - ref, s.response_mask, dim=1)
                                 for ref, (_, _, s) in zip(sft_on_ppo, ppo_chunks)])
    return (kl_per_response, per_token_mean(sft_on_ppo, ppo_chunks),
            per_token_mean(logprobs_under(sft_model, sft_chunks, temperature), sft_chunks))


def base_answers(base_path: str | None, tokenizer, formatted: list[str], sampling: RolloutConfig,
                 max_prompt_tokens: int, seed: int) -> list[str]:
    """The pretrained model's answers to the same prompts (it shares the SFT tokenizer)."""
    if not base_path:
        return []
    model = disable_dropout(load_causal_lm(base_path, torch.device("cpu"))).eval()
    return response_texts(tokenizer, answer(model, tokenizer, formatted, sampling, max_prompt_tokens, seed))


def mean_words(texts: list[str]) -> float:
    return sum(len(words(t)) for t in texts) / len(texts)
