"""Every form of feedback -> reward-model training tables (pure functions).

Two tables come out, each with a declared schema:

* ``pairs`` (PAIRS_SCHEMA): prompt, chosen, rejected, weight, margin. From pairwise rows
  (a tie becomes two half-weight pairs, one each way, whose loss is lowest when the two
  rewards are equal) and from rankings, expanded into all k(k-1)/2 pairs. The pairs of one
  ranking share one unit of weight, as in InstructGPT: they are strongly correlated, and
  a long ranking would otherwise outweigh many independent comparisons. ``margin`` is the
  stated strength of a pairwise preference (0 when not stated) or, for a ranking pair, the
  rank gap divided by k - 1, both in [0, 1].
* ``pointwise`` (POINTWISE_SCHEMA): prompt, response, target in [0, 1], weight. Thumbs give
  1 / 0. Ratings are normalised per annotator (scale -> [0, 1] -> z-score within the
  annotator, so a harsh and a lenient annotator who order responses alike give the same
  z), flaw penalties (in z units, configurable) are subtracted and the resulting quality
  score is squashed by a sigmoid. Where several responses to one prompt met head to head,
  their Elo ratings give targets too: the expected score against the prompt's average
  response.

Every weight is multiplied by the annotator's weight (see ``quality.annotator_weights``;
an annotator missing from the mapping weighs 1); rows of annotators with weight 0 are left
out and counted.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alignray.feedback.elo import elo_ratings, expected_score_against_average

DEFAULT_FLAW_WEIGHTS = {"harmful": 2.0, "inaccurate": 1.0, "unhelpful": 0.5, "off_topic": 0.5}

PAIRS_SCHEMA = pa.schema([
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("chosen", pa.string(), nullable=False),
    pa.field("rejected", pa.string(), nullable=False),
    pa.field("weight", pa.float64(), nullable=False),
    pa.field("margin", pa.float64(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),  # pairwise | ranking
    pa.field("source", pa.string(), nullable=False),
    pa.field("annotator_id", pa.string(), nullable=False),
])

POINTWISE_SCHEMA = pa.schema([
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("response", pa.string(), nullable=False),
    pa.field("target", pa.float64(), nullable=False),  # in [0, 1]
    pa.field("weight", pa.float64(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),  # thumbs | rating | elo
    pa.field("source", pa.string(), nullable=False),
    pa.field("annotator_id", pa.string()),  # null for Elo targets, pooled over annotators
])


def ranking_pairs(responses: Sequence[str], order: Sequence[int]) -> list[tuple[str, str, int]]:
    """All (chosen, rejected, rank_gap) pairs of a ranking; ``order`` lists indices best first."""
    ranked = [responses[i] for i in order]
    return [(ranked[better], ranked[worse], worse - better)
            for better in range(len(ranked)) for worse in range(better + 1, len(ranked))]


def _weight_of(annotator_weights: Mapping[str, float] | None, annotator_id: str) -> float:
    return 1.0 if annotator_weights is None else float(annotator_weights.get(annotator_id, 1.0))


def preference_pairs(feedback: pa.Table, annotator_weights: Mapping[str, float] | None = None) -> pa.Table:
    """Pairwise and ranking rows as weighted chosen/rejected pairs (see module docstring)."""
    rows = []
    for row in feedback.filter(_kind_mask(feedback, ("pairwise", "ranking"))).to_pylist():
        weight = _weight_of(annotator_weights, row["annotator_id"])
        if weight <= 0:
            continue
        common = {"prompt": row["prompt"], "kind": row["kind"], "source": row["source"],
                  "annotator_id": row["annotator_id"]}
        if row["kind"] == "pairwise":
            a, b = row["responses"]
            margin = row["strength"] or 0.0
            if row["winner"] == "tie":
                rows.append(common | {"chosen": a, "rejected": b, "weight": weight / 2, "margin": 0.0})
                rows.append(common | {"chosen": b, "rejected": a, "weight": weight / 2, "margin": 0.0})
            else:
                chosen, rejected = (a, b) if row["winner"] == "a" else (b, a)
                rows.append(common | {"chosen": chosen, "rejected": rejected, "weight": weight, "margin": margin})
        else:
            k = len(row["responses"])
            expanded = ranking_pairs(row["responses"], row["order"])
            rows += [common | {"chosen": chosen, "rejected": rejected, "weight": weight / len(expanded),
                               "margin": gap / (k - 1)}
                     for chosen, rejected, gap in expanded]
    return pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA)


def normalized_ratings(feedback: pa.Table, min_ratings_per_annotator: int = 5) -> np.ndarray:
    """Per-annotator z-scores of the rating rows of ``feedback`` (in their order).

    Scores are first mapped from each row's scale onto [0, 1]. An annotator with fewer than
    ``min_ratings_per_annotator`` ratings, or who always gives the same score, is
    normalised with the pooled mean and spread of all annotators instead of their own.
    """
    ratings = feedback.filter(_kind_mask(feedback, ("rating",)))
    score = np.asarray(ratings.column("score").to_numpy(zero_copy_only=False), dtype=float)
    low = np.asarray(ratings.column("scale_min").to_numpy(zero_copy_only=False), dtype=float)
    high = np.asarray(ratings.column("scale_max").to_numpy(zero_copy_only=False), dtype=float)
    unit = (score - low) / (high - low)
    annotators = np.asarray(ratings.column("annotator_id").to_pylist(), dtype=object)
    if len(unit) == 0:
        return unit
    pooled_mean, pooled_std = unit.mean(), unit.std()
    pooled_std = pooled_std if pooled_std > 0 else 1.0
    z = np.empty_like(unit)
    for annotator in set(annotators):
        mine = annotators == annotator
        mean, std = unit[mine].mean(), unit[mine].std()
        if mine.sum() < min_ratings_per_annotator or std == 0:
            mean, std = pooled_mean, pooled_std
        z[mine] = (unit[mine] - mean) / std
    return z


def rating_quality_scores(
    feedback: pa.Table,
    flaw_weights: Mapping[str, float] = DEFAULT_FLAW_WEIGHTS,
    min_ratings_per_annotator: int = 5,
) -> np.ndarray:
    """Quality of each rating row: normalised rating minus the weights of its flaws."""
    ratings = feedback.filter(_kind_mask(feedback, ("rating",)))
    z = normalized_ratings(ratings, min_ratings_per_annotator)
    penalties = []
    for flaws in ratings.column("flaws").to_pylist():
        unweighted = sorted(set(flaws or ()) - set(flaw_weights))
        if unweighted:
            raise ValueError(f"flaws {unweighted} have no weight in flaw_weights {dict(flaw_weights)}")
        penalties.append(sum(flaw_weights[f] for f in flaws or ()))
    return z - np.asarray(penalties, dtype=float)


def pointwise_targets(
    feedback: pa.Table,
    annotator_weights: Mapping[str, float] | None = None,
    flaw_weights: Mapping[str, float] = DEFAULT_FLAW_WEIGHTS,
    min_ratings_per_annotator: int = 5,
) -> pa.Table:
    """Thumbs (1 / 0) and ratings (sigmoid of the quality score) as pointwise targets.

    Ratings are normalised before any annotator is left out, so the pooled statistics used
    for annotators with few ratings do not depend on the weights chosen.
    """
    rows = []
    thumbs = feedback.filter(_kind_mask(feedback, ("thumbs",))).to_pylist()
    ratings = feedback.filter(_kind_mask(feedback, ("rating",)))
    quality = rating_quality_scores(ratings, flaw_weights, min_ratings_per_annotator)
    targets = [1.0 if row["thumb"] == "up" else 0.0 for row in thumbs] + (1.0 / (1.0 + np.exp(-quality))).tolist()
    for row, target in zip(thumbs + ratings.to_pylist(), targets):
        weight = _weight_of(annotator_weights, row["annotator_id"])
        if weight > 0:
            rows.append({"prompt": row["prompt"], "response": row["responses"][0], "target": target,
                         "weight": weight, "kind": row["kind"], "source": row["source"],
                         "annotator_id": row["annotator_id"]})
    return pa.Table.from_pylist(rows, schema=POINTWISE_SCHEMA)


def per_prompt_matchups(pairs: pa.Table, min_responses: int = 3):
    """Yield ``(prompt, winners, losers, weights, sources)`` of each prompt whose pairs involve
    at least ``min_responses`` distinct responses (players are the responses' texts)."""
    by_prompt = defaultdict(list)
    for row in pairs.to_pylist():
        by_prompt[row["prompt"]].append(row)
    for prompt, matchups in by_prompt.items():
        winners = [m["chosen"] for m in matchups]
        losers = [m["rejected"] for m in matchups]
        if len(set(winners) | set(losers)) >= min_responses:
            yield prompt, winners, losers, [m["weight"] for m in matchups], {m["source"] for m in matchups}


def elo_targets(pairs: pa.Table, min_responses: int = 3, elo_passes: int = 10, seed: int = 0) -> pa.Table:
    """Pointwise targets from per-prompt Elo ratings of responses that met head to head.

    Only prompts with at least ``min_responses`` distinct responses in ``pairs`` qualify:
    with two, the rating says no more than the pairs already do.
    """
    rows = []
    for prompt, winners, losers, weights, sources in per_prompt_matchups(pairs, min_responses):
        ratings = elo_ratings(winners, losers, weights, passes=elo_passes, seed=seed)
        for response, target in expected_score_against_average(ratings).items():
            rows.append({"prompt": prompt, "response": response, "target": target, "weight": 1.0,
                         "kind": "elo", "source": "+".join(sorted(sources)), "annotator_id": None})
    return pa.Table.from_pylist(rows, schema=POINTWISE_SCHEMA)


@dataclass
class TrainingTables:
    pairs: pa.Table
    pointwise: pa.Table
    counts: dict[str, int] = field(default_factory=dict)


def build_training_tables(
    feedback: pa.Table,
    annotator_weights: Mapping[str, float] | None = None,
    flaw_weights: Mapping[str, float] = DEFAULT_FLAW_WEIGHTS,
    with_elo_targets: bool = True,
    min_ratings_per_annotator: int = 5,
) -> TrainingTables:
    """The reward-model training tables from a validated feedback table, with counts.

    ``counts`` says how many feedback rows of each kind came in, how many were left out
    because their annotator's weight is 0, and how many rows each output has.
    """
    pairs = preference_pairs(feedback, annotator_weights)
    pointwise = pointwise_targets(feedback, annotator_weights, flaw_weights, min_ratings_per_annotator)
    if with_elo_targets:
        pointwise = pa.concat_tables([pointwise, elo_targets(pairs)])
    kinds = feedback.column("kind").to_pylist()
    excluded = sum(_weight_of(annotator_weights, a) <= 0 for a in feedback.column("annotator_id").to_pylist())
    counts = {f"rows_{kind}": kinds.count(kind) for kind in sorted(set(kinds))}
    counts |= {"rows_in": feedback.num_rows, "rows_excluded_by_annotator_weight": excluded,
               "pairs": pairs.num_rows, "pointwise": pointwise.num_rows}
    return TrainingTables(pairs, pointwise, counts)


def _kind_mask(table: pa.Table, kinds: Sequence[str]) -> pa.ChunkedArray:
    return pc.is_in(table.column("kind"), value_set=pa.array(kinds, pa.string()))
