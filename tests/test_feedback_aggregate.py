from datetime import datetime, timezone

import numpy as np
import pytest

from alignray.feedback.aggregate import (PAIRS_SCHEMA, POINTWISE_SCHEMA, build_training_tables, elo_targets,
                                         normalized_ratings, pointwise_targets, preference_pairs, ranking_pairs,
                                         rating_quality_scores)
from alignray.feedback.elo import bradley_terry_fit, bradley_terry_to_elo_scale, elo_ratings
from alignray.feedback.schema import (feedback_table, pairwise_feedback, ranking_feedback, rating_feedback,
                                      thumbs_feedback)

WHEN = datetime(2025, 1, 1, tzinfo=timezone.utc)


def test_ranking_expands_into_every_ordered_pair():
    # order lists indices best first: z > x > y
    assert ranking_pairs(["x", "y", "z"], [2, 0, 1]) == [("z", "x", 1), ("z", "y", 2), ("x", "y", 1)]
    assert len(ranking_pairs(list("abcde"), [4, 3, 2, 1, 0])) == 10


def test_preference_pairs_weights_margins_and_ties():
    table = feedback_table([
        pairwise_feedback("p", "A", "B", "b", "ann1", strength=0.8, timestamp=WHEN),
        pairwise_feedback("p", "A", "B", "tie", "ann2", timestamp=WHEN),
        ranking_feedback("q", ["x", "y", "z"], [2, 0, 1], "ann1", timestamp=WHEN),
        thumbs_feedback("p", "A", "up", "ann1", timestamp=WHEN),
    ])
    pairs = preference_pairs(table)
    assert pairs.schema == PAIRS_SCHEMA
    rows = pairs.to_pylist()
    assert (rows[0]["chosen"], rows[0]["rejected"], rows[0]["weight"], rows[0]["margin"]) == ("B", "A", 1.0, 0.8)
    ties = rows[1:3]
    assert {(r["chosen"], r["rejected"]) for r in ties} == {("A", "B"), ("B", "A")}
    assert all(r["weight"] == 0.5 and r["margin"] == 0.0 for r in ties)
    ranked = [(r["chosen"], r["rejected"], r["margin"]) for r in rows[3:]]
    assert ranked == [("z", "x", 0.5), ("z", "y", 1.0), ("x", "y", 0.5)]
    assert sum(r["weight"] for r in rows[3:]) == pytest.approx(1.0)  # one ranking, one unit of weight
    excluded = preference_pairs(table, {"ann1": 0.0, "ann2": 0.5})
    assert [r["weight"] for r in excluded.to_pylist()] == [0.25, 0.25]


def test_normalisation_makes_shifted_and_scaled_annotator_agree():
    original = [1, 2, 2, 3, 1, 3, 2]  # a harsh annotator, scale 1..7
    lenient = [2 * s + 1 for s in original]  # same judgments, shifted and stretched
    other_scale = [10 * (s - 1) / 6 for s in original]  # same judgments on a 0..10 scale
    rows = [rating_feedback("p", f"r{i}", s, "harsh", scale=(1, 7), timestamp=WHEN) for i, s in enumerate(original)]
    rows += [rating_feedback("p", f"r{i}", s, "lenient", scale=(1, 7), timestamp=WHEN) for i, s in enumerate(lenient)]
    rows += [rating_feedback("p", f"r{i}", s, "decimal", scale=(0, 10), timestamp=WHEN)
             for i, s in enumerate(other_scale)]
    z = normalized_ratings(feedback_table(rows)).reshape(3, -1)
    np.testing.assert_allclose(z[1], z[0], atol=1e-12)
    np.testing.assert_allclose(z[2], z[0], atol=1e-12)
    assert abs(z[0].mean()) < 1e-12 and z[0].std() == pytest.approx(1.0)
    assert np.mean(lenient) - np.mean(original) == 3.0  # before normalisation: three points apart


def test_annotator_with_few_or_constant_ratings_uses_pooled_statistics():
    rows = [rating_feedback("p", f"r{i}", s, "many", timestamp=WHEN) for i, s in enumerate([1, 3, 5, 7, 4])]
    rows += [rating_feedback("p", "r0", 7, "once", timestamp=WHEN)]
    z = normalized_ratings(feedback_table(rows), min_ratings_per_annotator=5)
    assert np.isfinite(z).all() and z[-1] > 1.0  # a 7 is high on the pooled scale, not a neutral 0


