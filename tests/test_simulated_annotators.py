import numpy as np
import pytest

from alignray.data.vader import NUM_RATERS, VADER_LEXICON_SCHEMA, load_vader_lexicon, tokenize, vader_raters
from alignray.feedback.aggregate import build_training_tables
from alignray.feedback.quality import annotator_quality, annotator_weights
from alignray.feedback.schema import validate_feedback
from alignray.feedback.simulated import (HELD_OUT_JUDGE_RATERS, TRAINING_RATERS, SimulatedAnnotator, annotator_id,
                                         heldout_feedback, judge_scores, leniency_group, make_annotator_pool,
                                         simulate_feedback, training_feedback)

FILLER = "the a of to and it is was on for with this that my you we they at so just".split()


def synthetic_responses(n_prompts, per_prompt, seed):
    """Short texts of filler words with about 30% lexicon words: the lexicon decides the scores."""
    rng = np.random.default_rng(seed)
    words = [w for w in load_vader_lexicon().column("word").to_pylist() if w.isalpha()]

    def text():
        return " ".join(rng.choice(words) if rng.random() < 0.3 else rng.choice(FILLER)
                        for _ in range(rng.integers(5, 12)))

    return [f"prompt {i}" for i in range(n_prompts)], [[text() for _ in range(per_prompt)] for _ in range(n_prompts)]


def test_lexicon_table_has_ten_ratings_per_word():
    lexicon = load_vader_lexicon()
    assert lexicon.schema == VADER_LEXICON_SCHEMA and lexicon.num_rows == 7520
    ratings = np.asarray(lexicon.column("ratings").to_pylist())
    assert ratings.shape == (7520, NUM_RATERS)
    # The stated mean is the mean of the ten ratings (rounded to one decimal in the file).
    assert np.abs(ratings.mean(axis=1) - lexicon.column("mean").to_numpy()).max() <= 0.1 + 1e-9


def test_scores_are_means_over_lexicon_words_never_sums():
    raters = vader_raters()
    assert tokenize("Great, GREAT day!! Don't") == ["great", "great", "day", "don't"]
    one = raters.all_scores("good")[0]  # index 0 is rater 1
    assert raters.all_scores("good good good good")[0] == one  # repetition pays nothing
    assert raters.all_scores("good, said the table")[0] == one  # non-lexicon words do not dilute
    assert raters.all_scores("the table and the chair")[3] == 0.0  # neutral when no lexicon word
    assert raters.all_scores("love")[7] == 4.0 and raters.all_scores("love")[0] == 3.0  # "love": [3, 3, 3, 3, 3, 3, 3, 4, 4, 3]


def test_held_out_judge_is_disjoint_from_training_raters():
    assert set(TRAINING_RATERS).isdisjoint(HELD_OUT_JUDGE_RATERS)
    assert set(TRAINING_RATERS) | set(HELD_OUT_JUDGE_RATERS) == set(range(1, 11))
    expected = np.mean([vader_raters().all_scores("love it")[r - 1] for r in HELD_OUT_JUDGE_RATERS])
    assert judge_scores(["love it"])[0] == pytest.approx(expected)


def test_leniency_groups_split_the_raters_by_their_mean_rating_of_the_lexicon():
    ratings = np.asarray(load_vader_lexicon().column("ratings").to_pylist(), dtype=float)
    groups = {rater: leniency_group(rater) for rater in range(1, NUM_RATERS + 1)}
    lenient = [r for r, g in groups.items() if g == "lenient"]
    strict = [r for r, g in groups.items() if g == "strict"]
    assert len(lenient) == len(strict) == NUM_RATERS // 2
    # Every lenient rater rates the lexicon more kindly on average than every strict one.
    assert min(ratings[:, r - 1].mean() for r in lenient) > max(ratings[:, r - 1].mean() for r in strict)
    with pytest.raises(ValueError, match="rater 0"):
        leniency_group(0)


def test_default_feedback_carries_each_annotators_leniency_group():
    prompts, responses = synthetic_responses(40, 3, seed=1)
    train = training_feedback(prompts, responses, train_annotators=5, bad_faith_share=0.2, annotators_per_item=None,
                              pairs_per_prompt=None, seed=0)
    heldout = heldout_feedback(prompts[:5], responses[:5], train_annotators=5, seed=1)
    raters = {annotator_id(rater): rater for rater in range(1, NUM_RATERS + 1)}
    for table in (train, heldout):
        for row in table.select(["annotator_id", "annotator_group"]).to_pylist():
            if row["annotator_id"] in raters:  # the honest ones (bad-faith ones read through a random rater)
                assert row["annotator_group"] == leniency_group(raters[row["annotator_id"]])
    assert set(heldout.column("annotator_group").to_pylist()) == {"lenient", "strict"}
    # Lenient raters give more thumbs up than strict ones on the same texts.
    quality = annotator_quality(train)
    assert quality.groups.loc["lenient", "thumbs_up_rate"] > quality.groups.loc["strict", "thumbs_up_rate"]


