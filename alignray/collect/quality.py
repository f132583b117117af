"""Live quality and cost of a collection: what the admin page shows.

Agreement and the bad-faith verdicts are those of `alignray.feedback.quality`, on the
compacted feedback, so collected and imported feedback are judged alike. Gold items add a
test of their own: an annotator whose accuracy on gold items is significantly below
``gold_min_accuracy`` is flagged ("fails_gold"), whatever the agreement says. The keep /
downweight / exclude policy then weighs flagged annotators as `annotator_weights` does.
"""
from __future__ import annotations

import math
from typing import Optional

import pandas as pd
from scipy import stats

from alignray.collect.store import LabelStore
from alignray.config.collect import CollectConfig, CollectQualityConfig
from alignray.feedback.quality import AnnotatorQuality, annotator_quality, annotator_weights


def gold_verdict(n: int, correct: int, cfg: CollectQualityConfig) -> Optional[str]:
    """A reason to flag the annotator, or None when the gold answers give none."""
    if n < cfg.min_gold:
        return None
    p = float(stats.binom.cdf(correct, n, cfg.gold_min_accuracy))
    if p < cfg.significance:
        return f"gold accuracy {correct / n:.2f} on {n} items, below {cfg.gold_min_accuracy:.2f} (p={p:.1e})"
    return None


def _finite(value) -> Optional[float]:
    return float(value) if value is not None and not pd.isna(value) and math.isfinite(float(value)) else None


def _agreement_columns(row: pd.Series) -> dict:
    return {f"{family}_agreement": _finite(row.get(f"{family}_agreement"))
            for family in ("preference", "thumbs", "rating")} | {
            f"{family}_items": int(row.get(f"{family}_n")) if _finite(row.get(f"{family}_n")) else 0
            for family in ("preference", "thumbs", "rating")}


def _verdicts(store: LabelStore, cfg: CollectQualityConfig):
    """Per-annotator verdict table (feedback.quality plus the gold test), alpha, warnings."""
    feedback = store.feedback_table()
    if feedback.num_rows == 0:
        return pd.DataFrame(columns=["verdict", "flagged", "reason"]), {}, []
    quality = annotator_quality(feedback, min_items=cfg.min_items, significance=cfg.significance)
    table = quality.annotators.copy()
    for who, (n, correct) in store.gold_results().items():
        reason = gold_verdict(n, correct, cfg)
        if reason and who in table.index:
            table.loc[who, ["verdict", "flagged", "reason"]] = ["fails_gold", True, reason]
    return table, quality.alpha, quality.warnings


def _weights(table: pd.DataFrame, cfg: CollectQualityConfig) -> dict[str, float]:
    if table.empty:
        return {}
    return annotator_weights(AnnotatorQuality(table, {}, pd.DataFrame()), cfg.policy, cfg.downweight)


def live_quality(store: LabelStore, cfg: CollectConfig) -> dict:
    """Per annotator: labels, skips, undos, gold accuracy, agreement, verdict and weight,
    seconds per label, labels per hour and cost; and the totals."""
    table, alpha, warnings = _verdicts(store, cfg.quality)
    weights = _weights(table, cfg.quality)
    effort, gold = store.effort(), store.gold_results()
    rows = []
    for who, group in store.annotator_groups().items():
        work = effort.get(who, {"labels": 0, "skips": 0, "undone": 0, "seconds": 0.0})
        n_gold, correct = gold.get(who, (0, 0))
        seconds = float(work["seconds"] or 0.0)
        judged = table.loc[who] if who in table.index else pd.Series(dtype=object)
        rows.append({
            "annotator_id": who, "group": group, "labels": int(work["labels"]), "skips": int(work["skips"]),
            "undone": int(work["undone"]), "gold_items": n_gold,
            "gold_accuracy": correct / n_gold if n_gold else None,
            **_agreement_columns(judged),
            "verdict": judged.get("verdict", "no_labels"), "reason": judged.get("reason", "") or "",
            "weight": weights.get(who, 1.0),
            "seconds_per_label": seconds / work["labels"] if work["labels"] else None,
            "labels_per_hour": 3600.0 * work["labels"] / seconds if seconds > 0 else None,
            "cost": seconds / 3600.0 * cfg.hourly_rate,
        })
    total_labels = sum(row["labels"] for row in rows)
    total_seconds = sum(float(effort.get(row["annotator_id"], {}).get("seconds") or 0.0) for row in rows)
    return {
        "annotators": rows,
        "totals": {"labels": total_labels, "annotators": len(rows), "hours": total_seconds / 3600.0,
                   "labels_per_hour": 3600.0 * total_labels / total_seconds if total_seconds > 0 else None,
                   "cost": total_seconds / 3600.0 * cfg.hourly_rate, "currency": cfg.currency,
                   "hourly_rate": cfg.hourly_rate, "policy": cfg.quality.policy},
        "alpha": {family: _finite(value) for family, value in alpha.items()},
        "warnings": list(warnings),
    }
