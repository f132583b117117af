"""Simulated annotators for the embedded default, built on the ten VADER raters.

Each annotator reads a text through one of the ten raters of ``alignray.data.vader``
(numbered 1..10) and gives every form of feedback from that score:

* pairwise: response a wins with probability ``sigmoid((s_a - s_b) / temperature)``; equal
  scores (for instance two texts with no lexicon word) are a tie;
* ranking: the scores plus Gumbel noise of the same temperature, sorted (Plackett-Luce,
  so a ranked pair follows the same law as a pairwise choice);
* thumbs: up when the score is above ``thumbs_threshold`` (0.0: neutral texts get down);
* rating: ``4 + 0.75 * score`` rounded onto the 1..7 scale; flaw "harmful" when the score is
  at most ``harmful_below``, "unhelpful" when the text has no lexicon word. The lexicon
  cannot see "inaccurate" or "off_topic", so simulated annotators never flag them.

Raters 1-5 (TRAINING_RATERS) produce the training feedback; 6-10 (HELD_OUT_JUDGE_RATERS)
never enter training and act as the independent judge in evaluation.

Annotator groups (``groups=BY_LENIENCY``, the default path): the five raters whose mean
rating of the lexicon's words is highest are "lenient", the other five "strict". Measured
on vaderSentiment 3.3.2: lenient 8, 9, 7, 6, 5 (means -0.10 to -0.16), strict 1, 4, 2, 3, 10
(-0.21 to -0.25); so the training raters 1-5 are four strict and one lenient, the
held-out judge 6-10 four lenient and one strict. Lenient raters rate negative words
less harshly (mean -1.47 vs -1.63 over the negative words), which moves thumbs, ratings
and pairs of mixed texts.

Bad-faith annotators can be injected: a "flipper" answers as if every score were negated
(preferences flipped, rankings reversed, ratings inverted), a "random" clicker answers
uniformly at random without reading.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Sequence

import numpy as np
import pyarrow as pa
from scipy.special import expit

from alignray.data.vader import NUM_RATERS, vader_raters
from alignray.feedback.schema import (KINDS, feedback_table, pairwise_feedback, ranking_feedback,
                                      rating_feedback, thumbs_feedback)

TRAINING_RATERS = (1, 2, 3, 4, 5)
HELD_OUT_JUDGE_RATERS = (6, 7, 8, 9, 10)
BEHAVIOURS = ("honest", "flipper", "random")
BAD_FAITH_BEHAVIOURS = ("flipper", "random")
RATING_SCALE = (1.0, 7.0)
LENIENCY_GROUPS = ("lenient", "strict")
BY_LENIENCY = "by_leniency"  # make_annotator_pool(groups=BY_LENIENCY): each annotator its rater's group


@lru_cache(maxsize=200_000)
def _rater_scores(text: str) -> np.ndarray:
    return vader_raters().all_scores(text)


def judge_scores(texts: Sequence[str], raters: Sequence[int] = HELD_OUT_JUDGE_RATERS) -> np.ndarray:
    """Mean score of a panel of raters for each text; by default the held-out judge."""
    columns = [r - 1 for r in raters]
    return np.array([_rater_scores(text)[columns].mean() for text in texts])


def leniency_group(rater: int) -> str:
    """"lenient" for the half of the raters whose mean rating of the lexicon is highest,
    "strict" for the other half."""
    if not 1 <= rater <= NUM_RATERS:
        raise ValueError(f"rater {rater} is not in 1..{NUM_RATERS}")
    most_lenient_first = np.argsort(-vader_raters().mean_ratings(), kind="stable")
    return "lenient" if rater - 1 in most_lenient_first[:NUM_RATERS // 2] else "strict"


@dataclass(frozen=True)
class SimulatedAnnotator:
    annotator_id: str
    rater: int  # 1..10: whose word ratings this annotator reads texts with
    behaviour: str = "honest"  # honest | flipper | random
    temperature: float = 0.25  # logistic noise of choices, in lexicon rating units
    thumbs_threshold: float = 0.0
    harmful_below: float = -2.0
    group: str | None = None

    def __post_init__(self):
        if not 1 <= self.rater <= NUM_RATERS:
            raise ValueError(f"rater {self.rater} is not in 1..{NUM_RATERS}")
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour {self.behaviour!r} is not one of {BEHAVIOURS}")

    def score(self, text: str) -> float:
        """The score this annotator acts on: the rater's mean over lexicon words, negated by a flipper."""
        score = float(_rater_scores(text)[self.rater - 1])
        return -score if self.behaviour == "flipper" else score

    def _meta(self, timestamp) -> dict:
        return {"source": "simulated", "annotator_group": self.group, "timestamp": timestamp}

    def pairwise(self, prompt: str, response_a: str, response_b: str, rng: np.random.Generator,
                 timestamp: datetime | None = None) -> dict:
        if self.behaviour == "random":
            winner = "a" if rng.random() < 0.5 else "b"
        else:
            difference = self.score(response_a) - self.score(response_b)
            if difference == 0:
                winner = "tie"
            else:
                winner = "a" if rng.random() < expit(difference / self.temperature) else "b"
        return pairwise_feedback(prompt, response_a, response_b, winner, self.annotator_id, **self._meta(timestamp))

    def ranking(self, prompt: str, responses: Sequence[str], rng: np.random.Generator,
                timestamp: datetime | None = None) -> dict:
        if self.behaviour == "random":
            order = rng.permutation(len(responses))
        else:
            noisy = np.array([self.score(r) for r in responses]) + self.temperature * rng.gumbel(size=len(responses))
            order = np.argsort(-noisy, kind="stable")
        return ranking_feedback(prompt, responses, order.tolist(), self.annotator_id, **self._meta(timestamp))

    def thumbs(self, prompt: str, response: str, rng: np.random.Generator,
               timestamp: datetime | None = None) -> dict:
        if self.behaviour == "random":
            up = rng.random() < 0.5
        else:
            up = self.score(response) > self.thumbs_threshold
        return thumbs_feedback(prompt, response, "up" if up else "down", self.annotator_id, **self._meta(timestamp))

    def rating(self, prompt: str, response: str, rng: np.random.Generator,
               timestamp: datetime | None = None) -> dict:
        low, high = RATING_SCALE
        if self.behaviour == "random":
            return rating_feedback(prompt, response, float(rng.integers(low, high + 1)), self.annotator_id,
                                   scale=RATING_SCALE, **self._meta(timestamp))
        score = self.score(response)
        flaws = []
        if score <= self.harmful_below:
            flaws.append("harmful")
        if not vader_raters().lexicon_words(response):
            flaws.append("unhelpful")
        value = float(np.clip(round(4.0 + 0.75 * score), low, high))
        return rating_feedback(prompt, response, value, self.annotator_id, scale=RATING_SCALE, flaws=flaws,
                               **self._meta(timestamp))


