"""Which unlabelled pairs to send to annotators next (pure: no Ray, no model code).

Two strategies over a pool of candidate pairs (two responses to one prompt):

* ``random``: ``count`` candidates drawn uniformly without replacement (seeded);
* ``active``: the ``count`` candidates the reward model is least sure about, by one of
  two measures of a pair's uncertainty, computed from the raw rewards that each member
  of a reward ensemble gives the two responses (``RewardModel.member_scores`` of
  alignray.reward.model, shape [members, texts], or any other ensemble's):

  - ``disagreement``: the members' standard deviation of ``r_a - r_b`` (they disagree on
    how much, or which way, the pair goes: uncertainty about the model);
  - ``margin``: minus ``|mean(r_a - r_b)|`` (the mean model barely prefers either
    response: the pair sits on its decision boundary). One member suffices.

Equal uncertainties are ordered at random (seeded), so a pool of ties is not read in
pool order.
"""
from __future__ import annotations

import numpy as np

STRATEGIES = ("random", "active")
UNCERTAINTY_MEASURES = ("disagreement", "margin")


def pair_uncertainty(rewards_a: np.ndarray, rewards_b: np.ndarray, measure: str = "disagreement") -> np.ndarray:
    """Uncertainty of each pair (higher: less sure) from the members' raw rewards of its
    two responses, each of shape [members, pairs]."""
    rewards_a, rewards_b = np.atleast_2d(np.asarray(rewards_a, float)), np.atleast_2d(np.asarray(rewards_b, float))
    if rewards_a.shape != rewards_b.shape:
        raise ValueError(f"rewards of the a and b responses differ in shape: {rewards_a.shape} vs {rewards_b.shape}")
    difference = rewards_a - rewards_b
    if measure == "disagreement":
        if difference.shape[0] < 2:
            raise ValueError("uncertainty 'disagreement' needs an ensemble of at least 2 members")
        return difference.std(axis=0)
    if measure == "margin":
        return -np.abs(difference.mean(axis=0))
    raise ValueError(f"uncertainty measure {measure!r} is not one of {UNCERTAINTY_MEASURES}")


def select_pairs(candidates: int, count: int, strategy: str, rng: np.random.Generator,
                 uncertainty: np.ndarray | None = None) -> np.ndarray:
    """Indices (into the ``candidates`` pool) of the next ``count`` pairs to label, at most
    the whole pool: random, or most uncertain first (``uncertainty`` per candidate)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"selection strategy {strategy!r} is not one of {STRATEGIES}")
    if count < 0:
        raise ValueError(f"count of pairs to select is negative: {count}")
    count = min(count, candidates)
    if strategy == "random":
        return rng.choice(candidates, size=count, replace=False)
    if uncertainty is None or len(uncertainty) != candidates:
        raise ValueError(f"active selection needs one uncertainty per candidate ({candidates}), got "
                         f"{None if uncertainty is None else len(uncertainty)}")
    # Most uncertain first; the random key breaks ties (np.lexsort sorts by the last key first).
    order = np.lexsort((rng.random(candidates), -np.asarray(uncertainty, float)))
    return order[:count]
