"""RLAIF: a causal LM judges which of two responses is better (pure torch, no Ray).

The judge reads its rubric's question (alignray/judges/rubric.py; the default asks which reply
is more positive) showing the prompt and two replies, labelled A and B, and
then the rubric's answer prefix ("The better reply is"); its preference is read from the
next-token log-probabilities of the two answer tokens, " A" and " B" (no sampling, no parsing of
free text). A rating is read the same way, over the scale's digits.
With a chat template the question is a user turn and the answer prefix opens
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
from alignray.judges.rubric import PAIR_LABELS, Rubric, load_rubric
from alignray.models.modeling import position_limit

ANSWER_LABELS = PAIR_LABELS
# The default rubric's question is short on purpose: the embedded default's model has 64
# positions, and every token of the question is one the replies cannot use.
DEFAULT_RUBRIC = load_rubric("sentiment")
ANSWER_PREFIX = DEFAULT_RUBRIC.pairwise_answer


def with_answer_prefix(tokenizer, question: str, answer_prefix: str) -> str:
    """The question as the model reads it, then the answer prefix: its next token is the answer.
    With a chat template the prefix opens the assistant's turn; in plain text, a new line."""
    separator = "" if getattr(tokenizer, "chat_template", None) else "\n"
    return format_prompt(tokenizer, question) + separator + answer_prefix


def judge_text(tokenizer, prompt: str, reply_a: str, reply_b: str, rubric: Rubric = DEFAULT_RUBRIC) -> str:
    """The full text the judge reads for a pair; its next token is the answer."""
    return with_answer_prefix(tokenizer, rubric.pairwise_question(prompt, reply_a, reply_b), rubric.pairwise_answer)


def rating_text(tokenizer, prompt: str, reply: str, rubric: Rubric = DEFAULT_RUBRIC) -> str:
    return with_answer_prefix(tokenizer, rubric.rating_question(prompt, reply), rubric.rating_answer)


def answer_token_ids(tokenizer, labels: Sequence[str] = ANSWER_LABELS) -> list[int]:
    """The token that starts each answer (" A", " B"). Answers must start with different tokens."""
    ids = [tokenizer(" " + label, add_special_tokens=False).input_ids[0] for label in labels]
    if len(set(ids)) != len(ids):
        raise ValueError(f"the answers {labels} start with the same token {ids}: the judge cannot tell them apart")
    return ids


def rating_token_ids(tokenizer, labels: Sequence[str]) -> tuple[list[int], str]:
    """The digits' tokens and what goes between the answer prefix and them: " 3" where it is one
    token, else a space, then "3" (tokenizers that split digits from the space)."""
    try:
        return answer_token_ids(tokenizer, labels), ""
    except ValueError:
        ids = [tokenizer(label, add_special_tokens=False).input_ids[0] for label in labels]
        if len(set(ids)) != len(ids):
            raise
        return ids, " "


def clip_tokens(tokenizer, text: str, max_tokens: int) -> tuple[str, bool]:
    """``text`` cut to its first ``max_tokens`` tokens, and whether it was cut."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) <= max_tokens:
        return text, False
    return tokenizer.decode(ids[:max_tokens]), True


def fitted_judge_texts(tokenizer, prompt: str, reply_a: str, reply_b: str, position_limit: int | None,
                       max_reply_tokens: int, rubric: Rubric = DEFAULT_RUBRIC) -> tuple[str, str, int]:
    """Judge texts in both orders (a first, b first) that fit ``position_limit``, and how many
    of the three texts were clipped. Each reply keeps at most ``max_reply_tokens``; when the
    positions are short the prompt keeps at most a third of the room, the replies share the rest."""
    def length(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    prompt_budget, reply_budget = length(prompt), max_reply_tokens
    if position_limit is not None:
        room = position_limit - length(judge_text(tokenizer, "", "", "", rubric))
        if room < 3:
            raise ValueError(f"the judge question alone takes {position_limit - room} of the model's "
                             f"{position_limit} positions: no room for the prompt and replies")
        prompt_budget = min(prompt_budget, room // 3)
        reply_budget = min(reply_budget, (room - prompt_budget) // 2)
    while True:
        clipped = [clip_tokens(tokenizer, text, budget)
                   for text, budget in ((prompt, prompt_budget), (reply_a, reply_budget), (reply_b, reply_budget))]
        (short_prompt, _), (short_a, _), (short_b, _) = clipped
        texts = (judge_text(tokenizer, short_prompt, short_a, short_b, rubric),
                 judge_text(tokenizer, short_prompt, short_b, short_a, rubric))
        # Tokens can merge across the joins, so the parts' lengths only estimate the whole.
        if position_limit is None or max(map(length, texts)) <= position_limit or reply_budget == 0:
            return texts[0], texts[1], sum(cut for _, cut in clipped)
        reply_budget -= 1


def answer_logprobs_from_logits(next_token_logits: torch.Tensor, answer_ids: Sequence[int]) -> torch.Tensor:
    """``log P(answer)`` per row of ``[B, V]`` next-token logits and per answer: ``[B, answers]``."""
    batch, answers = next_token_logits.shape[0], len(answer_ids)
    tokens = torch.tensor(list(answer_ids), device=next_token_logits.device).expand(batch, answers)
    return token_logprobs(next_token_logits.unsqueeze(1).expand(-1, answers, -1), tokens)


def answer_margins_from_logits(next_token_logits: torch.Tensor, answer_ids: Sequence[int]) -> torch.Tensor:
    """``log P(first answer) - log P(second answer)`` per row of ``[B, V]`` next-token logits."""
    logprobs = answer_logprobs_from_logits(next_token_logits, answer_ids)
    return logprobs[:, 0] - logprobs[:, 1]


@torch.no_grad()
def answer_logprobs(model, tokenizer, texts: Sequence[str], answer_ids: Sequence[int], batch_size: int) -> np.ndarray:
    """``[texts, answers]`` log-probs of the answer tokens, read at each text's last token (left padding)."""
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
        logits = model(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask,
                       position_ids=position_ids_from_mask(encoded.attention_mask)).logits[:, -1, :]
        rows.append(answer_logprobs_from_logits(logits, answer_ids).float().cpu())
    return torch.cat(rows).numpy() if rows else np.zeros((0, len(answer_ids)))


