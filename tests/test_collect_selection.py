"""Selection of the next pairs to label (alignray.collect.selection)."""
from __future__ import annotations

import numpy as np
import pytest

from alignray.collect.selection import pair_uncertainty, select_pairs


def test_active_selection_picks_the_pairs_the_ensemble_disagrees_on_most():
    # Three members' raw rewards of six pairs: the members agree on pairs 0, 2, 4 and split on 1, 3, 5.
    rewards_a = np.array([[1.0, 2.0, 0.0, -1.0, 3.0, 0.5],
                          [1.0, -2.0, 0.0, 1.0, 3.0, 0.0],
                          [1.0, 0.0, 0.0, 0.0, 3.0, -0.5]])
    rewards_b = np.zeros_like(rewards_a)
    uncertainty = pair_uncertainty(rewards_a, rewards_b, "disagreement")
    np.testing.assert_allclose(uncertainty, (rewards_a - rewards_b).std(axis=0))
    picked = select_pairs(6, 3, "active", np.random.default_rng(0), uncertainty)
    assert list(picked) == [1, 3, 5]  # std 1.63, 0.82, 0.41 in that order


def test_margin_prefers_pairs_the_mean_model_barely_separates():
    rewards_a = np.array([[0.1, 3.0, -0.4, 1.0]])
    rewards_b = np.array([[0.0, 0.0, 0.0, 0.0]])
    uncertainty = pair_uncertainty(rewards_a, rewards_b, "margin")
    assert list(select_pairs(4, 2, "active", np.random.default_rng(0), uncertainty)) == [0, 2]
    with pytest.raises(ValueError, match="at least 2 members"):
        pair_uncertainty(rewards_a, rewards_b, "disagreement")


def test_random_selection_is_seeded_reproducible_and_without_repeats():
    first = select_pairs(1000, 50, "random", np.random.default_rng(7))
    assert list(first) == list(select_pairs(1000, 50, "random", np.random.default_rng(7)))
    assert list(first) != list(select_pairs(1000, 50, "random", np.random.default_rng(8)))
    assert len(set(first)) == 50 and first.min() >= 0 and first.max() < 1000
    assert sorted(select_pairs(5, 10, "random", np.random.default_rng(0))) == [0, 1, 2, 3, 4]  # at most the pool


def test_ties_are_broken_at_random_but_reproducibly():
    flat = np.zeros(100)
    picks = [tuple(select_pairs(100, 10, "active", np.random.default_rng(seed), flat)) for seed in (0, 0, 1)]
    assert picks[0] == picks[1] != picks[2] and picks[0] != tuple(range(10))


def test_bad_requests_name_what_is_wrong():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="strategy 'greedy'"):
        select_pairs(5, 2, "greedy", rng)
    with pytest.raises(ValueError, match="one uncertainty per candidate"):
        select_pairs(5, 2, "active", rng, np.zeros(4))
    with pytest.raises(ValueError, match="measure 'entropy'"):
        pair_uncertainty(np.zeros((2, 3)), np.zeros((2, 3)), "entropy")