def annotator_id(rater: int) -> str:
    """The id of rater ``rater``'s honest annotator (one copy per rater)."""
    return f"rater{rater}"


def make_annotator_pool(
    raters: Sequence[int] = TRAINING_RATERS,
    bad_faith_share: float = 0.0,
    copies_per_rater: int = 1,
    bad_faith_behaviours: Sequence[str] = BAD_FAITH_BEHAVIOURS,
    groups: Sequence[str] | str | None = None,
    temperature: float = 0.25,
    seed: int = 0,
) -> list[SimulatedAnnotator]:
    """Honest annotators for ``raters`` plus injected bad-faith ones.

    ``bad_faith_share`` is the share of bad-faith annotators in the whole pool:
    round(share * honest / (1 - share)) of them are added, cycling through
    ``bad_faith_behaviours``, each reading texts through a randomly drawn rater. ``groups``
    are handed out round-robin; BY_LENIENCY: each annotator gets its rater's
    :func:`leniency_group`; None: no groups.
    """
    if not 0.0 <= bad_faith_share < 1.0:
        raise ValueError(f"bad_faith_share {bad_faith_share} is not in [0, 1)")
    rng = np.random.default_rng(seed)
    honest = [(annotator_id(r) if copies_per_rater == 1 else f"{annotator_id(r)}-{c + 1}", r, "honest")
              for r in raters for c in range(copies_per_rater)]
    n_bad = round(bad_faith_share * len(honest) / (1.0 - bad_faith_share))
    bad = [(f"badfaith{i + 1}-{behaviour}", int(rng.choice(raters)), behaviour)
           for i, behaviour in zip(range(n_bad), itertools.cycle(bad_faith_behaviours))]
    def group(i, rater):
        if groups == BY_LENIENCY:
            return leniency_group(rater)
        return None if not groups else groups[i % len(groups)]

    return [SimulatedAnnotator(annotator_id, rater, behaviour, temperature, group=group(i, rater))
            for i, (annotator_id, rater, behaviour) in enumerate(honest + bad)]


