"""Whose preferences a reward model follows: annotator groups on held-out items.

The reward-model phase scores each annotator group's majority on held-out pairs (the
``group:<name>`` panels of ``alignray.reward.evaluation``). Held-out pairs come from the
feedback phase's ``heldout_feedback.parquet`` when it has one (simulated feedback); for
collected or imported feedback they are the feedback rows on the prompts that the reward
model holds out from training (the same content-hash split, so none of them trained it).

Opt-in (``reward_model.cross_group``), one model is trained on each group's share of the
training tables; its accuracy against the other groups' majorities says how much the
groups' preferences differ where it matters, for the reward.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alignray.data.tweets import is_heldout

GROUP_PANEL = "group:"  # prefix of a group's panel in the reward model's evaluation
TRAINED_ON = "trained_on:"  # prefix of a model trained on one group's feedback, in eval.json


def annotator_groups(feedback: pa.Table) -> dict[str, list[str]]:
    """The annotators of each named group (empty when the feedback has no groups)."""
    members: dict[str, set[str]] = {}
    for row in feedback.select(["annotator_id", "annotator_group"]).to_pylist():
        if row["annotator_group"] is not None:
            members.setdefault(row["annotator_group"], set()).add(row["annotator_id"])
    return {group: sorted(ids) for group, ids in sorted(members.items())}


def heldout_prompt_rows(feedback: pa.Table, heldout_fraction: float) -> pa.Table:
    """The feedback rows whose prompt the reward model holds out (``is_heldout``)."""
    held = [is_heldout(prompt, heldout_fraction) for prompt in feedback.column("prompt").to_pylist()]
    return feedback.filter(pa.array(np.asarray(held, dtype=bool)))


def rows_of_annotators(table: pa.Table, annotators: Sequence[str]) -> pa.Table:
    """The rows of ``annotators`` (rows without an annotator, such as pooled Elo targets, drop out)."""
    return table.filter(pc.fill_null(pc.is_in(table.column("annotator_id"),
                                              value_set=pa.array(list(annotators), pa.string())), False))


def group_training_tables(feedback: pa.Table, pairs: pa.Table,
                          pointwise: pa.Table) -> dict[str, tuple[pa.Table, pa.Table]]:
    """Each group's share of the training tables (pairs, pointwise), by the groups of the
    raw ``feedback``; empty with fewer than two groups. Elo targets, pooled over every
    annotator, belong to no group and are left out; a group with no rows is left out."""
    groups = annotator_groups(feedback)
    if len(groups) < 2:
        return {}
    shares = {group: (rows_of_annotators(pairs, members), rows_of_annotators(pointwise, members))
              for group, members in groups.items()}
    return {group: tables for group, tables in shares.items() if tables[0].num_rows + tables[1].num_rows > 0}


def cross_group_accuracy(evaluation: dict) -> dict[str, dict[str, float]]:
    """Accuracy of each model (the main one as "all", and each ``trained_on:<group>``)
    against each group's majority on the held-out pairs: {model: {group: accuracy}}."""
    models = {"all": evaluation.get("model", {})}
    models |= {name[len(TRAINED_ON):]: result for name, result in evaluation.items() if name.startswith(TRAINED_ON)}
    return {model: {panel[len(GROUP_PANEL):]: figures["accuracy"]
                    for panel, figures in result.get("heldout", {}).items() if panel.startswith(GROUP_PANEL)}
            for model, result in models.items()}
