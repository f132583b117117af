"""Candidate responses for collection tasks, sampled from checkpoints (base, SFT, PPO, ...):
one response per model to each prompt (two from a single model), in a seeded random order
per prompt so that no model always sits in the same place."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

from alignray.feedback.sampling import load_policy, prompt_conversations, sample_policy_responses, take_prompts


def sample_candidates(models: Sequence[str], prompts: list[str], conversations: dict[str, list[dict]],
                      max_prompt_tokens: int, max_new_tokens: int, batch_size: int, temperature: float,
                      seed: int) -> list[list[tuple[str, str]]]:
    """Per prompt, (model, response) for every model (two samples when there is one model)."""
    per_model = 2 if len(models) == 1 else 1
    candidates: list[list[tuple[str, str]]] = [[] for _ in prompts]
    for model_path in models:
        if not (Path(model_path) / "config.json").is_file():
            raise FileNotFoundError(f"collect.candidates.models: {model_path} is not a model folder (no config.json)")
        model, tokenizer = load_policy(model_path)
        sampled = sample_policy_responses(model, tokenizer, prompts, per_model, max_prompt_tokens, max_new_tokens,
                                          batch_size, temperature, seed, Path(model_path).name, conversations)
        for mine, responses in zip(candidates, sampled):
            mine += [(str(model_path), response) for response in responses]
    return candidates


def write_candidate_tasks(cfg, out: str | Path) -> Path:
    """A tasks file (JSON lines) from ``cfg`` (CollectConfig.candidates): prompts drawn from
    its prompts file, responses sampled from its models. Each line names the models of its
    responses, in order (``candidates``), for later analysis; the server ignores it."""
    if not cfg.models or not cfg.prompts_file:
        raise ValueError("collect.action=generate needs collect.candidates.models and collect.candidates.prompts_file")
    prompts = take_prompts(Path(cfg.prompts_file), cfg.num_prompts, cfg.seed)
    conversations = prompt_conversations(Path(cfg.prompts_file))
    candidates = sample_candidates(cfg.models, prompts, conversations, cfg.max_prompt_tokens, cfg.max_new_tokens,
                                   cfg.batch_size, cfg.temperature, cfg.seed)
    rng = random.Random(cfg.seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        for prompt, pairs in zip(prompts, candidates):
            rng.shuffle(pairs)
            item = {"prompt": prompt, "conversation": conversations.get(prompt),
                    "responses": [response for _, response in pairs], "candidates": [model for model, _ in pairs]}
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    return out