def simulate_feedback(
    annotators: Sequence[SimulatedAnnotator],
    prompts: Sequence[str],
    responses: Sequence[Sequence[str]],
    forms: Sequence[str] = KINDS,
    annotators_per_item: int | None = None,
    pairs_per_prompt: int | None = None,
    seed: int = 0,
    start_time: datetime = datetime(2025, 1, 1, tzinfo=timezone.utc),
) -> pa.Table:
    """Feedback of every requested form on ``responses[i]`` (the responses to ``prompts[i]``).

    Items: each pair of a prompt's responses (or ``pairs_per_prompt`` random pairs, in random
    a/b positions), one ranking of all its responses, and each response alone for thumbs
    and rating. Each item is judged by ``annotators_per_item`` annotators drawn at random
    (None: by all). Rows are time-stamped one second apart from ``start_time``.
    """
    unknown = sorted(set(forms) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown feedback forms {unknown}; known: {KINDS}")
    rng = np.random.default_rng(seed)
    rows = []
    seconds = itertools.count()

    def judges():
        if annotators_per_item is None or annotators_per_item >= len(annotators):
            return annotators
        return [annotators[i] for i in rng.choice(len(annotators), annotators_per_item, replace=False)]

    def stamp():
        return start_time + timedelta(seconds=next(seconds))

    for prompt, candidates in zip(prompts, responses, strict=True):
        candidates = list(candidates)
        if "pairwise" in forms and len(candidates) >= 2:
            pairs = list(itertools.combinations(range(len(candidates)), 2))
            if pairs_per_prompt is not None and pairs_per_prompt < len(pairs):
                pairs = [pairs[i] for i in rng.choice(len(pairs), pairs_per_prompt, replace=False)]
            for i, j in pairs:
                a, b = (candidates[i], candidates[j]) if rng.random() < 0.5 else (candidates[j], candidates[i])
                rows += [judge.pairwise(prompt, a, b, rng, stamp()) for judge in judges()]
        if "ranking" in forms and len(candidates) >= 2:
            shown = [candidates[i] for i in rng.permutation(len(candidates))]
            rows += [judge.ranking(prompt, shown, rng, stamp()) for judge in judges()]
        for response in candidates:
            if "thumbs" in forms:
                rows += [judge.thumbs(prompt, response, rng, stamp()) for judge in judges()]
            if "rating" in forms:
                rows += [judge.rating(prompt, response, rng, stamp()) for judge in judges()]
    return feedback_table(rows)


def training_feedback(prompts: Sequence[str], responses: Sequence[Sequence[str]], *, train_annotators: int,
                      bad_faith_share: float, annotators_per_item: int | None, pairs_per_prompt: int | None,
                      seed: int) -> pa.Table:
    """Every form of feedback from the first ``train_annotators`` training raters plus the
    injected bad-faith share, grouped by leniency."""
    if not 1 <= train_annotators <= len(TRAINING_RATERS):
        raise ValueError(f"feedback.train_annotators must be in 1..{len(TRAINING_RATERS)}: raters "
                         f"{HELD_OUT_JUDGE_RATERS} are the held-out judge")
    pool = make_annotator_pool(TRAINING_RATERS[:train_annotators], bad_faith_share=bad_faith_share,
                               groups=BY_LENIENCY, seed=seed)
    return simulate_feedback(pool, prompts, responses, annotators_per_item=annotators_per_item,
                             pairs_per_prompt=pairs_per_prompt, seed=seed)


def heldout_feedback(prompts: Sequence[str], responses: Sequence[Sequence[str]], *, train_annotators: int,
                     seed: int) -> pa.Table:
    """Every pair of each held-out prompt's responses, judged by every honest rater: the
    training raters (ids as in the training feedback) and the held-out ones, grouped by leniency."""
    raters = TRAINING_RATERS[:train_annotators] + HELD_OUT_JUDGE_RATERS
    return simulate_feedback(make_annotator_pool(raters, groups=BY_LENIENCY), prompts, responses,
                             forms=("pairwise",), seed=seed)
