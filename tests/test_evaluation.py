"""Known-answer tests for alignray.evaluation.compare."""
from __future__ import annotations

import numpy as np
import pytest

from alignray.evaluation.compare import (
    GuardReport,
    bootstrap_ci,
    degenerate_share,
    is_degenerate,
    mean_length_ratio,
    win_rate,
    words,
)

NORMAL_TWEET = "just got back from the beach with my sister, best weekend in ages"


def test_win_rate_counts_ties_as_given():
    a, b = [3.0, 1.0, 2.0, 5.0], [1.0, 2.0, 2.0, 4.0]  # win, loss, tie, win
    assert win_rate(a, b) == pytest.approx(2.5 / 4)
    assert win_rate(a, b, ties=0.0) == pytest.approx(2 / 4)
    with pytest.raises(ValueError):
        win_rate([1.0], [1.0, 2.0])


def synthetic_scores(n: int, true_rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Policy wins each pair with probability ``true_rate``; no ties."""
    wins = np.random.default_rng(seed).random(n) < true_rate
    return wins.astype(float), np.full(n, 0.5)


def test_bootstrap_ci_contains_true_rate_and_narrows_with_n():
    true_rate = 0.7
    widths = []
    for n in (100, 1600):
        rate, low, high = bootstrap_ci(*synthetic_scores(n, true_rate, seed=n), seed=0)
        assert low <= true_rate <= high
        assert low <= rate <= high
        widths.append(high - low)
    # the width shrinks like 1/sqrt(n): 4x narrower for 16x the data, within bootstrap noise
    assert widths[1] < widths[0] / 3
    assert widths[0] == pytest.approx(2 * 1.96 * np.sqrt(0.7 * 0.3 / 100), rel=0.2)


def test_bootstrap_ci_coverage_is_near_nominal():
    covered = 0
    for seed in range(40):
        _, low, high = bootstrap_ci(*synthetic_scores(200, 0.6, seed), n_boot=500, seed=seed)
        covered += low <= 0.6 <= high
    assert covered >= 34  # 95% nominal; 34/40 leaves room for chance


def test_bootstrap_ci_is_reproducible_from_its_seed():
    scores = synthetic_scores(50, 0.5, seed=3)
    assert bootstrap_ci(*scores, seed=7) == bootstrap_ci(*scores, seed=7)


@pytest.mark.parametrize("text, degenerate", [
    ("best best best best", True),
    ("", True),
    ("the best.", True),
    ("!!! ...", True),
    ("love love love you all", True),   # "love" is 3 of 5 words
    ("i love love love this song", False),  # exactly half: not more than half
    (NORMAL_TWEET, False),
])
def test_is_degenerate(text, degenerate):
    assert is_degenerate(text) is degenerate


def test_words_and_shares():
    assert words("Don't STOP, me now!") == ["don't", "stop", "me", "now"]
    assert degenerate_share(["best best best", NORMAL_TWEET, "", NORMAL_TWEET]) == 0.5
    assert mean_length_ratio(["a b", "c d e f"], ["one two three four", "five six"]) == 1.0
    assert mean_length_ratio(["the best."], [NORMAL_TWEET]) == pytest.approx(2 / 13)


def test_guard_report_passes_a_healthy_policy():
    report = GuardReport(figure=0.66, ci_low=0.61, ci_high=0.72, degenerate_share_policy=0.02,
                         degenerate_share_reference=0.01, length_ratio=0.95, mean_kl=3.0,
                         fluency_policy=-4.2, fluency_reference=-4.0)
    assert report.verdict() == "PASS: win-rate 0.66 [0.61, 0.72]"


def test_guard_report_flags_the_collapse_seen_in_the_prototype():
    policy_texts = ["the best."] * 9 + [NORMAL_TWEET]
    reference_texts = [NORMAL_TWEET] * 10
    report = GuardReport.measure([1.0] * 10, [0.0] * 10, policy_texts, reference_texts, mean_kl=160.0,
                                 fluency_policy=-7.5, fluency_reference=-4.0)
    assert report.figure == 1.0 and report.degenerate_share_policy == 0.9
    verdict = report.verdict()
    assert verdict.startswith("FLAG: win-rate 1.00 [1.00, 1.00]")
    for flag in ("win-rate above 0.90 is suspicious", "degenerate share 0.900 vs 0.000",
                 "length ratio 0.24 below 0.70",  # (9 * 2 + 13) / 10 / 13
                 "KL 160.00 nats over budget 8.00",
                 "fluency fell 3.50 nats/token"):
        assert flag in verdict
    # thresholds are arguments: loosened enough, only the win-rate remains suspicious
    loose = report.verdict(max_degenerate_increase=1.0, min_length_ratio=0.0, kl_budget=200.0,
                           max_fluency_drop=5.0)
    assert loose == "FLAG: win-rate 1.00 [1.00, 1.00]; win-rate above 0.90 is suspicious"
