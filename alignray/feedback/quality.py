"""Annotator quality: agreement, leave-one-out consensus, bad-faith detection, weights.

Judgments are grouped into three families, each compared on shared items:

* ``preference``: pairwise rows and the pairs expanded from rankings; the item is the
  unordered pair of responses to a prompt, the label "first" / "second" / "tie" (by the
  responses' sorted order, so the a/b position does not matter);
* ``thumbs``: the item is (prompt, response), the label "up" / "down";
* ``rating``: the item is (prompt, response), the value the annotator's normalised rating.

Inter-annotator agreement is **Krippendorff's alpha** (nominal for preference and
thumbs; interval for ratings, both on the [0, 1] scale and after per-annotator
normalisation). It handles any number of annotators per item and missing judgments.

Each annotator is compared with the leave-one-out consensus: the plurality label of the
other annotators on the same item (the mean of their normalised ratings for ratings). For
labels, agreement is the share of matches and chance is the agreement expected if the
annotator's labels were independent of the consensus (sum over labels of the annotator's
label rate times the consensus's); for ratings, agreement is Pearson's r and chance 0.
Verdicts use the families with at least ``min_items`` compared items and one-sided tests
at level ``significance`` (binomial for labels, Pearson for ratings):

* ``adversarial``: agreement significantly below chance in some family (consistent
  flipping);
* ``uninformative``: agreement not significantly above chance over all tested families
  together (Fisher's combination of their p-values): a random clicker. Pooling matters: a
  family with few items alone would often fail to show an honest annotator above chance;
* ``ok`` otherwise, or ``too_few_items`` when no family has enough shared items.

The same comparison with whole annotator groups left out exposes a group whose labels
differ from everyone else's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from alignray.feedback.aggregate import normalized_ratings, ranking_pairs

FAMILIES = ("preference", "thumbs", "rating")
POLICIES = ("keep", "downweight", "exclude", "agreement")
_SEP = "\x1f"  # joins prompt and responses into one item key: a control character, absent from text


def _preference_label(chosen: str, rejected: str) -> tuple[str, str]:
    first, second = sorted((chosen, rejected))
    return first + _SEP + second, "first" if chosen == first else "second"


def feedback_judgments(feedback: pa.Table, min_ratings_per_annotator: int = 5) -> dict[str, pd.DataFrame]:
    """The judgments of each family: annotator_id, annotator_group, item, and label or value."""
    records = {family: [] for family in FAMILIES}
    rows = feedback.to_pylist()
    for row in rows:
        who = {"annotator_id": row["annotator_id"], "annotator_group": row["annotator_group"]}
        prompt = row["prompt"] + _SEP
        if row["kind"] == "pairwise":
            a, b = row["responses"]
            pair, label = _preference_label(b, a) if row["winner"] == "b" else _preference_label(a, b)
            label = "tie" if row["winner"] == "tie" else label
            records["preference"].append(who | {"item": prompt + pair, "label": label})
        elif row["kind"] == "ranking":
            for chosen, rejected, _ in ranking_pairs(row["responses"], row["order"]):
                pair, label = _preference_label(chosen, rejected)
                records["preference"].append(who | {"item": prompt + pair, "label": label})
        elif row["kind"] == "thumbs":
            records["thumbs"].append(who | {"item": prompt + row["responses"][0], "label": row["thumb"]})
    rating_rows = [row for row in rows if row["kind"] == "rating"]
    if rating_rows:
        ratings = pa.Table.from_pylist(rating_rows, schema=feedback.schema)
        z = normalized_ratings(ratings, min_ratings_per_annotator)
        for row, value in zip(rating_rows, z):
            unit = (row["score"] - row["scale_min"]) / (row["scale_max"] - row["scale_min"])
            records["rating"].append({"annotator_id": row["annotator_id"], "annotator_group": row["annotator_group"],
                                      "item": row["prompt"] + _SEP + row["responses"][0],
                                      "value": float(value), "unit_value": unit})
    columns = {"preference": ["label"], "thumbs": ["label"], "rating": ["value", "unit_value"]}
    return {family: pd.DataFrame(records[family], columns=["annotator_id", "annotator_group", "item"] + columns[family])
            for family in FAMILIES}


def krippendorff_alpha(items: pd.Series, values: pd.Series, level: str = "nominal") -> float:
    """Krippendorff's alpha of values grouped by item; nan when it is undefined.

    ``level`` "nominal" (distance: differs or not) or "interval" (squared difference).
    Only items with at least two values count (they are the pairable ones).
    """
    frame = pd.DataFrame({"item": items.to_numpy(), "value": values.to_numpy()})
    frame = frame[frame.groupby("item")["value"].transform("size") >= 2]
    n = len(frame)
    if n < 2:
        return float("nan")
    if level == "nominal":
        # An item with m values, n_c of them label c, has m^2 - sum_c n_c^2 ordered pairs
        # of values that disagree; all n values together have n^2 - sum_c N_c^2.
        label_counts = frame.groupby(["item", "value"]).size()
        sizes = label_counts.groupby(level="item").sum()
        disagreeing = sizes ** 2 - (label_counts ** 2).groupby(level="item").sum()
        observed = np.sum(disagreeing / (sizes - 1)) / n
        totals = frame["value"].value_counts().to_numpy(dtype=float)
        expected = (n ** 2 - np.sum(totals ** 2)) / (n * (n - 1))
    elif level == "interval":
        # The sum over ordered pairs of (v_i - v_j)^2 is 2 m sum v^2 - 2 (sum v)^2.
        v = frame["value"].to_numpy(dtype=float)
        grouped = pd.DataFrame({"item": frame["item"].to_numpy(), "v": v, "v2": v ** 2}).groupby("item")
        sums, squares, sizes = grouped["v"].sum(), grouped["v2"].sum(), grouped.size()
        observed = np.sum((2 * sizes * squares - 2 * sums ** 2) / (sizes - 1)) / n
        expected = (2 * n * np.sum(v ** 2) - 2 * np.sum(v) ** 2) / (n * (n - 1))
    else:
        raise ValueError(f"level {level!r} is not 'nominal' or 'interval'")
    return float("nan") if expected == 0 else float(1.0 - observed / expected)


def _label_agreement(judgments: pd.DataFrame, unit: str) -> pd.DataFrame:
    """Per unit (annotator or group): agreement of its labels with the plurality label of
    everyone outside the unit on the same item, and the agreement expected by chance."""
    own = judgments.dropna(subset=[unit])
    all_counts = pd.crosstab(judgments["item"], judgments["label"])
    unit_counts = (own.groupby([unit, "item", "label"]).size().unstack(fill_value=0)
                   .reindex(columns=all_counts.columns, fill_value=0))
    others = all_counts.loc[unit_counts.index.get_level_values("item")].to_numpy() - unit_counts.to_numpy()
    top = others.max(axis=1)
    # No consensus where nobody else judged the item or the others' plurality is tied.
    decided = (top > 0) & ((others == top[:, None]).sum(axis=1) == 1)
    consensus = pd.Series(all_counts.columns.to_numpy()[others.argmax(axis=1)], index=unit_counts.index)[decided]
    scored = own.join(consensus.rename("consensus"), on=[unit, "item"], how="inner")
    result = {}
    for name, mine in scored.groupby(unit):
        n, agreeing = len(mine), int((mine["label"] == mine["consensus"]).sum())
        label_rate = mine["label"].value_counts(normalize=True)
        consensus_rate = mine["consensus"].value_counts(normalize=True)
        chance = float(label_rate.mul(consensus_rate, fill_value=0.0).sum())
        result[name] = {"n": n, "agreement": agreeing / n, "chance": chance,
                        "score": (agreeing / n - chance) / (1.0 - chance) if chance < 1 else float("nan"),
                        "p_above": float(stats.binom.sf(agreeing - 1, n, chance)),
                        "p_below": float(stats.binom.cdf(agreeing, n, chance))}
    return pd.DataFrame.from_dict(result, orient="index")


def _rating_agreement(judgments: pd.DataFrame, unit: str) -> pd.DataFrame:
    """Per unit: Pearson r between its normalised ratings and the mean of everyone else's."""
    own = judgments.dropna(subset=[unit])
    totals = judgments.groupby("item")["value"].agg(["sum", "count"])
    mine = own.groupby([unit, "item"])["value"].agg(["sum", "count"])
    items = mine.index.get_level_values("item")
    other_count = totals["count"].loc[items].to_numpy() - mine["count"].to_numpy()
    other_sum = totals["sum"].loc[items].to_numpy() - mine["sum"].to_numpy()
    pairs = pd.DataFrame({"value": (mine["sum"] / mine["count"]).to_numpy(),
                          "consensus": np.divide(other_sum, other_count, where=other_count > 0,
                                                 out=np.zeros(len(items)))},
                         index=mine.index)[other_count > 0]
    result = {}
    for name, both in pairs.groupby(level=unit):
        n = len(both)
        if n < 3 or both["value"].std() == 0 or both["consensus"].std() == 0:
            r, p_above, p_below = float("nan"), 1.0, 1.0  # a constant rater tells nothing
        else:
            r = float(stats.pearsonr(both["value"], both["consensus"]).statistic)
            p_above = float(stats.pearsonr(both["value"], both["consensus"], alternative="greater").pvalue)
            p_below = float(stats.pearsonr(both["value"], both["consensus"], alternative="less").pvalue)
        result[name] = {"n": n, "agreement": r, "chance": 0.0, "score": r, "p_above": p_above, "p_below": p_below}
    return pd.DataFrame.from_dict(result, orient="index")


