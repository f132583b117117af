"""The evaluation's ``pairs`` measure (pure: no Ray, no Hydra): it scores no answers. On the
user's held-out preference pairs it measures the implicit-reward accuracy of DPO's
evaluation, the share of pairs where
``log pi(chosen) - log pi_sft(chosen) > log pi(rejected) - log pi_sft(rejected)``. A pair
whose two sides are equal (the policy is the SFT model) counts one half, as a tie does in a
win-rate. It is an accuracy, not a win-rate: it says whether training moved the policy
towards what people preferred, not whether its answers are better.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from alignray.evaluation.compare import bootstrap_ci
from alignray.feedback.aggregate import preference_pairs
from alignray.feedback.schema import read_feedback
from alignray.models.generation import end_token_ids, token_logprobs, turn_end_token
from alignray.ppo import masked_sum
from alignray.sft.training import collate_token_rows, tokenize_demonstrations

BATCH = 32


@dataclass(frozen=True)
class PreferencePairs:
    prompts: list[str]
    conversations: list[list[dict] | None]
    chosen: list[str]
    rejected: list[str]


def read_preference_pairs(path: str, limit: int = 0) -> PreferencePairs:
    """Chosen and rejected responses from a pairs table (``prompt``, ``chosen``, ``rejected``)
    or a feedback file: pairwise rows without the ties (they state no preference) and
    rankings expanded into their pairs (alignray.feedback.aggregate); each pair counts once.
    A feedback file's multi-turn prompts keep their turns. ``limit`` > 0: the first pairs only."""
    names = set(pq.read_schema(path).names)
    if names & {"chosen", "rejected"}:
        missing = sorted({"prompt", "chosen", "rejected"} - names)
        if missing:
            raise ValueError(f"{path}: a pairs table needs the columns prompt, chosen, rejected; {missing} missing")
        table = pq.read_table(path, columns=["prompt", "chosen", "rejected"])
        turns = {}
    else:
        feedback, _ = read_feedback(path, strict=False)
        feedback = feedback.filter(np.asarray([w != "tie" for w in feedback.column("winner").to_pylist()]))
        table = preference_pairs(feedback)
        turns = {p: c for p, c in zip(feedback.column("prompt").to_pylist(),
                                      feedback.column("conversation").to_pylist()) if c}
    if table.num_rows == 0:
        raise ValueError(f"{path} holds no preference pairs (ties and thumbs or ratings give none)")
    table = table.slice(0, limit or None)
    prompts = table.column("prompt").to_pylist()
    return PreferencePairs(prompts, [turns.get(p) for p in prompts], table.column("chosen").to_pylist(),
                           table.column("rejected").to_pylist())


@torch.no_grad()
def response_logprobs(model, tokenizer, prompts: Sequence[str], conversations, responses: Sequence[str],
                      max_prompt_tokens: int, max_response_tokens: int) -> torch.Tensor:
    """log pi(response | prompt) per pair, summed over the response tokens and the end
    token, tokenised the way SFT trained (alignray.sft.training.tokenize_demonstrations)."""
    totals, end_token = [], turn_end_token(tokenizer, end_token_ids(model, tokenizer))
    for start in range(0, len(prompts), BATCH):
        end = start + BATCH
        rows = tokenize_demonstrations(tokenizer, prompts[start:end], responses[start:end],
                                       [None] * len(prompts[start:end]), max_prompt_tokens, max_response_tokens,
                                       list(conversations[start:end]), end_token=end_token)
        batch = collate_token_rows(rows, torch.device("cpu"))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        logprobs = token_logprobs(logits, batch["input_ids"][:, 1:])  # position t predicts token t + 1
        totals.append(masked_sum(logprobs, batch["loss_mask"][:, 1:].bool(), dim=1))
    return torch.cat(totals)


def implicit_reward_accuracy(policy, reference, tokenizer, pairs: PreferencePairs, max_prompt_tokens: int,
                             max_response_tokens: int, seed: int = 0) -> tuple[float, float, float]:
    """``(accuracy, low, high)``: the share of pairs whose chosen response has the larger
    implicit reward ``log pi - log pi_ref`` (ties count one half), with its bootstrap
    interval over pairs."""
    def implicit_rewards(responses):
        args = (tokenizer, pairs.prompts, pairs.conversations, responses, max_prompt_tokens, max_response_tokens)
        return (response_logprobs(policy, *args) - response_logprobs(reference, *args)).double().numpy()
    return bootstrap_ci(implicit_rewards(pairs.chosen), implicit_rewards(pairs.rejected), seed=seed)

