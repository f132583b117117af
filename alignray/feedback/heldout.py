"""Held-out pairs: every pair of responses to a held-out prompt, judged by the training
raters and by the held-out raters, one row per pair with each panel's share of votes."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa

from alignray.reward.evaluation import panel_votes

HELDOUT_PAIRS_SCHEMA = pa.schema([
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("response_a", pa.string(), nullable=False),
    pa.field("response_b", pa.string(), nullable=False),
    pa.field("heldout_preference", pa.float64(), nullable=False),  # share of raters 6-10 preferring a
    pa.field("train_preference", pa.float64(), nullable=False),  # share of the training raters preferring a
    pa.field("heldout_votes", pa.int64(), nullable=False),
    pa.field("train_votes", pa.int64(), nullable=False),
])


def heldout_pairs(heldout: pa.Table, train_ids: list[str], heldout_ids: list[str]) -> pd.DataFrame:
    """One row per held-out pair (responses in sorted order, as in alignray.reward.evaluation)."""
    keys = ["prompt", "response_a", "response_b"]
    held, train = panel_votes(heldout, heldout_ids), panel_votes(heldout, train_ids)
    pairs = held.merge(train, on=keys, suffixes=("_heldout", "_train"))
    return pd.DataFrame({
        **{key: pairs[key] for key in keys},
        "heldout_preference": pairs["wins_a_heldout"] / pairs["votes_heldout"],
        "train_preference": pairs["wins_a_train"] / pairs["votes_train"],
        "heldout_votes": pairs["votes_heldout"].astype("int64"), "train_votes": pairs["votes_train"].astype("int64"),
    })


def pair_items(pairs: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The (prompt, response_a, response_b) of each held-out pair."""
    return list(zip(pairs["prompt"], pairs["response_a"], pairs["response_b"]))