def answer_margins(model, tokenizer, texts: Sequence[str], answer_ids: Sequence[int], batch_size: int) -> np.ndarray:
    """Answer margins of the judge texts (first answer's log-prob minus the second's)."""
    logprobs = answer_logprobs(model, tokenizer, texts, answer_ids, batch_size)
    return logprobs[:, 0] - logprobs[:, 1]


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
                batch_size: int = 16, max_reply_tokens: int = 64,
                rubric: Rubric = DEFAULT_RUBRIC) -> dict[str, np.ndarray]:
    """P(a better), position bias, the margins of both orders and the count of clipped texts per
    pair, both orders judged."""
    limit = position_limit(model)
    fitted = [fitted_judge_texts(tokenizer, p, a, b, limit, max_reply_tokens, rubric)
              for p, a, b in zip(prompts, replies_a, replies_b, strict=True)]
    answer_ids = answer_token_ids(tokenizer)
    margins = answer_margins(model, tokenizer, [t for ab, ba, _ in fitted for t in (ab, ba)], answer_ids, batch_size)
    verdicts = swap_averaged(margins[0::2], margins[1::2])
    return {"preference_a": verdicts.preference_a, "position_bias": verdicts.position_bias,
            "margin_ab": margins[0::2], "margin_ba": margins[1::2],
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


def fitted_rating_text(tokenizer, prompt: str, reply: str, position_limit: int | None, max_reply_tokens: int,
                       rubric: Rubric = DEFAULT_RUBRIC) -> str:
    """The rating text, the prompt and reply clipped as for a pair: the prompt keeps at most a
    third of the room, the reply the rest (and at most ``max_reply_tokens``)."""
    def length(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    prompt_budget, reply_budget = length(prompt), max_reply_tokens
    if position_limit is not None:
        room = position_limit - length(rating_text(tokenizer, "", "", rubric))
        if room < 2:
            raise ValueError(f"the rating question alone takes {position_limit - room} of the model's "
                             f"{position_limit} positions: no room for the prompt and reply")
        prompt_budget = min(prompt_budget, room // 3)
        reply_budget = min(reply_budget, room - prompt_budget)
    while True:
        text = rating_text(tokenizer, clip_tokens(tokenizer, prompt, prompt_budget)[0],
                           clip_tokens(tokenizer, reply, reply_budget)[0], rubric)
        if position_limit is None or length(text) <= position_limit or reply_budget == 0:
            return text
        reply_budget -= 1


def rate_replies(model, tokenizer, prompts: Sequence[str], replies: Sequence[str], batch_size: int = 16,
                 max_reply_tokens: int = 64, rubric: Rubric = DEFAULT_RUBRIC) -> np.ndarray:
    """``[replies, scale points]``: P(each digit of the rubric's scale) as the rating's next token."""
    limit = position_limit(model)
    ids, space = rating_token_ids(tokenizer, rubric.rating_labels)
    texts = [fitted_rating_text(tokenizer, p, r, None if limit is None else limit - len(space), max_reply_tokens,
                                rubric) + space for p, r in zip(prompts, replies, strict=True)]
    logprobs = answer_logprobs(model, tokenizer, texts, ids, batch_size)
    probs = np.exp(logprobs - logprobs.max(axis=1, keepdims=True)) if len(logprobs) else logprobs
    return probs / probs.sum(axis=1, keepdims=True) if len(probs) else probs
