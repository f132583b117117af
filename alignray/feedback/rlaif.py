"""RLAIF: a causal LM judges which of two responses is better (pure torch, no Ray).

The judge reads a question that shows the prompt and two replies, labelled A and B, and
ends with "The better reply is"; its preference is read from the next-token
log-probabilities of the two answer tokens, " A" and " B" (no sampling, no parsing of
free text). With a chat template the question is a user turn and the answer prefix opens
the assistant's turn (`alignray.data.prompts.format_prompt`).

LMs prefer one position whatever the content. Each pair is therefore judged in both
orders. Writing ``m_ab = log P(A) - log P(B)`` with the replies as given and ``m_ba`` with
them swapped, a position bias ``beta`` adds to both: ``m_ab = d + beta``, ``m_ba = -d + beta``.
Half their difference, ``d = (m_ab - m_ba) / 2``, is the judge's log-odds that reply a is
better with the bias cancelled; half their sum is the bias, reported.

A model with few positions (the embedded default has 64) cannot read two long replies:
the prompt and each reply are clipped to their share of the positions, and counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from alignray.data.prompts import format_prompt
from alignray.feedback.schema import AI_JUDGE_ID, pairwise_feedback
from alignray.models.generation import position_ids_from_mask, token_logprobs
from alignray.models.modeling import position_limit

ANSWER_LABELS = ("A", "B")
ANSWER_PREFIX = "The better reply is"
# Short on purpose: the embedded default's model has 64 positions, and every token of the
# question is one the replies cannot use.
JUDGE_QUESTION = "Which reply to the tweet is better?\nTweet: {prompt}\nA: {reply_a}\nB: {reply_b}"


def judge_text(tokenizer, prompt: str, reply_a: str, reply_b: str) -> str:
    """The full text the judge reads; its next token is the answer."""
    question = JUDGE_QUESTION.format(prompt=prompt, reply_a=reply_a, reply_b=reply_b)
    # With a chat template the prefix opens the assistant's turn; in plain text, a new line.
    separator = "" if getattr(tokenizer, "chat_template", None) else "\n"
    return format_prompt(tokenizer, question) + separator + ANSWER_PREFIX


def answer_token_ids(tokenizer, labels: Sequence[str] = ANSWER_LABELS) -> list[int]:
    """The token that starts each answer (" A", " B"). Answers must start with different tokens."""
    ids = [tokenizer(" " + label, add_special_tokens=False).input_ids[0] for label in labels]
    if len(set(ids)) != len(ids):
        raise ValueError(f"the answers {labels} start with the same token {ids}: the judge cannot tell them apart")
    return ids


def clip_tokens(tokenizer, text: str, max_tokens: int) -> tuple[str, bool]:
    """``text`` cut to its first ``max_tokens`` tokens, and whether it was cut."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) <= max_tokens:
        return text, False
    return tokenizer.decode(ids[:max_tokens]), True