def _agreement_by(judgments: dict[str, pd.DataFrame], unit: str) -> pd.DataFrame:
    """Leave-one-unit-out agreement of every family, columns named ``{family}_{statistic}``."""
    parts = []
    for family in FAMILIES:
        frame = judgments[family]
        if frame.empty or frame[unit].isna().all():
            continue
        table = _rating_agreement(frame, unit) if family == "rating" else _label_agreement(frame, unit)
        parts.append(table.add_prefix(family + "_"))
    return pd.concat(parts, axis=1) if parts else pd.DataFrame()


def _verdict(stats_row: pd.Series, min_items: int, significance: float, max_chance: float) -> tuple[str, str]:
    tested = [f for f in FAMILIES
              if stats_row.get(f"{f}_n", 0) >= min_items and stats_row.get(f"{f}_chance", 1.0) < max_chance]
    if not tested:
        return "too_few_items", f"fewer than {min_items} items shared with others in every family"

    def describe(f):
        return (f"{f}: agreement {stats_row[f'{f}_agreement']:.2f} vs chance {stats_row[f'{f}_chance']:.2f}"
                f" on {int(stats_row[f'{f}_n'])} items")

    below = [f for f in tested if stats_row[f"{f}_p_below"] < significance]
    if below:
        return "adversarial", "; ".join(describe(f) + f" (below chance, p={stats_row[f'{f}_p_below']:.1e})" for f in below)
    # p-values that underflowed to 0 are floored so that Fisher's log stays finite.
    p_above = [max(stats_row[f"{f}_p_above"], 1e-300) for f in tested]
    combined = stats.combine_pvalues(p_above, method="fisher").pvalue
    if not combined < significance:
        return "uninformative", "; ".join(describe(f) for f in tested) + f" (not above chance, p={combined:.2g})"
    return "ok", ""


