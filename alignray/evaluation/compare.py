"""Evaluation of a policy against a reference, and guards against reward hacking.

A high win-rate alone proves little: the project's prototype reached > 0.9 with every
judge by collapsing to "the best." or "best best best". So a win-rate is reported with a
bootstrap interval and next to guards that catch such collapse: degenerate outputs, length
shrinkage, KL from the reference and fluency under the SFT model.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

_WORD = re.compile(r"\w+(?:'\w+)*")

MIN_DISTINCT_WORDS = 3
MAX_TOP_WORD_SHARE = 0.5


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters, digits, inner apostrophes); punctuation dropped."""
    return _WORD.findall(text.lower())


def is_degenerate(text: str, min_distinct_words: int = MIN_DISTINCT_WORDS,
                  max_top_word_share: float = MAX_TOP_WORD_SHARE) -> bool:
    """True for empty text, fewer than ``min_distinct_words`` (3) distinct words, or one word
    making up more than ``max_top_word_share`` (50%) of all words."""
    tokens = words(text)
    if len(set(tokens)) < min_distinct_words:
        return True
    top_count = Counter(tokens).most_common(1)[0][1]
    return top_count > max_top_word_share * len(tokens)


def degenerate_share(texts: Sequence[str]) -> float:
    """Fraction of ``texts`` that are degenerate (``is_degenerate``)."""
    if not texts:
        raise ValueError("degenerate_share of no texts")
    return sum(map(is_degenerate, texts)) / len(texts)


def mean_length_ratio(texts: Sequence[str], reference_texts: Sequence[str]) -> float:
    """Mean length of ``texts`` over mean length of ``reference_texts``, in words
    (a ratio of means, so a few empty answers cannot make it infinite)."""
    reference_words = sum(len(words(t)) for t in reference_texts) / len(reference_texts)
    if reference_words == 0:
        raise ValueError("reference texts have no words")
    return sum(len(words(t)) for t in texts) / len(texts) / reference_words


def _outcomes(scores_a: Sequence[float], scores_b: Sequence[float], ties: float) -> np.ndarray:
    """Per pair: 1 where a wins, ``ties`` where equal, 0 where b wins. A pair with a NaN score
    (an answer an AI judge could not rate, alignray/judges) decides nothing and is left out."""
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two equally long non-empty score lists, got {a.shape} and {b.shape}")
    rated = ~(np.isnan(a) | np.isnan(b))
    if not rated.any():
        raise ValueError(f"none of the {a.size} pairs has both scores: the judge rated no pair")
    a, b = a[rated], b[rated]
    return np.where(a > b, 1.0, np.where(a == b, ties, 0.0))


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float], ties: float = 0.5) -> float:
    """Share of paired prompts on which a's score beats b's; a tie counts ``ties``."""
    return float(_outcomes(scores_a, scores_b, ties).mean())


