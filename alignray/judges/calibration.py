"""Calibration before trust, biases, and the one weighting rule.

- **Gold set**: pairwise items people labelled (on the default, annotators 1-5: the held-out
  panel 6-10 never labels anything used here) that the judge does not replace, each with its
  majority (items without one are left out), drawn with a seed. The judge judges them too.
- **Calibration**: the judge's agreement with the gold majorities, and a one-sided binomial
  test against chance (0.5). A tie (P = 0.5 exactly) counts as a disagreement; unparsed and
  failed gold pairs are left out and counted. A judge not better than chance is refused or
  weighted zero (``calibration.on_fail``).
- **Weights**: ``agreement_weight(a) = max(0, 2a - 1)``: 0 at chance, 1 when always right; every
  annotator, people and the judge alike, by measured agreement (alignray.feedback.quality).
- **Biases**: position (how often the first-shown reply is chosen, and the mean log-odds the
  judge adds to it), length (how often the longer reply is preferred, against how often the
  held-out annotators prefer it), and agreement with each annotator group's majority.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from alignray.judges.verdicts import JUDGED

Item = tuple[str, str, str]


def human_majorities(feedback: pa.Table, group: str | None = None) -> dict[Item, str]:
    """Per pairwise item judged by people (source other than ``ai``; one group's annotators when
    ``group`` is given), the winner most of them chose; items without a majority are left out."""
    frame = feedback.select(["kind", "source", "prompt", "responses", "winner", "annotator_group"]).to_pandas()
    frame = frame[(frame["kind"] == "pairwise") & (frame["source"] != "ai") & frame["winner"].isin(["a", "b"])]
    if group is not None:
        frame = frame[frame["annotator_group"] == group]
    frame = frame.assign(item=[(p, *r) for p, r in zip(frame["prompt"], frame["responses"])])
    votes = frame.groupby("item")["winner"].agg(lambda w: (w == "a").sum() - (w == "b").sum())
    return {item: "a" if margin > 0 else "b" for item, margin in votes.items() if margin != 0}


def gold_items(feedback: pa.Table, exclude: Sequence[Item], count: int, seed: int) -> dict[Item, str]:
    """Up to ``count`` items with a human majority, none of ``exclude``, drawn with ``seed``."""
    excluded = set(exclude)
    majorities = {item: winner for item, winner in human_majorities(feedback).items() if item not in excluded}
    items = sorted(majorities)
    chosen = np.random.default_rng(seed).permutation(len(items))[:count]
    return {items[i]: majorities[items[i]] for i in sorted(chosen)}


def agreement_with(majorities: Mapping[Item, str], verdicts: Mapping[Item, dict]) -> dict:
    """The judge against majorities: agreement, items compared, left out, one-sided p-value."""
    judged = [(verdicts[item]["preference_a"], winner) for item, winner in majorities.items()
              if item in verdicts and verdicts[item]["status"] == JUDGED]
    agreeing = sum((p > 0.5 and winner == "a") or (p < 0.5 and winner == "b") for p, winner in judged)
    n = len(judged)
    return {"items": n, "not_judged": len(majorities) - n, "agreement": agreeing / n if n else float("nan"),
            "p_value": float(stats.binomtest(agreeing, n, 0.5, alternative="greater").pvalue) if n else 1.0}


def calibrate(gold: Mapping[Item, str], verdicts: Mapping[Item, dict], significance: float) -> dict:
    result = agreement_with(gold, verdicts) | {"gold_pairs": len(gold), "significance": significance}
    result["better_than_chance"] = bool(result["items"] and result["p_value"] < significance)
    return result


def calibration_message(result: dict, judge: str) -> str:
    return (f"the AI judge {judge} agrees with people on {result['agreement']:.3f} of {result['items']} gold pairs "
            f"({result['not_judged']} not judged): not better than chance (one-sided binomial p = "
            f"{result['p_value']:.3g}, needs < {result['significance']})")


def agreement_weight(agreement: float) -> float:
    """The one rule for every annotator: max(0, 2a - 1)."""
    return max(0.0, 2.0 * float(agreement) - 1.0)


def group_agreement(feedback: pa.Table, verdicts: Mapping[Item, dict]) -> dict[str, dict]:
    """The judge against each annotator group's majority, on the items both judged."""
    groups = sorted({g for g in feedback.column("annotator_group").to_pylist() if g})
    return {group: agreement_with(human_majorities(feedback, group), verdicts) for group in groups}


def position_bias(verdicts: Sequence[dict]) -> dict:
    judged = [v for v in verdicts if v["status"] == JUDGED]
    firsts = [chosen for v in judged for chosen in v["first_chosen"]]
    # None (JSON null) where nothing was judged: NaN is not JSON, and strict readers refuse it
    return {"first_reply_chosen_share": float(np.mean(firsts)) if firsts else None,
            "mean_position_bias_log_odds": float(np.mean([v["position_bias"] for v in judged])) if judged else None}


def longer_share(items: Sequence[Item], preference_a: Sequence[float]) -> dict:
    """How often the longer reply (in words) is preferred, over pairs of unequal length with a preference."""
    picks = [(len(a.split()) > len(b.split())) == (p > 0.5) for (_, a, b), p in zip(items, preference_a)
             if len(a.split()) != len(b.split()) and p != 0.5]
    return {"pairs": len(picks), "longer_preferred_share": float(np.mean(picks)) if picks else None}


def length_bias(items: Sequence[Item], verdicts: Sequence[dict], heldout: pd.DataFrame | None) -> dict:
    """The judge's share of pairs where it prefers the longer reply, beside the held-out annotators'."""
    judged = [(item, v["preference_a"]) for item, v in zip(items, verdicts) if v["status"] == JUDGED]
    result = {"judge": longer_share([i for i, _ in judged], [p for _, p in judged])}
    if heldout is not None and len(heldout):
        result["heldout_annotators"] = longer_share(
            list(zip(heldout["prompt"], heldout["response_a"], heldout["response_b"])), heldout["heldout_preference"])
    return result
