"""Evaluation of a reward model against people's pairwise judgments (pure: no Ray).

Judgments are pooled per item, the unordered pair of responses to one prompt: ``wins_a``
counts the votes for ``response_a`` (the first in sorted order, so the a/b position shown
to the annotator does not matter; a tie is half a vote each way) out of ``votes``.

* Accuracy against a panel: the share of items whose panel majority the reward model
  ranks first (items with an even split have no majority and are left out, and counted).
* Calibration: the Bradley-Terry preference probability ``sigmoid(r_a - r_b)`` of the raw
  rewards against the observed vote share, in bins of predicted probability. Each item
  enters in both orientations, so the curve is symmetric about (0.5, 0.5).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402


def panel_votes(feedback: pa.Table, annotators: Sequence[str] | None = None) -> pd.DataFrame:
    """Pairwise votes of ``annotators`` (None: everyone) per item: prompt, response_a,
    response_b, wins_a, votes."""
    rows = feedback.filter(pc.equal(feedback.column("kind"), "pairwise"))
    if annotators is not None:
        rows = rows.filter(pc.is_in(rows.column("annotator_id"), value_set=pa.array(list(annotators), pa.string())))
    records = []
    for row in rows.select(["prompt", "responses", "winner"]).to_pylist():
        first, second = row["responses"]
        a, b = sorted((first, second))
        winner = {"a": first, "b": second}.get(row["winner"])
        records.append({"prompt": row["prompt"], "response_a": a, "response_b": b,
                        "wins_a": 0.5 if winner is None else float(winner == a)})
    frame = pd.DataFrame(records, columns=["prompt", "response_a", "response_b", "wins_a"])
    return (frame.groupby(["prompt", "response_a", "response_b"], sort=True)["wins_a"]
            .agg(wins_a="sum", votes="count").reset_index())


def accuracy_against_votes(reward_a: np.ndarray, reward_b: np.ndarray, wins_a: np.ndarray,
                           votes: np.ndarray) -> dict[str, float]:
    """Share of items with a majority where the reward model agrees with it (a reward tie
    counts half). Also the number of items judged and left out for an even split."""
    majority = np.sign(np.asarray(wins_a, float) - np.asarray(votes, float) / 2)
    decided = majority != 0
    model = np.sign(np.asarray(reward_a, float) - np.asarray(reward_b, float))[decided]
    agreement = np.where(model == 0, 0.5, (model == majority[decided]).astype(float))
    return {"accuracy": float(agreement.mean()) if decided.any() else float("nan"),
            "items": int(decided.sum()), "items_without_majority": int((~decided).sum())}


def calibration_bins(reward_a: np.ndarray, reward_b: np.ndarray, wins_a: np.ndarray, votes: np.ndarray,
                     bins: int = 10) -> pd.DataFrame:
    """Per bin of predicted preference probability: mean predicted, observed vote share,
    and the number of votes in it (both orientations of every item)."""
    predicted = 1.0 / (1.0 + np.exp(-(np.asarray(reward_a, float) - np.asarray(reward_b, float))))
    observed = np.asarray(wins_a, float) / np.asarray(votes, float)
    votes = np.asarray(votes, float)
    frame = pd.DataFrame({"predicted": np.concatenate([predicted, 1 - predicted]),
                          "observed": np.concatenate([observed, 1 - observed]),
                          "votes": np.concatenate([votes, votes])})
    frame["bin"] = np.minimum((frame["predicted"] * bins).astype(int), bins - 1)
    weighted = frame.assign(predicted=frame["predicted"] * frame["votes"], observed=frame["observed"] * frame["votes"])
    table = weighted.groupby("bin")[["predicted", "observed", "votes"]].sum()
    table["predicted"] /= table["votes"]
    table["observed"] /= table["votes"]
    return table.reset_index()


def expected_calibration_error(table: pd.DataFrame) -> float:
    """Vote-weighted mean gap between predicted and observed preference rate."""
    return float((table["votes"] * (table["predicted"] - table["observed"]).abs()).sum() / table["votes"].sum())


def plot_calibration(tables: dict[str, pd.DataFrame], out_png: str | Path, title: str = "") -> Path:
    """Predicted vs observed preference rate, one curve per panel."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, table in tables.items():
        ax.plot(table["predicted"], table["observed"], marker="o", label=name)
    ax.set_xlabel("predicted preference rate sigmoid(r_a - r_b)")
    ax.set_ylabel("observed preference rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "reward model calibration")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def evaluate_against_panels(score_raw, feedback: pa.Table, panels: dict[str, Sequence[str] | None],
                            bins: int = 10) -> tuple[dict[str, dict], dict[str, pd.DataFrame]]:
    """Accuracy and calibration of the reward model against each panel of annotators.

    ``score_raw(prompts, responses) -> array`` gives raw (unnormalised) rewards; each
    distinct (prompt, response) of the feedback is scored once. Returns the figures per
    panel and the calibration table per panel; a panel with no votes is left out.
    """
    everyone = panel_votes(feedback)
    texts = pd.concat([everyone[["prompt", "response_a"]].set_axis(["prompt", "response"], axis=1),
                       everyone[["prompt", "response_b"]].set_axis(["prompt", "response"], axis=1)]
                      ).drop_duplicates().reset_index(drop=True)
    rewards = np.asarray(score_raw(texts["prompt"].tolist(), texts["response"].tolist()), dtype=float)
    reward_of = dict(zip(zip(texts["prompt"], texts["response"]), rewards))
    results, tables = {}, {}
    for name, annotators in panels.items():
        votes = everyone if annotators is None else panel_votes(feedback, annotators)
        if votes.empty:
            continue
        reward_a = np.array([reward_of[key] for key in zip(votes["prompt"], votes["response_a"])])
        reward_b = np.array([reward_of[key] for key in zip(votes["prompt"], votes["response_b"])])
        tables[name] = calibration_bins(reward_a, reward_b, votes["wins_a"], votes["votes"], bins)
        results[name] = accuracy_against_votes(reward_a, reward_b, votes["wins_a"], votes["votes"])
        results[name]["calibration_error"] = expected_calibration_error(tables[name])
        results[name]["annotators"] = None if annotators is None else list(annotators)
    return results, tables
