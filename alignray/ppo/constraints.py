"""Rule-based constraint penalties, subtracted from the reward model's score.

A reward model can be gamed; a few explicit rules make the cheapest exploits cost reward.
Each rule has a name and a cost; a text pays the cost of every rule it violates.

A rule set is a YAML file (or the same dict)::

    banned_phrases: [{phrase: "...", cost: 1.0}, ...]          # case-insensitive, whole words
    patterns:       [{pattern: "...", cost: 0.5, name: "..."}]  # regex, as written
    length:         {min_words: 2, max_words: 300, cost: 1.0}   # word count outside the bounds
    repetition:     {ngram: 3, max_repeats: 3, cost: 1.0}       # a word n-gram repeated more often
    degenerate:     {cost: 1.0, min_distinct_words: 3, max_top_word_share: 0.5}

Every key is optional; any other key is an error. ``ppo.reward.constraints`` names a rule set
in ``conf/constraints/`` (``tweets``, the embedded default's, is ``TWEET_CONSTRAINTS_EXAMPLE``;
``chat``), or is a path to a YAML file, or ``none``; anything else is an error.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
import yaml
from torch import Tensor

from alignray import CONF_DIR
from alignray.evaluation.compare import MAX_TOP_WORD_SHARE, MIN_DISTINCT_WORDS, is_degenerate, words

RULE_SETS_DIR = CONF_DIR / "constraints"  # inside the package in a wheel
NO_RULES = "none"


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
    """Violated by degenerate text as defined by ``alignray.evaluation.compare.is_degenerate``, the
    same test the evaluation guard applies."""

    cost: float
    min_distinct_words: int = MIN_DISTINCT_WORDS
    max_top_word_share: float = MAX_TOP_WORD_SHARE
    name: str = "degenerate"

    def violated(self, text: str) -> bool:
        return is_degenerate(text, self.min_distinct_words, self.max_top_word_share)


@dataclass(frozen=True)
class LengthRule:
    """Violated by a text of fewer than ``min_words`` or more than ``max_words`` words."""

    cost: float
    min_words: int | None = None
    max_words: int | None = None
    name: str = "length"

    def violated(self, text: str) -> bool:
        count = len(words(text))
        return (self.min_words is not None and count < self.min_words) or (
            self.max_words is not None and count > self.max_words)


@dataclass(frozen=True)
class RepetitionRule:
    """Violated when one run of ``ngram`` words occurs more than ``max_repeats`` times."""

    cost: float
    ngram: int = 3
    max_repeats: int = 3
    name: str = "repetition"

    def violated(self, text: str) -> bool:
        tokens = words(text)
        grams = Counter(tuple(tokens[i:i + self.ngram]) for i in range(len(tokens) - self.ngram + 1))
        return bool(grams) and max(grams.values()) > self.max_repeats


def load_rule_set(spec: str) -> dict[str, Any]:
    """The rule set ``spec`` names: ``none`` (no rules), a file of ``conf/constraints/`` by its
    stem, or a path to a YAML file."""
    if spec == NO_RULES:
        return {}
    path = RULE_SETS_DIR / f"{spec}.yaml" if "/" not in spec and not spec.endswith((".yaml", ".yml")) else Path(spec)
    if not path.is_file():
        known = sorted(p.stem for p in RULE_SETS_DIR.glob("*.yaml"))
        raise ValueError(f"constraint rule set {spec!r} not found ({path}); use {NO_RULES!r}, one of {known}, "
                         "or a path to a YAML file")
    rules = yaml.safe_load(path.read_text()) or {}
    if not isinstance(rules, dict):
        raise ValueError(f"{path}: a rule set is a mapping of rule kinds, not {type(rules).__name__}")
    return rules


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
    def from_rule_set(cls, spec: str) -> ConstraintPenalty:
        """The rules ``ppo.reward.constraints`` names (:func:`load_rule_set`)."""
        return cls.from_config(load_rule_set(spec))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ConstraintPenalty:
        known = {"banned_phrases", "patterns", "degenerate", "length", "repetition"}
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
        for key, rule_class in (("length", LengthRule), ("repetition", RepetitionRule),
                                ("degenerate", DegenerateTextRule)):
            if settings := config.get(key):
                rules.append(rule_class(**dict(settings)))
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


TWEET_CONSTRAINTS_EXAMPLE: dict[str, Any] = load_rule_set("tweets")  # conf/constraints/tweets.yaml