def bootstrap_ci(scores_a: Sequence[float], scores_b: Sequence[float], ties: float = 0.5,
                 n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """``(win_rate, low, high)``: the win-rate and its percentile-bootstrap ``1 - alpha``
    interval, resampling prompts (pairs) with replacement ``n_boot`` times."""
    outcomes = _outcomes(scores_a, scores_b, ties)
    rng = np.random.default_rng(seed)
    resampled = outcomes[rng.integers(0, outcomes.size, size=(n_boot, outcomes.size))].mean(axis=1)
    low, high = np.quantile(resampled, [alpha / 2, 1 - alpha / 2])
    return float(outcomes.mean()), float(low), float(high)


WIN_RATE = "win_rate"
# The pairs judge's figure: the share of held-out preference pairs whose chosen response the
# policy favours more than the reference does (DPO's implicit reward). Chance is 0.5, as
# for a win-rate, but it compares no answers of the two models.
IMPLICIT_REWARD_ACCURACY = "implicit_reward_accuracy"
METRIC_LABELS = {WIN_RATE: "win-rate", IMPLICIT_REWARD_ACCURACY: "implicit-reward accuracy"}


@dataclass(frozen=True)
class GuardReport:
    """The judge's figure for the policy against the reference (e.g. SFT) model, with its
    interval, and the guards beside it.

    ``figure`` is a ``metric``: the win-rate of the policy's answers over the reference's,
    or the pairs judge's implicit-reward accuracy. ``mean_kl`` is the mean per-response
    KL(policy || reference) in nats; fluency is the mean per-token log-likelihood of the
    responses under the SFT model, computed elsewhere.
    """

    figure: float
    ci_low: float
    ci_high: float
    degenerate_share_policy: float
    degenerate_share_reference: float
    length_ratio: float
    mean_kl: float
    fluency_policy: float | None = None
    fluency_reference: float | None = None
    metric: str = WIN_RATE

    @classmethod
    def measure(cls, policy_scores: Sequence[float], reference_scores: Sequence[float],
                policy_texts: Sequence[str], reference_texts: Sequence[str], mean_kl: float,
                fluency_policy: float | None = None, fluency_reference: float | None = None,
                seed: int = 0) -> GuardReport:
        """Compute every field from paired scores and texts (same prompts, same order)."""
        return cls.with_figure(bootstrap_ci(policy_scores, reference_scores, seed=seed), WIN_RATE, policy_texts,
                               reference_texts, mean_kl, fluency_policy, fluency_reference)

    @classmethod
    def with_figure(cls, figure: tuple[float, float, float], metric: str, policy_texts: Sequence[str],
                    reference_texts: Sequence[str], mean_kl: float, fluency_policy: float | None = None,
                    fluency_reference: float | None = None) -> GuardReport:
        """The guards measured on the texts beside a figure already computed: ``(value, low, high)``."""
        if metric not in METRIC_LABELS:
            raise ValueError(f"metric must be one of {sorted(METRIC_LABELS)}, not {metric!r}")
        return cls(*figure, degenerate_share(policy_texts), degenerate_share(reference_texts),
                   mean_length_ratio(policy_texts, reference_texts), mean_kl, fluency_policy, fluency_reference,
                   metric)

    def verdict(self, suspicious_win_rate: float = 0.9, max_degenerate_increase: float = 0.03,
                min_length_ratio: float = 0.7, kl_budget: float = 8.0,
                max_fluency_drop: float = 1.0) -> str:
        """One line: ``PASS`` or ``FLAG``, the win-rate with its interval, then each flag.

        Flags: a win-rate above ``suspicious_win_rate`` (too good to be true; an accuracy on
        held-out pairs is not flagged so); a degenerate
        share more than ``max_degenerate_increase`` above the reference's; a length ratio
        below ``min_length_ratio``; ``mean_kl`` above ``kl_budget`` nats; and, when both
        fluencies are given, a drop of more than ``max_fluency_drop`` nats per token.
        """
        flags = []
        if self.metric == WIN_RATE and self.figure > suspicious_win_rate:
            flags.append(f"win-rate above {suspicious_win_rate:.2f} is suspicious")
        degenerate_increase = self.degenerate_share_policy - self.degenerate_share_reference
        if degenerate_increase > max_degenerate_increase:
            flags.append(f"degenerate share {self.degenerate_share_policy:.3f} vs "
                         f"{self.degenerate_share_reference:.3f} for the reference "
                         f"(+{degenerate_increase:.3f} > +{max_degenerate_increase:.3f})")
        if self.length_ratio < min_length_ratio:
            flags.append(f"length ratio {self.length_ratio:.2f} below {min_length_ratio:.2f}")
        if self.mean_kl > kl_budget:
            flags.append(f"KL {self.mean_kl:.2f} nats over budget {kl_budget:.2f}")
        if self.fluency_policy is not None and self.fluency_reference is not None:
            drop = self.fluency_reference - self.fluency_policy
            if drop > max_fluency_drop:
                flags.append(f"fluency fell {drop:.2f} nats/token (> {max_fluency_drop:.2f})")
        head = (f"{'FLAG' if flags else 'PASS'}: {METRIC_LABELS[self.metric]} {self.figure:.2f} "
                f"[{self.ci_low:.2f}, {self.ci_high:.2f}]")
        return "; ".join([head, *flags])