@dataclass
class AnnotatorQuality:
    """Per-annotator statistics and verdicts, overall agreement, and per-group statistics."""

    annotators: pd.DataFrame  # index annotator_id; verdict, flagged, reason, {family}_{statistic}
    alpha: dict[str, float]  # Krippendorff's alpha per family
    groups: pd.DataFrame  # index annotator_group; empty without groups
    warnings: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[str]:
        return sorted(self.annotators.index[self.annotators["flagged"]])


def _alphas(judgments: dict[str, pd.DataFrame]) -> dict[str, float]:
    alpha = {family: krippendorff_alpha(judgments[family]["item"], judgments[family]["label"])
             for family in ("preference", "thumbs") if not judgments[family].empty}
    ratings = judgments["rating"]
    if not ratings.empty:
        alpha["rating"] = krippendorff_alpha(ratings["item"], ratings["unit_value"], "interval")
        alpha["rating_normalised"] = krippendorff_alpha(ratings["item"], ratings["value"], "interval")
    return alpha


def _group_statistics(feedback: pa.Table, judgments: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, list[str]]:
    rows = feedback.select(["kind", "annotator_id", "annotator_group", "thumb", "score", "scale_min",
                            "scale_max", "flaws"]).to_pandas()
    if rows["annotator_group"].isna().all():
        return pd.DataFrame(), []
    rows["group"] = rows["annotator_group"].fillna("(none)")
    ratings = rows[rows["kind"] == "rating"]
    table = pd.DataFrame({
        "annotators": rows.groupby("group")["annotator_id"].nunique(),
        "rows": rows.groupby("group").size(),
        "thumbs_up_rate": (rows[rows["kind"] == "thumbs"]["thumb"] == "up").groupby(rows["group"]).mean(),
        "mean_rating_unit": ((ratings["score"] - ratings["scale_min"]) / (ratings["scale_max"] - ratings["scale_min"])
                             ).groupby(ratings["group"]).mean(),
        "flaw_rate": ratings["flaws"].map(lambda flaws: len(flaws) > 0 if flaws is not None else False
                                          ).groupby(ratings["group"]).mean(),
    })
    table["share_of_rows"] = table["rows"] / table["rows"].sum()
    for family in FAMILIES:
        frame = judgments[family]
        label = "unit_value" if family == "rating" else "label"
        level = "interval" if family == "rating" else "nominal"
        table[f"alpha_{family}"] = pd.Series({group: krippendorff_alpha(part["item"], part[label], level)
                                              for group, part in frame.groupby("annotator_group")})
    versus_others = _agreement_by(judgments, "annotator_group")
    for family in FAMILIES:
        if f"{family}_score" in versus_others:
            table[f"{family}_score_vs_other_groups"] = versus_others[f"{family}_score"]
    warnings = []
    named = table.drop(index="(none)", errors="ignore")
    if len(named) == 1:
        warnings.append(f"all grouped feedback comes from one group, {named.index[0]!r}")
    for group, share in table["share_of_rows"].items():
        if share > 0.5 and len(table) > 1:
            warnings.append(f"group {group!r} gave {share:.0%} of the feedback rows")
    for family in FAMILIES:
        column = f"{family}_score_vs_other_groups"
        if column in table:
            for group, score in table[column].dropna().items():
                if score <= 0:
                    warnings.append(f"group {group!r} does not agree with the other groups on {family} "
                                    f"(chance-corrected agreement {score:.2f})")
    return table, warnings


