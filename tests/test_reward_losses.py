"""Known answers for the reward-model losses and evaluation figures."""
import math

import numpy as np
import pytest
import torch

from alignray.feedback.schema import feedback_table, pairwise_feedback
from alignray.reward.evaluation import (accuracy_against_votes, calibration_bins, evaluate_against_panels,
                                        expected_calibration_error, panel_votes)
from alignray.reward.losses import bradley_terry_per_pair, pointwise_per_example, reward_loss_sums


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
