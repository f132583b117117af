"""The AI judge's share of the feedback (pure: the labelling itself runs in actors/ai_labeller.py).

A share of the distinct pairwise items, drawn with a seed, is taken from the annotators:
their rows on those items are dropped and the AI judge's one row per item goes in
(alignray.feedback.rlaif.ai_feedback_rows). On held-out pairs the judge is measured against the
held-out raters' majority, next to the training raters' own agreement with it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from alignray.feedback.heldout import pair_items
from alignray.feedback.schema import feedback_table
from alignray.reward.evaluation import accuracy_against_votes
from alignray.feedback.rlaif import ai_feedback_rows

Item = tuple[str, str, str]  # (prompt, response_a, response_b)


def pairwise_items(feedback: pa.Table) -> list[Item]:
    """Distinct (prompt, response_a, response_b) of the pairwise rows, in first-seen order."""
    rows = feedback.filter(pc.equal(feedback.column("kind"), "pairwise")).select(["prompt", "responses"])
    return list(dict.fromkeys((r["prompt"], *r["responses"]) for r in rows.to_pylist()))


def items_for_ai(items: Sequence[Item], share: float, seed: int) -> list[Item]:
    """``round(share * len(items))`` of ``items``, drawn with ``seed``, in their order."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"feedback.ai_share {share} is not in (0, 1]")
    chosen = np.random.default_rng(seed).permutation(len(items))[:round(share * len(items))]
    return [items[i] for i in sorted(chosen)]


def replace_share_by_ai(feedback: pa.Table, judged: dict[Item, float], items: Sequence[Item]) -> pa.Table:
    """Drop every annotator's rows on ``items`` and put the AI judge's one row per item in."""
    replaced = set(items)
    keep = [not (row["kind"] == "pairwise" and (row["prompt"], *row["responses"]) in replaced)
            for row in feedback.select(["kind", "prompt", "responses"]).to_pylist()]
    ai_rows = ai_feedback_rows([p for p, _, _ in items], [a for _, a, _ in items], [b for _, _, b in items],
                               [judged[item] for item in items])
    return pa.concat_tables([feedback.filter(pa.array(keep)), feedback_table(ai_rows)])


def judge_agreement(pairs: pd.DataFrame, judged: dict[Item, float]) -> dict:
    """The AI judge against the held-out raters' majority (alignray.feedback.heldout), next
    to the training raters' own agreement with that majority (what a perfect stand-in for
    the training raters would reach)."""
    p_a = np.array([judged[item] for item in pair_items(pairs)])
    held_wins, held_votes = pairs["heldout_preference"] * pairs["heldout_votes"], pairs["heldout_votes"]
    judge = accuracy_against_votes(p_a, 1 - p_a, held_wins, held_votes)
    train = accuracy_against_votes(pairs["train_preference"], 1 - pairs["train_preference"], held_wins, held_votes)
    return {"agreement_with_heldout_raters": judge["accuracy"], "items": judge["items"],
            "items_without_majority": judge["items_without_majority"],
            "training_raters_agreement_with_heldout_raters": train["accuracy"]}
