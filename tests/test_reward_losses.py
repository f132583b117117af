"""Known answers for the reward-model losses and evaluation figures."""
import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from alignray.feedback.aggregate import PAIRS_SCHEMA, POINTWISE_SCHEMA
from alignray.feedback.schema import feedback_table, pairwise_feedback
from alignray.reward.evaluation import (accuracy_against_votes, calibration_bins, evaluate_against_panels,
                                        expected_calibration_error, panel_votes)
from alignray.reward.losses import bradley_terry_per_pair, pointwise_per_example, reward_loss_sums
from alignray.reward.training import training_examples


def test_bradley_terry_is_negative_log_sigmoid_of_the_difference():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    expected = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(0.5)) / 2
    assert bradley_terry_per_pair(chosen, rejected).mean().item() == pytest.approx(expected)


def test_margin_shifts_the_difference():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3.0])
    with_margin = bradley_terry_per_pair(chosen, rejected, margins=torch.tensor([1.0, 0.0])).mean()
    assert with_margin.item() == pytest.approx((math.log(2) + math.log(1 + math.exp(3.0))) / 2)


def test_bradley_terry_is_stable_for_large_differences():
    loss = bradley_terry_per_pair(torch.tensor([-200.0]), torch.tensor([200.0])).mean()
    assert loss.item() == pytest.approx(400.0)