def test_annotator_gives_every_form_of_feedback():
    rng = np.random.default_rng(0)
    honest = SimulatedAnnotator("h", rater=1, temperature=1e-3)
    flipper = SimulatedAnnotator("f", rater=1, behaviour="flipper", temperature=1e-3)
    good, bad, plain = "what a wonderful happy day", "a horrible hateful murder", "the table"
    assert honest.pairwise("p", good, bad, rng)["winner"] == "a"
    assert flipper.pairwise("p", good, bad, rng)["winner"] == "b"
    assert honest.pairwise("p", plain, "the chair", rng)["winner"] == "tie"
    assert honest.ranking("p", [bad, good, plain], rng)["order"] == [1, 2, 0]
    assert flipper.ranking("p", [bad, good, plain], rng)["order"] == [0, 2, 1]
    assert honest.thumbs("p", good, rng)["thumb"] == "up" and honest.thumbs("p", plain, rng)["thumb"] == "down"
    assert honest.rating("p", bad, rng)["flaws"] == ["harmful"]
    assert honest.rating("p", plain, rng)["score"] == 4.0 and honest.rating("p", plain, rng)["flaws"] == ["unhelpful"]
    assert honest.rating("p", good, rng)["score"] > 4.0 > flipper.rating("p", good, rng)["score"]
    with pytest.raises(ValueError):
        SimulatedAnnotator("x", rater=11)


def test_simulated_feedback_is_valid_seeded_and_covers_every_kind():
    prompts, responses = synthetic_responses(6, 4, seed=0)
    pool = make_annotator_pool(bad_faith_share=0.2, groups=["g1", "g2"], seed=0)
    assert [a.annotator_id for a in pool] == ["rater1", "rater2", "rater3", "rater4", "rater5", "badfaith1-flipper"]
    table = simulate_feedback(pool, prompts, responses, seed=3)
    accepted, report = validate_feedback(table)
    assert report.rejected == 0
    kinds = table.column("kind").to_pylist()
    per_prompt = {"pairwise": 6, "ranking": 1, "thumbs": 4, "rating": 4}
    assert {k: kinds.count(k) for k in per_prompt} == {k: 6 * n * len(pool) for k, n in per_prompt.items()}
    assert set(table.column("annotator_group").to_pylist()) == {"g1", "g2"}
    assert simulate_feedback(pool, prompts, responses, seed=3).equals(table)
    subset = simulate_feedback(pool, prompts, responses, forms=("thumbs",), annotators_per_item=2, seed=3)
    assert subset.num_rows == 6 * 4 * 2


@pytest.mark.parametrize("raters, copies", [(range(1, 11), 4), (TRAINING_RATERS, 4)])
def test_bad_faith_annotators_are_detected(raters, copies):
    """20% bad-faith annotators (half flippers, half random clickers) among honest ones.

    Figures recorded when written, seeds 0-9 of both settings: every bad-faith annotator
    flagged (10/10 and 5/5 each time), no honest annotator flagged.
    """
    prompts, responses = synthetic_responses(150, 4, seed=0)
    pool = make_annotator_pool(raters=raters, copies_per_rater=copies, bad_faith_share=0.2, seed=0)
    bad = {a.annotator_id for a in pool if a.behaviour != "honest"}
    assert len(bad) / len(pool) == pytest.approx(0.2)
    feedback = simulate_feedback(pool, prompts, responses, annotators_per_item=8, seed=0)
    quality = annotator_quality(feedback)
    flagged = set(quality.flagged)
    assert len(flagged & bad) >= 0.9 * len(bad)
    assert len(flagged - bad) <= 1
    verdicts = quality.annotators["verdict"]
    assert all(verdicts[a] == "adversarial" for a in bad if "flipper" in a)
    # The "exclude" policy keeps every one of them out of the training pairs.
    weights = annotator_weights(quality, "exclude")
    tables = build_training_tables(feedback, weights)
    assert set(tables.pairs.column("annotator_id").to_pylist()).isdisjoint(bad)
