"""Ratings of players (responses, models, ...) from head-to-head matchups.

A matchup is ``(winner, loser, weight)``; a tie is two matchups of half weight, one in each
direction, which is exactly how the preference-pair table stores it.

* :func:`elo_ratings` is the sequential Elo update: cheap, online, order dependent.
* :func:`bradley_terry_fit` is the exact maximum-likelihood fit of the Bradley-Terry model
  ``P(i beats j) = sigmoid(theta_i - theta_j)``, the model Elo approximates; it is the
  reference the Elo ratings are compared with.

:func:`bradley_terry_to_elo_scale` puts both on the same scale (400 points = 10:1 odds).
"""
from __future__ import annotations

import math
from typing import Hashable, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

ELO_POINTS_PER_NAT = 400.0 / math.log(10.0)


def _index_players(winners: Sequence[Hashable], losers: Sequence[Hashable]):
    players = sorted(set(winners) | set(losers), key=str)
    index = {player: i for i, player in enumerate(players)}
    return players, np.array([index[w] for w in winners], dtype=np.int64), \
        np.array([index[l] for l in losers], dtype=np.int64)


def elo_ratings(
    winners: Sequence[Hashable],
    losers: Sequence[Hashable],
    weights: Sequence[float] | None = None,
    k_factor: float = 32.0,
    initial_rating: float = 1000.0,
    passes: int = 1,
    seed: int = 0,
) -> dict[Hashable, float]:
    """Elo ratings after playing the matchups in order (a weight scales the K-factor).

    With ``passes > 1`` the matchups are replayed in a fresh random order each pass and the
    ratings at the end of each pass are averaged: a small, fixed set of matchups then gives
    ratings that depend far less on the order in which they happened to be played.
    """
    players, win_idx, lose_idx = _index_players(winners, losers)
    weight = np.ones(len(win_idx)) if weights is None else np.asarray(weights, dtype=float)
    ratings = np.full(len(players), initial_rating)
    end_of_pass_sum = np.zeros(len(players))
    rng = np.random.default_rng(seed)
    for _ in range(passes):
        order = rng.permutation(len(win_idx)) if passes > 1 else np.arange(len(win_idx))
        for m in order:
            w, l = win_idx[m], lose_idx[m]
            expected_win = 1.0 / (1.0 + 10.0 ** ((ratings[l] - ratings[w]) / 400.0))
            delta = k_factor * weight[m] * (1.0 - expected_win)
            ratings[w] += delta
            ratings[l] -= delta
        end_of_pass_sum += ratings
    return dict(zip(players, (end_of_pass_sum / passes).tolist()))


def bradley_terry_fit(
    winners: Sequence[Hashable],
    losers: Sequence[Hashable],
    weights: Sequence[float] | None = None,
    l2: float = 0.0,
) -> dict[Hashable, float]:
    """Maximum-likelihood Bradley-Terry strengths (natural-log scale, mean zero).

    Without regularisation (``l2=0``) the maximum exists only when every player can reach
    every other through a chain of wins (the win graph is strongly connected, Zermelo 1929);
    otherwise a player who never lost would have infinite strength, so a ValueError says so.
    ``l2 > 0`` adds a Gaussian prior and always has a finite answer.
    """
    players, win_idx, lose_idx = _index_players(winners, losers)
    weight = np.ones(len(win_idx)) if weights is None else np.asarray(weights, dtype=float)
    n = len(players)
    if l2 == 0.0 and n > 1:
        played = weight > 0
        graph = coo_matrix((np.ones(played.sum()), (lose_idx[played], win_idx[played])), shape=(n, n))
        n_components, _ = connected_components(graph, directed=True, connection="strong")
        if n_components > 1:
            raise ValueError(
                "Bradley-Terry MLE does not exist: the win graph is not strongly connected "
                f"({n_components} components); pass l2 > 0 to regularise"
            )

    def negative_log_likelihood(theta):
        margin = theta[win_idx] - theta[lose_idx]
        # log(1 + exp(-m)) computed stably; its derivative is -sigmoid(-m).
        loss = np.sum(weight * np.logaddexp(0.0, -margin))
        per_matchup = -weight / (1.0 + np.exp(margin))
        grad = np.bincount(win_idx, per_matchup, n) - np.bincount(lose_idx, per_matchup, n)
        # The likelihood is blind to a common shift of all strengths; pin the mean at zero
        # so the optimum is unique.
        total = theta.sum()
        loss += 0.5 * total ** 2 + 0.5 * l2 * np.dot(theta, theta)
        grad += total + l2 * theta
        return loss, grad

    result = minimize(negative_log_likelihood, np.zeros(n), jac=True, method="L-BFGS-B",
                      options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 10_000})
    theta = result.x - result.x.mean()
    return dict(zip(players, theta.tolist()))


def bradley_terry_to_elo_scale(strengths: dict[Hashable, float], center: float = 1000.0) -> dict[Hashable, float]:
    """Bradley-Terry log-strengths on the Elo scale (400 points per factor of 10 in odds)."""
    return {player: center + ELO_POINTS_PER_NAT * theta for player, theta in strengths.items()}


def expected_score_against_average(ratings: dict[Hashable, float]) -> dict[Hashable, float]:
    """Each player's Elo-expected score against a player of the group's mean rating, in (0, 1)."""
    mean = float(np.mean(list(ratings.values())))
    return {player: 1.0 / (1.0 + 10.0 ** ((mean - r) / 400.0)) for player, r in ratings.items()}
