"""The AI judge's part of the feedback phase (pure: the judge itself is handed in as ``ask``,
alignray/judges/forms.py): a share of the pairwise items judged instead of people, the judge
calibrated on a human gold set before its rows are trusted, and its counts, biases and cost.

Only pairs the judge judged (both orders) replace the people's rows; an unparsed or failed
pair keeps them, and is counted: in = judged + unparsed + failed (failed per reason). A judge
not better than chance on the gold set stops the phase (``calibration.on_fail=refuse``) or is
weighted zero (``zero_weight``), with a message that says so.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from alignray.config.judge import JudgeConfig
from alignray.feedback.ai_share import items_for_ai, judge_agreement, pairwise_items, replace_share_by_ai
from alignray.feedback.heldout import pair_items
from alignray.feedback.schema import AI_JUDGE_ID, feedback_table, rating_feedback, thumbs_feedback
from alignray.judges.cache import VerdictCache
from alignray.judges.calibration import (agreement_weight, calibrate, calibration_message, gold_items,
                                         group_agreement, length_bias, position_bias)
from alignray.judges.forms import Ask, cost_of, judge_pairs, judge_ratings
from alignray.judges.rubric import Rubric
from alignray.judges.verdicts import JUDGED

log = logging.getLogger(__name__)


class JudgeNotTrusted(ValueError):
    """The judge is no better than chance on the human gold set."""


@dataclass
class AIJudgeRun:
    ask: Ask
    identity: dict
    rubric: Rubric
    cache: VerdictCache | None
    name: str  # the judge in words
    ask_rating: Ask | None = None  # for the rating and thumbs forms


def calibration_of(cfg: JudgeConfig, gold: dict, verdicts: dict, name: str) -> dict:
    """The calibration, its weight for the judge, and the refusal where the setting says so."""
    if not gold:
        log.warning("the AI judge %s is not calibrated: no human gold pairs (calibration.gold_pairs=%d)", name,
                    cfg.calibration.gold_pairs)
        return {"gold_pairs": 0, "better_than_chance": None, "weight": None}
    result = calibrate(gold, verdicts, cfg.calibration.significance)
    if result["better_than_chance"]:
        result["weight"] = agreement_weight(result["agreement"])
        log.info("AI judge calibrated: agreement %.3f on %d gold pairs (p = %.3g)", result["agreement"],
                 result["items"], result["p_value"])
        return result
    message = calibration_message(result, name)
    if cfg.calibration.on_fail == "refuse":
        raise JudgeNotTrusted(message + "; it is refused (feedback.ai_judge.calibration.on_fail=zero_weight keeps "
                              "its rows at weight zero instead)")
    result |= {"weight": 0.0, "message": message + "; its rows are weighted zero"}
    log.warning(result["message"])
    return result


def judged_share(feedback: pa.Table, cfg: JudgeConfig, judge: AIJudgeRun, ai_share: float, seed: int,
                 heldout: pd.DataFrame | None, prices=(None, None)) -> tuple[pa.Table, dict]:
    """Replace ``ai_share`` of the pairwise items by the judge's verdicts; the held-out pairs
    (against the held-out raters) and the gold pairs (calibration) are judged in the same pass."""
    items = pairwise_items(feedback)
    replaced = items_for_ai(items, ai_share, seed + 2)
    gold = gold_items(feedback, replaced, cfg.calibration.gold_pairs, seed + 3)
    heldout_items = [] if heldout is None else pair_items(heldout)
    judged_items = list(dict.fromkeys(replaced + heldout_items + list(gold)))
    started = time.monotonic()
    judging, answers = judge_pairs(judge.ask, judge.identity, judge.rubric, judged_items, judge.cache)
    wall_s = time.monotonic() - started
    verdicts = dict(zip(judged_items, judging.verdicts))
    calibration = calibration_of(cfg, gold, verdicts, judge.name)
    kept = [item for item in replaced if verdicts[item]["status"] == JUDGED]
    stats = {"judge_model": judge.name, "kind": cfg.kind, "rubric": judge.rubric.name,
             "rubric_digest": judge.rubric.digest, "ai_share": ai_share, "pairwise_items": len(items),
             "items_for_ai": len(replaced), "items_replaced": len(kept), "pairs_judged": judging.counts[JUDGED],
             "counts": judging.counts, "calibration": calibration,
             "position_bias": position_bias(judging.verdicts),
             "length_bias": length_bias(judged_items, judging.verdicts, heldout),
             "group_agreement": group_agreement(feedback, verdicts),
             "cost": cost_of(answers, judging.counts[JUDGED], prices, wall_s), "wall_time_s": round(wall_s, 1)}
    if heldout is not None and len(heldout):
        judged_heldout = heldout[[verdicts[item]["status"] == JUDGED for item in heldout_items]]
        if len(judged_heldout):
            stats |= judge_agreement(judged_heldout, {item: v["preference_a"] for item, v in verdicts.items()
                                                      if v["status"] == JUDGED})
    preference = {item: verdicts[item]["preference_a"] for item in kept}
    feedback = replace_share_by_ai(feedback, preference, kept)
    single_forms = [form for form in cfg.forms if form in ("rating", "thumbs")]
    if single_forms and judge.ask_rating is not None:
        feedback, stats["forms"] = judged_single_forms(feedback, single_forms, judge, ai_share, seed)
    return feedback, stats


def single_items(feedback: pa.Table, kind: str) -> list[tuple[str, str]]:
    """Distinct (prompt, response) of the rows of ``kind`` (rating or thumbs), first-seen order."""
    rows = feedback.filter(pc.equal(feedback.column("kind"), kind)).select(["prompt", "responses"])
    return list(dict.fromkeys((r["prompt"], r["responses"][0]) for r in rows.to_pylist()))


def judged_single_forms(feedback: pa.Table, forms: list[str], judge: AIJudgeRun, ai_share: float,
                        seed: int) -> tuple[pa.Table, dict]:
    """``ai_share`` of the rating and thumbs items rated by the judge instead of people: one
    rating asked per (prompt, response) serves both forms; items it could not rate keep their rows."""
    chosen = {form: items_for_ai(single_items(feedback, form), ai_share, seed + 4 + i)
              for i, form in enumerate(forms)}
    asked = list(dict.fromkeys(item for items in chosen.values() for item in items))
    judging, _ = judge_ratings(judge.ask_rating, judge.identity, judge.rubric, asked, judge.cache)
    verdicts = dict(zip(asked, judging.verdicts))
    replaced = {form: {item for item in items if verdicts[item]["status"] == JUDGED
                       and (form == "rating" or verdicts[item]["thumb"] is not None)}
                for form, items in chosen.items()}
    keep = [not (row["kind"] in replaced and (row["prompt"], row["responses"][0]) in replaced[row["kind"]])
            for row in feedback.select(["kind", "prompt", "responses"]).to_pylist()]
    rows = [rating_feedback(p, r, verdicts[(p, r)]["score"], AI_JUDGE_ID, scale=judge.rubric.scale,
                            flaws=verdicts[(p, r)]["flaws"], source="ai") for p, r in replaced.get("rating", ())]
    rows += [thumbs_feedback(p, r, verdicts[(p, r)]["thumb"], AI_JUDGE_ID, source="ai")
             for p, r in replaced.get("thumbs", ())]
    stats = {form: {"items_for_ai": len(chosen[form]), "items_replaced": len(replaced[form])} for form in forms}
    return pa.concat_tables([feedback.filter(pa.array(keep)), feedback_table(rows)]), {
        **stats, "counts": judging.counts}
