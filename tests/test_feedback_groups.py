"""Annotator groups in the reward model's evaluation (alignray.feedback.groups): held-out
rows of collected feedback, each group's share of the training tables, and the accuracy of
each model against each group's majority."""
from __future__ import annotations

import pyarrow as pa

from alignray.data.tweets import is_heldout
from alignray.feedback.aggregate import build_training_tables
from alignray.feedback.schema import feedback_table, pairwise_feedback, thumbs_feedback
from alignray.feedback.groups import (cross_group_accuracy, group_training_tables, heldout_prompt_rows,
                                      rows_of_annotators)
from alignray.reward.heldout import evaluation_panels


def grouped_feedback(groups=(("ann1", "kind"), ("ann2", "kind"), ("ann3", "harsh"))) -> pa.Table:
    rows = []
    for i in range(200):
        for annotator, group in groups:
            rows += [pairwise_feedback(f"prompt {i}", "x", "y", "a" if group == "kind" else "b", annotator,
                                       annotator_group=group),
                     thumbs_feedback(f"prompt {i}", "x", "up" if group == "kind" else "down", annotator,
                                     annotator_group=group)]
    return feedback_table(rows)


def test_heldout_rows_are_those_of_the_prompts_the_reward_model_holds_out():
    feedback = grouped_feedback()
    held = heldout_prompt_rows(feedback, 0.1)
    prompts = set(held.column("prompt").to_pylist())
    assert prompts == {f"prompt {i}" for i in range(200) if is_heldout(f"prompt {i}", 0.1)}
    assert 0 < len(prompts) < 200 and held.num_rows == 6 * len(prompts)
    # Collected feedback has no held-out file: its groups become panels all the same.
    assert evaluation_panels(held, {"ann1", "ann2", "ann3"}) == {
        "training_annotators": ["ann1", "ann2", "ann3"], "group:harsh": ["ann3"], "group:kind": ["ann1", "ann2"]}


def test_each_group_trains_on_its_members_rows_only():
    feedback = grouped_feedback()
    tables = build_training_tables(feedback)
    shares = group_training_tables(feedback, tables.pairs, tables.pointwise)
    assert set(shares) == {"harsh", "kind"}
    kind_pairs, kind_pointwise = shares["kind"]
    assert set(kind_pairs.column("annotator_id").to_pylist()) == {"ann1", "ann2"}
    assert set(kind_pairs.column("chosen").to_pylist()) == {"x"}
    harsh_pairs, _ = shares["harsh"]
    assert set(harsh_pairs.column("chosen").to_pylist()) == {"y"}
    # Every annotated row lands in exactly one group; pooled Elo targets (no annotator) in none.
    annotated = [a for a in tables.pointwise.column("annotator_id").to_pylist() if a is not None]
    assert kind_pointwise.num_rows + shares["harsh"][1].num_rows == len(annotated)
    assert kind_pairs.num_rows + harsh_pairs.num_rows == tables.pairs.num_rows
    assert rows_of_annotators(tables.pairs, ["nobody"]).num_rows == 0


def test_one_group_gives_no_cross_group_models():
    feedback = grouped_feedback(groups=(("ann1", "kind"), ("ann2", None)))
    tables = build_training_tables(feedback)
    assert group_training_tables(feedback, tables.pairs, tables.pointwise) == {}


def test_accuracy_by_group_reads_every_models_group_panels():
    def result(kind, harsh):
        return {"heldout": {"training_annotators": {"accuracy": 0.7}, "group:kind": {"accuracy": kind},
                            "group:harsh": {"accuracy": harsh}}}

    evaluation = {"model": result(0.8, 0.4), "trained_on:kind": result(0.9, 0.1),
                  "trained_on:harsh": result(0.2, 0.95), "with_flagged_annotators": result(0.5, 0.5),
                  "accuracy_gained_by_excluding_flagged": {"group:kind": 0.3}}
    assert cross_group_accuracy(evaluation) == {"all": {"kind": 0.8, "harsh": 0.4}, "kind": {"kind": 0.9, "harsh": 0.1},
                                                "harsh": {"kind": 0.2, "harsh": 0.95}}
