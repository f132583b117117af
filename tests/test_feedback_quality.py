from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from alignray.feedback.aggregate import build_training_tables
from alignray.feedback.quality import annotator_quality, annotator_weights, feedback_judgments, krippendorff_alpha
from alignray.feedback.report import write_feedback_report
from alignray.feedback.schema import feedback_table, pairwise_feedback, rating_feedback, thumbs_feedback

WHEN = datetime(2025, 1, 1, tzinfo=timezone.utc)

# Krippendorff's own reliability data: 4 observers, 12 units, missing values as None.
RELIABILITY_DATA = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def test_krippendorff_alpha_matches_the_published_example():
    units, values = zip(*[(u, v) for observer in RELIABILITY_DATA for u, v in enumerate(observer) if v is not None])
    units, values = pd.Series(units), pd.Series(values, dtype=float)
    assert krippendorff_alpha(units, values, "nominal") == pytest.approx(0.743, abs=1e-3)
    assert krippendorff_alpha(units, values, "interval") == pytest.approx(0.849, abs=1e-3)
    assert krippendorff_alpha(pd.Series([0, 0, 1, 1]), pd.Series(["x", "x", "y", "y"])) == 1.0
    with pytest.raises(ValueError):
        krippendorff_alpha(units, values, "ordinal")


def labelled_feedback(n_items=60, flipper=True, groups=None, seed=0):
    """Five annotators judge the same pairs by a hidden truth with 10% noise; 'flip' inverts it."""
    rng = np.random.default_rng(seed)
    names = ["ann1", "ann2", "ann3", "ann4"] + (["flip"] if flipper else [])
    rows = []
    for item in range(n_items):
        truth = rng.random() < 0.5
        for index, name in enumerate(names):
            says_a = truth != (rng.random() < 0.1)
            if name == "flip":
                says_a = not says_a
            group = None if groups is None else groups[index]
            rows.append(pairwise_feedback(f"p{item}", f"A{item}", f"B{item}", "a" if says_a else "b", name,
                                          annotator_group=group, timestamp=WHEN))
            rows.append(thumbs_feedback(f"p{item}", f"A{item}", "up" if says_a else "down", name,
                                        annotator_group=group, timestamp=WHEN))
    return feedback_table(rows)


def test_judgments_ignore_the_a_b_position():
    table = feedback_table([pairwise_feedback("p", "x", "y", "a", "ann1", timestamp=WHEN),
                            pairwise_feedback("p", "y", "x", "b", "ann2", timestamp=WHEN)])
    preference = feedback_judgments(table)["preference"]
    assert preference["item"].nunique() == 1 and preference["label"].nunique() == 1


def test_flipper_is_flagged_adversarial_and_weighted_by_policy():
    quality = annotator_quality(labelled_feedback())
    verdicts = quality.annotators["verdict"].to_dict()
    assert verdicts == {"ann1": "ok", "ann2": "ok", "ann3": "ok", "ann4": "ok", "flip": "adversarial"}
    assert quality.flagged == ["flip"]
    assert quality.annotators.loc["flip", "preference_agreement"] < 0.3
    assert quality.annotators.loc["ann1", "preference_agreement"] > 0.8
    assert "below chance" in quality.annotators.loc["flip", "reason"]
    assert annotator_weights(quality, "exclude") == {"ann1": 1.0, "ann2": 1.0, "ann3": 1.0, "ann4": 1.0, "flip": 0.0}
    assert annotator_weights(quality, "downweight", 0.3)["flip"] == 0.3
    assert set(annotator_weights(quality, "keep").values()) == {1.0}
    with pytest.raises(ValueError):
        annotator_weights(quality, "ban")


def test_too_few_shared_items_gives_no_verdict():
    quality = annotator_quality(labelled_feedback(n_items=10))
    assert set(quality.annotators["verdict"]) == {"too_few_items"} and quality.flagged == []


def test_rating_agreement_detects_inverted_scores():
    rng = np.random.default_rng(1)
    rows = []
    for item in range(50):
        truth = rng.integers(1, 8)
        for name in ("ann1", "ann2", "ann3", "invert"):
            score = np.clip(truth + rng.integers(-1, 2), 1, 7)
            rows.append(rating_feedback("p", f"r{item}", 8 - score if name == "invert" else score, name, timestamp=WHEN))
    quality = annotator_quality(feedback_table(rows))
    assert quality.flagged == ["invert"]
    assert quality.annotators.loc["invert", "rating_agreement"] < -0.5
    assert set(quality.alpha) == {"rating", "rating_normalised"} and quality.alpha["rating"] < 0.5


def test_group_statistics_expose_a_dissenting_narrow_group(tmp_path):
    table = labelled_feedback(groups=["crowd", "crowd", "crowd", "crowd", "narrow"])
    quality = annotator_quality(table)
    groups = quality.groups
    assert groups.loc["crowd", "annotators"] == 4 and groups.loc["narrow", "share_of_rows"] == pytest.approx(0.2)
    # With two groups the comparison is mutual: each disagrees with the other's consensus.
    assert groups.loc["narrow", "preference_score_vs_other_groups"] < 0
    assert groups.loc["crowd", "alpha_preference"] > 0.5
    assert any("crowd" in w and "80%" in w for w in quality.warnings)
    assert any("narrow" in w and "does not agree" in w for w in quality.warnings)


def test_report_writes_markdown_and_figures(tmp_path):
    table = labelled_feedback()
    quality = annotator_quality(table)
    tables = build_training_tables(table, annotator_weights(quality))
    path = write_feedback_report(tmp_path, table, quality, tables)
    text = path.read_text()
    assert "Krippendorff's alpha" in text and "| flip | adversarial" in text and "rows_in: 600" in text
    assert (tmp_path / "agreement.png").stat().st_size > 1000
