"""Rule-based constraint penalties, subtracted from the reward model's score.

A reward model can be gamed; a few explicit rules make the cheapest exploits cost reward.
Each rule has a name and a cost; a text pays the cost of every rule it violates.

Config (a dict, or the matching Hydra node)::

    {"banned_phrases": [{"phrase": "...", "cost": 1.0}, ...],    # case-insensitive, whole words
     "patterns":       [{"pattern": "...", "cost": 0.5, "name": "..."}, ...],  # regex, as written
     "degenerate":     {"cost": 1.0, "min_distinct_words": 3, "max_top_word_share": 0.5}}

Every key is optional. ``TWEET_CONSTRAINTS_EXAMPLE`` is the config for the embedded default.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch
from torch import Tensor

from alignray.evaluation import MAX_TOP_WORD_SHARE, MIN_DISTINCT_WORDS, is_degenerate


class Rule(Protocol):
    name: str
    cost: float

    def violated(self, text: str) -> bool: ...


@dataclass(frozen=True)
class RegexRule:
    """Violated when ``pattern`` matches anywhere in the text (Python ``re`` syntax)."""

    name: str
    pattern: re.Pattern[str]
    cost: float

    def violated(self, text: str) -> bool:
        return self.pattern.search(text) is not None


def banned_phrase_rule(phrase: str, cost: float, name: str | None = None) -> RegexRule:
    """A rule for ``phrase`` matched case-insensitively as whole words: "lie" matches
    "a LIE!" but not "believe" or "lies"; any run of whitespace matches a space."""
    words = phrase.split()
    if not words:
        raise ValueError("a banned phrase needs at least one word")
    body = r"\s+".join(re.escape(word) for word in words)
    # lookarounds rather than \b, so phrases that start or end with punctuation work too
    pattern = re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)
    return RegexRule(name or f"phrase:{' '.join(words).lower()}", pattern, cost)


@dataclass(frozen=True)
class DegenerateTextRule:
    """Violated by degenerate text as defined by ``alignray.evaluation.is_degenerate``, the
    same test the evaluation guard applies."""

    cost: float
    min_distinct_words: int = MIN_DISTINCT_WORDS
    max_top_word_share: float = MAX_TOP_WORD_SHARE
    name: str = "degenerate"

    def violated(self, text: str) -> bool:
        return is_degenerate(text, self.min_distinct_words, self.max_top_word_share)


class ConstraintPenalty:
    """Applies a set of rules to a batch of texts."""

    def __init__(self, rules: Sequence[Rule]):
        names = [rule.name for rule in rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique, repeated: {duplicates}")
        if any(rule.cost < 0 for rule in rules):
            raise ValueError("rule costs are amounts to subtract and must be >= 0")
        self.rules = list(rules)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ConstraintPenalty:
        known = {"banned_phrases", "patterns", "degenerate"}
        if unknown := set(config) - known:
            raise ValueError(f"unknown constraint keys {sorted(unknown)}; known: {sorted(known)}")
        rules: list[Rule] = [
            banned_phrase_rule(item["phrase"], float(item["cost"]), item.get("name"))
            for item in config.get("banned_phrases") or []
        ]
        rules += [
            RegexRule(item.get("name") or f"pattern:{item['pattern']}", re.compile(item["pattern"]),
                      float(item["cost"]))
            for item in config.get("patterns") or []
        ]
        if degenerate := config.get("degenerate"):
            rules.append(DegenerateTextRule(**dict(degenerate)))
        return cls(rules)

    def penalties(self, texts: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """``(costs, violations)``: ``costs`` float32 ``[len(texts)]``, the summed cost of
        the rules each text violates (>= 0, to subtract from its score); ``violations``
        maps each rule name to a bool ``[len(texts)]`` tensor."""
        violations = {
            rule.name: torch.tensor([rule.violated(text) for text in texts], dtype=torch.bool)
            for rule in self.rules
        }
        costs = torch.zeros(len(texts), dtype=torch.float32)
        for rule in self.rules:
            costs += rule.cost * violations[rule.name].float()
        return costs, violations


# The embedded default's judges are VADER's raters, whose lexicon rewards exclamation marks
# and capitals; these rules price those exploits, plus content a sentiment RM cannot judge.
TWEET_CONSTRAINTS_EXAMPLE: dict[str, Any] = {
    "banned_phrases": [
        {"phrase": "spread the rumour", "cost": 1.0},
        {"phrase": "spread the rumor", "cost": 1.0},
        {"phrase": "retweet this lie", "cost": 1.0},
        {"phrase": "miracle cure", "cost": 1.0},
    ],
    "patterns": [
        {"name": "exclamation_run", "pattern": r"!{3,}", "cost": 0.5},
        {"name": "all_caps_run", "pattern": r"\b[A-Z]{2,}(?:\W+[A-Z]{2,}){2,}\b", "cost": 0.5},
        {"name": "link", "pattern": r"https?://\S+", "cost": 0.5},
    ],
    "degenerate": {"cost": 1.0},
}
