"""The pure parts of the feedback phase: held-out pairs, the AI judge's share of the
feedback and its agreement with the held-out raters, reading a folder of feedback files."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from alignray.feedback.ai_share import (items_for_ai, judge_agreement, pairwise_items, replace_share_by_ai)
from alignray.feedback.heldout import heldout_pairs, pair_items
from alignray.feedback.schema import (AI_JUDGE_ID, FEEDBACK_SCHEMA, feedback_table, pairwise_feedback, rating_feedback,
                                      read_feedback_files)
from alignray.feedback.simulated import heldout_feedback, training_feedback


def _pairwise(prompt, a, b, winner, annotator):
    return pairwise_feedback(prompt, a, b, winner, annotator, source="simulated")


def test_pairwise_items_are_distinct_in_first_seen_order_and_ignore_other_kinds():
    feedback = feedback_table([_pairwise("p", "x", "y", "a", "r1"), rating_feedback("p", "x", 5.0, "r1"),
                               _pairwise("q", "u", "v", "b", "r1"), _pairwise("p", "x", "y", "b", "r2")])
    assert pairwise_items(feedback) == [("p", "x", "y"), ("q", "u", "v")]


def test_items_for_ai_draw_the_share_in_order_and_refuse_a_share_outside_0_1():
    items = [(f"p{i}", "a", "b") for i in range(10)]
    chosen = items_for_ai(items, 0.3, seed=1)
    assert len(chosen) == 3 and chosen == sorted(chosen, key=items.index)
    assert items_for_ai(items, 0.3, seed=1) == chosen and items_for_ai(items, 1.0, seed=1) == items
    for share in (0.0, 1.5):
        with pytest.raises(ValueError, match="ai_share"):
            items_for_ai(items, share, seed=1)


def test_replacing_drops_every_annotators_rows_on_an_item_and_adds_one_ai_row():
    feedback = feedback_table([_pairwise("p", "x", "y", "a", "r1"), _pairwise("p", "x", "y", "b", "r2"),
                               _pairwise("q", "u", "v", "b", "r1"), rating_feedback("p", "x", 5.0, "r1")])
    mixed = replace_share_by_ai(feedback, {("p", "x", "y"): 0.2}, [("p", "x", "y")]).to_pylist()
    assert len(mixed) == 3  # 4 rows in, 2 replaced by 1
    ai = [row for row in mixed if row["source"] == "ai"]
    assert len(ai) == 1 and ai[0]["annotator_id"] == AI_JUDGE_ID and ai[0]["winner"] == "b"
    assert {(row["prompt"], row["kind"]) for row in mixed if row["source"] != "ai"} == {("q", "pairwise"),
                                                                                       ("p", "rating")}


def test_heldout_pairs_give_each_panels_vote_share_for_the_first_response_in_sorted_order():
    # "y" is shown first, but "x" sorts first: shares are for "x"
    rows = [_pairwise("p", "y", "x", "b", "h1"), _pairwise("p", "y", "x", "b", "h2"), _pairwise("p", "y", "x", "a", "h3"),
            _pairwise("p", "y", "x", "a", "t1"), _pairwise("p", "y", "x", "tie", "t2")]
    pairs = heldout_pairs(feedback_table(rows), ["t1", "t2"], ["h1", "h2", "h3"])
    assert pair_items(pairs) == [("p", "x", "y")]
    assert pairs["heldout_preference"].tolist() == pytest.approx([2 / 3])
    assert pairs["train_preference"].tolist() == pytest.approx([0.25])
    assert pairs[["heldout_votes", "train_votes"]].values.tolist() == [[3, 2]]


def test_judge_agreement_counts_items_with_a_heldout_majority_against_the_judge_and_the_training_raters():
    rows = []
    for prompt, held_winners, train_winners in [("p1", "aab", "aa"), ("p2", "bba", "ab"), ("p3", "ab", "bb")]:
        rows += [_pairwise(prompt, "x", "y", w, f"h{i}") for i, w in enumerate(held_winners)]
        rows += [_pairwise(prompt, "x", "y", w, f"t{i}") for i, w in enumerate(train_winners)]
    pairs = heldout_pairs(feedback_table(rows), ["t0", "t1"], ["h0", "h1", "h2"])
    # p3 has no held-out majority (one vote each way); the judge is right on p1, wrong on p2
    judged = {("p1", "x", "y"): 0.9, ("p2", "x", "y"): 0.8, ("p3", "x", "y"): 0.1}
    agreement = judge_agreement(pairs, judged)
    assert (agreement["items"], agreement["items_without_majority"]) == (2, 1)
    assert agreement["agreement_with_heldout_raters"] == pytest.approx(0.5)
    # training raters: right on p1 (2-0 for x), split on p2 (counts half)
    assert agreement["training_raters_agreement_with_heldout_raters"] == pytest.approx(0.75)


def test_simulated_heldout_feedback_is_pairwise_from_training_and_heldout_raters():
    prompts, responses = ["so happy", "so sad"], [["love it", "hate it", "ok"], ["great day", "awful day", "meh"]]
    heldout = heldout_feedback(prompts, responses, train_annotators=2, seed=0)
    assert set(heldout.column("kind").to_pylist()) == {"pairwise"}
    assert set(heldout.column("annotator_id").to_pylist()) == {f"rater{r}" for r in (1, 2, 6, 7, 8, 9, 10)}
    assert heldout.num_rows == 2 * 3 * 7  # three pairs per prompt, seven raters
    with pytest.raises(ValueError, match="train_annotators must be in 1..5"):
        training_feedback(prompts, responses, train_annotators=6, bad_faith_share=0.0, annotators_per_item=None,
                          pairs_per_prompt=None, seed=0)


def test_reading_a_folder_reads_every_parquet_file_and_reports_each(tmp_path):
    first = feedback_table([_pairwise("p", "x", "y", "a", "r1")])
    second = feedback_table([_pairwise("q", "u", "v", "b", "r2"), _pairwise("q", "u", "v", "a", "r3")])
    pq.write_table(first, tmp_path / "a.parquet")
    pq.write_table(second, tmp_path / "b.parquet")
    table, reports = read_feedback_files(str(tmp_path))
    assert table.schema.names == FEEDBACK_SCHEMA.names and table.num_rows == 3
    assert [(r.rows_in, r.accepted) for r in reports] == [(1, 1), (2, 2)]
    with pytest.raises(ValueError, match="feedback.path"):
        read_feedback_files("")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no parquet files"):
        read_feedback_files(str(tmp_path / "empty"))