def fitted_judge_texts(tokenizer, prompt: str, reply_a: str, reply_b: str, position_limit: int | None,
                       max_reply_tokens: int) -> tuple[str, str, int]:
    """Judge texts in both orders (a first, b first) that fit ``position_limit``, and how many
    of the three texts were clipped. Each reply keeps at most ``max_reply_tokens``; when the
    positions are short the prompt keeps at most a third of the room, the replies share the rest."""
    def length(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    prompt_budget, reply_budget = length(prompt), max_reply_tokens
    if position_limit is not None:
        room = position_limit - length(judge_text(tokenizer, "", "", ""))
        if room < 3:
            raise ValueError(f"the judge question alone takes {position_limit - room} of the model's "
                             f"{position_limit} positions: no room for the prompt and replies")
        prompt_budget = min(prompt_budget, room // 3)
        reply_budget = min(reply_budget, (room - prompt_budget) // 2)
    while True:
        clipped = [clip_tokens(tokenizer, text, budget)
                   for text, budget in ((prompt, prompt_budget), (reply_a, reply_budget), (reply_b, reply_budget))]
        (short_prompt, _), (short_a, _), (short_b, _) = clipped
        texts = (judge_text(tokenizer, short_prompt, short_a, short_b),
                 judge_text(tokenizer, short_prompt, short_b, short_a))
        # Tokens can merge across the joins, so the parts' lengths only estimate the whole.
        if position_limit is None or max(map(length, texts)) <= position_limit or reply_budget == 0:
            return texts[0], texts[1], sum(cut for _, cut in clipped)
        reply_budget -= 1


def answer_margins_from_logits(next_token_logits: torch.Tensor, answer_ids: Sequence[int]) -> torch.Tensor:
    """``log P(first answer) - log P(second answer)`` per row of ``[B, V]`` next-token logits."""
    batch = next_token_logits.shape[0]
    tokens = torch.tensor(list(answer_ids), device=next_token_logits.device).expand(batch, 2)
    logprobs = token_logprobs(next_token_logits.unsqueeze(1).expand(-1, 2, -1), tokens)
    return logprobs[:, 0] - logprobs[:, 1]


@torch.no_grad()
def answer_margins(model, tokenizer, texts: Sequence[str], answer_ids: Sequence[int], batch_size: int) -> np.ndarray:
    """Answer margins of the judge texts, read at each text's last token (left padding)."""
    device = next(model.parameters()).device
    margins = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
        logits = model(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask,
                       position_ids=position_ids_from_mask(encoded.attention_mask)).logits[:, -1, :]
        margins.append(answer_margins_from_logits(logits, answer_ids).cpu())
    return torch.cat(margins).numpy() if margins else np.zeros(0)


@dataclass
class SwapAveraged:
    preference_a: np.ndarray  # P(reply a is better), position bias cancelled
    position_bias: np.ndarray  # log-odds the judge adds to whichever reply is shown first


def swap_averaged(margin_ab: np.ndarray, margin_ba: np.ndarray) -> SwapAveraged:
    """Combine the margins of both orders (see the module docstring)."""
    margin_ab, margin_ba = np.asarray(margin_ab, float), np.asarray(margin_ba, float)
    log_odds_a = (margin_ab - margin_ba) / 2
    return SwapAveraged(1.0 / (1.0 + np.exp(-log_odds_a)), (margin_ab + margin_ba) / 2)


def judge_pairs(model, tokenizer, prompts: Sequence[str], replies_a: Sequence[str], replies_b: Sequence[str],
                batch_size: int = 16, max_reply_tokens: int = 64) -> dict[str, np.ndarray]:
    """P(a better), position bias and count of clipped texts per pair, both orders judged."""
    limit = position_limit(model)
    fitted = [fitted_judge_texts(tokenizer, p, a, b, limit, max_reply_tokens)
              for p, a, b in zip(prompts, replies_a, replies_b, strict=True)]
    answer_ids = answer_token_ids(tokenizer)
    margins = answer_margins(model, tokenizer, [t for ab, ba, _ in fitted for t in (ab, ba)], answer_ids, batch_size)
    verdicts = swap_averaged(margins[0::2], margins[1::2])
    return {"preference_a": verdicts.preference_a, "position_bias": verdicts.position_bias,
            "clipped_texts": np.array([clipped for _, _, clipped in fitted], dtype=np.int64)}


def ai_feedback_rows(prompts: Sequence[str], replies_a: Sequence[str], replies_b: Sequence[str],
                     preference_a: Sequence[float], annotator_id: str = AI_JUDGE_ID) -> list[dict]:
    """Pairwise feedback rows (source ``ai``): the more probable winner, with strength
    ``|2p - 1|`` (0: the judge is indifferent, 1: certain); exactly 0.5 is a tie."""
    rows = []
    for prompt, a, b, p in zip(prompts, replies_a, replies_b, preference_a, strict=True):
        winner = "a" if p > 0.5 else "b" if p < 0.5 else "tie"
        rows.append(pairwise_feedback(prompt, a, b, winner, annotator_id, strength=float(abs(2 * p - 1)), source="ai"))
    return rows