def test_flaws_lower_the_quality_score():
    rows = [rating_feedback("p", f"r{i}", 4, "ann", flaws=flaws, timestamp=WHEN)
            for i, flaws in enumerate([[], ["unhelpful"], ["harmful"], ["harmful", "inaccurate"], [], []])]
    quality = rating_quality_scores(feedback_table(rows), min_ratings_per_annotator=1)
    assert quality[0] > quality[1] > quality[2] > quality[3]
    custom = rating_quality_scores(feedback_table(rows), {"unhelpful": 3.0, "harmful": 0.0, "inaccurate": 0.0})
    assert custom[1] < custom[3]
    with pytest.raises(ValueError, match="inaccurate"):
        rating_quality_scores(feedback_table(rows), {"harmful": 1.0, "unhelpful": 1.0})


def test_pointwise_targets_from_thumbs_and_ratings():
    rows = [thumbs_feedback("p", "good", "up", "ann1", timestamp=WHEN),
            thumbs_feedback("p", "bad", "down", "ann1", timestamp=WHEN),
            thumbs_feedback("p", "bad", "up", "troll", timestamp=WHEN)]
    rows += [rating_feedback("p", f"r{s}", s, "ann1", timestamp=WHEN) for s in (1, 4, 7)]
    table = pointwise_targets(feedback_table(rows), {"troll": 0.0})
    assert table.schema == POINTWISE_SCHEMA
    targets = table.column("target").to_pylist()
    assert targets[:2] == [1.0, 0.0] and table.num_rows == 5
    assert 0 < targets[2] < targets[3] < targets[4] < 1 and targets[3] == pytest.approx(0.5)


def synthetic_matchups(seed, n_players=8, n_matchups=3000, spacing=0.6):
    """Players 0..n-1 with true strength spacing * index; outcomes drawn from Bradley-Terry."""
    rng = np.random.default_rng(seed)
    strength = spacing * np.arange(n_players)
    i = rng.integers(0, n_players, n_matchups)
    j = (i + rng.integers(1, n_players, n_matchups)) % n_players
    i_wins = rng.random(n_matchups) < 1.0 / (1.0 + np.exp(-(strength[i] - strength[j])))
    return np.where(i_wins, i, j).tolist(), np.where(i_wins, j, i).tolist(), strength


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_elo_and_bradley_terry_recover_the_true_order(seed):
    winners, losers, strength = synthetic_matchups(seed)
    truth = list(range(len(strength)))
    elo = elo_ratings(winners, losers, passes=20, seed=seed)
    assert sorted(elo, key=elo.get) == truth
    bt = bradley_terry_fit(winners, losers)
    assert sorted(bt, key=bt.get) == truth
    np.testing.assert_allclose([bt[p] for p in truth], strength - strength.mean(), atol=0.25)
    on_elo_scale = bradley_terry_to_elo_scale(bt)
    assert np.corrcoef([elo[p] for p in truth], [on_elo_scale[p] for p in truth])[0, 1] > 0.99


def test_single_pass_elo_follows_the_matchups_in_order():
    ratings = elo_ratings(["a"], ["b"], k_factor=32, initial_rating=1000)
    assert ratings == {"a": 1016.0, "b": 984.0}


def test_bradley_terry_needs_a_strongly_connected_win_graph():
    with pytest.raises(ValueError, match="strongly connected"):
        bradley_terry_fit(["a", "a", "b"], ["b", "c", "c"])  # a never loses
    regularised = bradley_terry_fit(["a", "a", "b"], ["b", "c", "c"], l2=0.1)
    assert regularised["a"] > regularised["b"] > regularised["c"]


def test_elo_targets_and_training_tables():
    rng = np.random.default_rng(0)
    quality = {"best": 3, "good": 2, "meh": 1, "bad": 0}
    rows = []
    for _ in range(60):
        a, b = rng.choice(list(quality), 2, replace=False)
        rows.append(pairwise_feedback("p", a, b, "a" if quality[a] > quality[b] else "b", "ann1", timestamp=WHEN))
    rows.append(pairwise_feedback("q", "x", "y", "a", "ann1", timestamp=WHEN))  # too few responses for Elo
    rows.append(thumbs_feedback("p", "best", "up", "ann2", timestamp=WHEN))
    table = feedback_table(rows)
    targets = elo_targets(preference_pairs(table)).to_pylist()
    by_response = {t["response"]: t["target"] for t in targets}
    assert set(by_response) == set(quality) and {t["prompt"] for t in targets} == {"p"}
    assert by_response["best"] > by_response["good"] > by_response["meh"] > by_response["bad"]
    tables = build_training_tables(table, {"ann2": 0.0})
    assert tables.counts["rows_in"] == 62 and tables.counts["rows_excluded_by_annotator_weight"] == 1
    assert tables.counts["pairs"] == 61 and tables.pairs.num_rows == 61
    assert tables.pointwise.column("kind").to_pylist() == ["elo"] * 4