def annotator_quality(
    feedback: pa.Table,
    min_items: int = 30,
    significance: float = 0.01,
    max_chance: float = 0.95,
    min_ratings_per_annotator: int = 5,
) -> AnnotatorQuality:
    """Agreement, per-annotator verdicts and per-group statistics of a feedback table.

    A family gives no verdict for an annotator with fewer than ``min_items`` compared items,
    or when chance agreement is at least ``max_chance`` (when nearly every label is the same,
    agreement cannot tell an attentive annotator from one who always clicks that label).
    """
    judgments = feedback_judgments(feedback, min_ratings_per_annotator)
    annotators = pd.Index(sorted(set(feedback.column("annotator_id").to_pylist())), name="annotator_id")
    table = _agreement_by(judgments, "annotator_id").reindex(annotators)
    verdicts = [_verdict(row, min_items, significance, max_chance) for _, row in table.iterrows()]
    table.insert(0, "verdict", [verdict for verdict, _ in verdicts])
    table.insert(1, "flagged", table["verdict"].isin(["adversarial", "uninformative"]))
    table.insert(2, "reason", [reason for _, reason in verdicts])
    groups, warnings = _group_statistics(feedback, judgments)
    if table["flagged"].any():
        warnings.insert(0, f"{int(table['flagged'].sum())} of {len(table)} annotators flagged: "
                           + ", ".join(table.index[table["flagged"]]))
    return AnnotatorQuality(table, _alphas(judgments), groups, warnings)


def annotator_weights(quality: AnnotatorQuality, policy: str = "exclude", downweight: float = 0.2,
                      measured: dict[str, float] | None = None) -> dict[str, float]:
    """Weight per annotator: 1 for all but flagged ones, which get 1 ("keep"),
    ``downweight`` ("downweight") or 0 ("exclude"). "agreement": every annotator weighted
    max(0, 2a - 1) by its pairwise agreement a, ``measured`` elsewhere (the AI judge's, on the
    gold set) or with the leave-one-out consensus here; one without either is weighted as
    "exclude" weights it."""
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r} is not one of {POLICIES}")
    flagged_weight = {"keep": 1.0, "downweight": downweight, "exclude": 0.0, "agreement": 0.0}[policy]
    weights = {annotator: flagged_weight if flagged else 1.0
               for annotator, flagged in quality.annotators["flagged"].items()}
    if policy == "agreement":
        agreement = quality.annotators.get("preference_agreement", pd.Series(dtype=float)).dropna().to_dict()
        agreement |= measured or {}
        weights |= {a: max(0.0, 2.0 * float(agreement[a]) - 1.0) for a in weights if a in agreement}
    return weights