def test_pointwise_loss_is_soft_label_cross_entropy():
    loss = pointwise_per_example(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.25])).mean()
    assert loss.item() == pytest.approx(math.log(2))
    assert pointwise_per_example(torch.tensor([50.0]), torch.tensor([1.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_loss_sums_weigh_pointwise_examples_and_report_accuracy_parts():
    empty = torch.zeros(0)
    pairs = (torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.0]), torch.tensor([1.0, 3.0]))
    points = (torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([2.0]))
    loss_sum, sums = reward_loss_sums(*pairs, *points, margin_scale=2.0, pointwise_weight=0.5)
    # pair 1: difference 1 - 2 * 0.5 = 0; pair 2 (weight 3): difference -1; point (weight 2): log 2
    expected = math.log(2) + 3 * math.log(1 + math.e) + 0.5 * 2 * math.log(2)
    assert loss_sum.item() == pytest.approx(expected)
    assert sums["units"] == 6.0 and sums["pair_weight"] == 4.0 and sums["pair_right"] == 1.0
    only_points, sums = reward_loss_sums(empty, empty, empty, empty, *points)
    assert only_points.item() == pytest.approx(0.5 * 2 * math.log(2)) and sums["pair_weight"] == 0.0


def _votes(winners_by_annotator):
    rows = [pairwise_feedback("p", "x", "y", winner, annotator) for annotator, winner in winners_by_annotator]
    return feedback_table(rows)


def test_panel_votes_pool_by_unordered_pair_and_count_ties_half():
    table = feedback_table([pairwise_feedback("p", "x", "y", "a", "r1"),
                            pairwise_feedback("p", "y", "x", "a", "r2"),  # y shown first and chosen
                            pairwise_feedback("p", "x", "y", "tie", "r3")])
    votes = panel_votes(table)
    assert votes.to_dict("records") == [{"prompt": "p", "response_a": "x", "response_b": "y",
                                         "wins_a": 1.5, "votes": 3}]
    assert panel_votes(table, ["r2"])["wins_a"].tolist() == [0.0]


def test_accuracy_leaves_out_even_splits_and_counts_reward_ties_half():
    figures = accuracy_against_votes(np.array([1.0, 0.0, 2.0, 5.0]), np.array([0.0, 1.0, 2.0, 5.0]),
                                     wins_a=np.array([3, 3, 3, 1]), votes=np.array([3, 4, 4, 2]))
    # item 0 right, item 1 wrong (majority a, model b), item 2 reward tie, item 3 even split
    assert figures == {"accuracy": pytest.approx(0.5), "items": 3, "items_without_majority": 1}


def test_a_calibrated_model_has_a_small_calibration_error():
    rng = np.random.default_rng(0)
    difference = rng.normal(0, 2, 4000)
    votes = np.full(4000, 20)
    wins = rng.binomial(20, 1 / (1 + np.exp(-difference)))
    calibrated = expected_calibration_error(calibration_bins(difference, np.zeros(4000), wins, votes))
    overconfident = expected_calibration_error(calibration_bins(5 * difference, np.zeros(4000), wins, votes))
    assert calibrated < 0.02 < 0.1 < overconfident


def test_evaluation_against_panels_scores_each_text_once():
    table = feedback_table([pairwise_feedback("p", "good", "bad", "a", "r1"),
                            pairwise_feedback("p", "bad", "good", "a", "r6")])
    calls = []

    def score(prompts, responses):
        calls.append(len(responses))
        return [1.0 if r == "good" else 0.0 for r in responses]

    results, tables = evaluate_against_panels(score, table, {"train": ["r1"], "judge": ["r6"], "none": ["r9"]})
    assert calls == [2]
    assert results["train"]["accuracy"] == 1.0 and results["judge"]["accuracy"] == 0.0
    assert "none" not in results and set(tables) == {"train", "judge"}


def _table_loss(examples, reward_of, pointwise_weight=0.5):
    """The loss sum and units of a whole example table, with a fixed reward per text."""
    rows = examples.to_pylist()
    pairs = [r for r in rows if r["is_pair"]]
    points = [r for r in rows if not r["is_pair"]]

    def tensor(values):
        return torch.tensor(values, dtype=torch.float64)

    loss_sum, sums = reward_loss_sums(
        tensor([reward_of[r["chosen"]] for r in pairs]), tensor([reward_of[r["rejected"]] for r in pairs]),
        tensor([r["margin"] for r in pairs]), tensor([r["weight"] for r in pairs]),
        tensor([reward_of[r["chosen"]] for r in points]), tensor([r["target"] for r in points]),
        tensor([r["weight"] for r in points]), pointwise_weight=pointwise_weight)
    return loss_sum.item(), sums["units"]


def test_merged_votes_give_the_loss_of_every_vote_in_fewer_rows_and_majority_keeps_one_pair_per_item():
    pairs = pa.Table.from_pylist(
        [{"prompt": "p", "chosen": c, "rejected": r, "weight": w, "margin": m, "kind": "pairwise",
          "source": "human", "annotator_id": a}
         for c, r, w, m, a in [("x", "y", 1.0, 0.0, "r1"), ("x", "y", 1.0, 0.0, "r2"), ("y", "x", 0.5, 0.0, "r3"),
                               ("x", "y", 0.5, 1.0, "r3"), ("y", "z", 1.0, 0.0, "r1"), ("z", "y", 1.0, 0.0, "r2")]],
        schema=PAIRS_SCHEMA)
    pointwise = pa.Table.from_pylist(
        [{"prompt": "p", "response": t, "target": v, "weight": w, "kind": "rating", "source": "human",
          "annotator_id": "r1"} for t, v, w in [("x", 1.0, 1.0), ("x", 0.25, 3.0), ("y", 0.0, 2.0)]],
        schema=POINTWISE_SCHEMA)
    reward_of = {"x": 0.7, "y": -0.4, "z": 1.9}
    each = training_examples(pairs, pointwise)
    merged = training_examples(pairs, pointwise, votes="merged", keep_margins=False)
    assert (each.num_rows, merged.num_rows) == (9, 4 + 2)
    assert _table_loss(merged, reward_of) == pytest.approx(_table_loss(each, reward_of))
    # margins kept apart: the x > y vote of margin 1 stays its own row
    assert training_examples(pairs, pointwise, votes="merged").num_rows == 7
    majority = training_examples(pairs, pointwise, votes="majority").to_pylist()
    # x > y wins 2.5 to 0.5; y vs z is an even split and is left out
    assert [(r["chosen"], r["rejected"], r["weight"]) for r in majority if r["is_pair"]] == [("x", "y", 1.0)]
    # a text's pointwise targets: one row, their weighted mean, their total weight
    assert [(r["chosen"], r["target"], r["weight"]) for r in majority if not r["is_pair"]] == [
        ("x", pytest.approx((1.0 * 1.0 + 3.0 * 0.25) / 4), 4.0), ("y", 0.0, 2.0)]
    with pytest.raises(ValueError, match="reward_model.votes"):
        training_examples(pairs, pointwise, votes="mean")
