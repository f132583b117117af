"""What a judge answered to one question, and how an answer is read.

A question offers labels ("A"/"B" for a pair, the scale's digits for a rating). An answer is
``judged`` (a probability per label: from the answer token's log-probs when the judge gives
them, else one-hot from the parsed reply), ``unparsed`` (the reply names no label, or names
several without starting with one: never a guess) or ``failed`` (no reply: refused, throttled,
timed out, garbage; ``reason`` says which). A pair is judged in both orders and combined with
the position bias cancelled (alignray.feedback.rlaif.swap_averaged); it is judged only when both
orders are.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from alignray.feedback.rlaif import swap_averaged

JUDGED, UNPARSED, FAILED = "judged", "unparsed", "failed"
# A parsed verdict is certain; its log-odds are clipped so that the swap can average two of them.
MAX_LOG_ODDS = 12.0
LEAD = re.compile(r"^[\s\W]*(?:(?:the\s+)?(?:better\s+)?(?:reply|answer|rating)(?:\s+is)?\s*[:\-]?\s*)?", re.I)


@dataclass
class Answer:
    status: str
    probs: list[float] | None = None  # one per label, summing to 1 (judged only)
    flaws: list[str] = field(default_factory=list)
    reason: str = ""  # failed: why; unparsed: the start of the reply
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _token_of(text: str, labels: Sequence[str]) -> str | None:
    text = text.strip()
    return text if text in labels else None


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label a reply names: the one it starts with (after "The better reply is", "Answer:"
    and the like), else the only label it names anywhere; None otherwise."""
    rest = LEAD.sub("", text or "", count=1)
    for label in labels:
        if re.match(rf"{re.escape(label)}\b", rest):
            return label
    named = {label for label in labels if re.search(rf"(?<![\w]){re.escape(label)}\b", text or "")}
    return named.pop() if len(named) == 1 else None


def logprob_choice(logprobs: dict | None, labels: Sequence[str]) -> list[float] | None:
    """P(label) from an OpenAI ``choices[0].logprobs`` object: at the first generated token that
    is a label, its ``top_logprobs`` renormalised over the labels (a label absent from them gets
    nothing); None when no token is a label or no log-probs came back."""
    for position in (logprobs or {}).get("content") or []:
        if _token_of(str(position.get("token", "")), labels) is None:
            continue
        mass = dict.fromkeys(labels, 0.0)
        for top in position.get("top_logprobs") or [position]:
            label = _token_of(str(top.get("token", "")), labels)
            if label is not None and isinstance(top.get("logprob"), (int, float)):
                mass[label] += math.exp(top["logprob"])
        total = sum(mass.values())
        return [mass[label] / total for label in labels] if total > 0 else None
    return None


def read_choice(text: str, logprobs: dict | None, labels: Sequence[str],
                flaw_vocabulary: Sequence[str] = ()) -> Answer:
    """The answer in a reply: log-probs first, else the parsed label; flaws named in the text."""
    probs = logprob_choice(logprobs, labels)
    if probs is None:
        label = parse_label(text, labels)
        if label is None:
            return Answer(UNPARSED, reason=(text or "")[:80])
        probs = [float(label == other) for other in labels]
    lowered = (text or "").lower()
    flaws = [flaw for flaw in flaw_vocabulary if re.search(rf"\b{re.escape(flaw)}\b", lowered)]
    return Answer(JUDGED, probs=probs, flaws=flaws)


def pair_verdict(first: Answer, swapped: Answer) -> dict:
    """One pair from its two orders: P(reply a better) with the position bias cancelled, or the
    status and reason of the order that was not judged."""
    for answer in (first, swapped):
        if answer.status != JUDGED:
            return {"status": answer.status, "reason": answer.reason}

    def log_odds(answer: Answer) -> float:
        p = min(max(answer.probs[0], math.exp(-MAX_LOG_ODDS)), 1 - math.exp(-MAX_LOG_ODDS))
        return math.log(p / (1 - p))

    combined = swap_averaged(np.array([log_odds(first)]), np.array([log_odds(swapped)]))
    return {"status": JUDGED, "preference_a": float(combined.preference_a[0]),
            "position_bias": float(combined.position_bias[0]),
            "first_chosen": [first.probs[0] > 0.5, swapped.probs[0] > 0.5]}


def expected_rating(answer: Answer, labels: Sequence[str]) -> float:
    """The rating's expectation over the scale's digits (judged answers only)."""
    return float(sum(p * int(label) for p, label in zip(answer.probs, labels)))


def margin_answer(margin: float) -> Answer:
    """A local judge's answer from its margin ``log P(A) - log P(B)``."""
    p_first = 1.0 / (1.0 + math.exp(-float(margin)))
    return Answer(JUDGED, probs=[p_first, 1.0 - p_first])
