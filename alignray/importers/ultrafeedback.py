"""UltraFeedback-style rows: one prompt (``instruction``, or ``prompt``), several
``completions``, each ``{"model", "response", "annotations": {aspect: {"Rating": "1".."5",
"Rationale": ...}}}`` rated by a named AI judge (GPT-4 in UltraFeedback).

Each row gives one rating row per completion and rated aspect (``source="ai"``, the judge
as annotator, the aspect as annotator group; a rating of "N/A" is no rating) and one
ranking row of the rated completions, best mean rating first (ties keep file order). The
best completion is also a demonstration.
"""
from __future__ import annotations

from alignray.feedback.schema import ranking_feedback, rating_feedback
from alignray.importers.core import (Converted, ImportOptions, RowRejected, answer_field, demonstration,
                                     prompt_fields, required, text_field)

SCALE = (1.0, 5.0)
NOT_RATED = ("N/A", "", None)


def _ratings(annotations, where: str) -> dict[str, float]:
    """Aspect -> rating of one completion; an aspect may hold a list of judgements (the first counts)."""
    if not isinstance(annotations, dict):
        raise RowRejected("wrong type", where, f"{where} is {type(annotations).__name__}, not an object of aspects")
    ratings = {}
    for aspect, judgement in annotations.items():
        judgement = judgement[0] if isinstance(judgement, list) and judgement else judgement
        value = judgement.get("Rating") if isinstance(judgement, dict) else None
        if value in NOT_RATED:
            continue
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise RowRejected("wrong type", f"{where}.{aspect}", f"rating {value!r} is not a number") from None
        if not SCALE[0] <= score <= SCALE[1]:
            raise RowRejected("rating out of scale", f"{where}.{aspect}", f"rating {score} is outside {SCALE}")
        ratings[aspect] = score
    return ratings


def _rated_completions(row: dict) -> list[tuple[str, dict[str, float]]]:
    completions = required(row, "completions")
    if not isinstance(completions, list):
        raise RowRejected("wrong type", "completions", "completions is not a list")
    rated = []
    for i, completion in enumerate(completions):
        where = f"completions[{i}]"
        if not isinstance(completion, dict):
            raise RowRejected("wrong type", where, f"{where} is not an object")
        response = answer_field(completion, "response", f"{where}.response")
        if ratings := _ratings(required(completion, "annotations"), f"{where}.annotations"):
            rated.append((response, ratings))
    if len(rated) < 2:
        raise RowRejected("too few rated completions", "completions",
                          f"{len(rated)} rated completions; a ranking needs 2")
    if len({response for response, _ in rated}) < len(rated):
        raise RowRejected("identical responses", "completions", "two rated completions are identical")
    return rated


def convert_ultrafeedback_row(row: dict, options: ImportOptions) -> Converted:
    name = "instruction" if "instruction" in row else "prompt"
    prompt = prompt_fields([{"role": "user", "content": text_field(row, name)}], options, name)
    rated = _rated_completions(row)
    common = {"source": "ai", "timestamp": options.timestamp}
    feedback = [rating_feedback(prompt["prompt"], response, score, options.judge, scale=SCALE,
                                annotator_group=aspect, **common)
                for response, ratings in rated for aspect, score in ratings.items()]
    means = [sum(r.values()) / len(r) for _, r in rated]
    order = sorted(range(len(rated)), key=lambda i: -means[i])
    feedback.append(ranking_feedback(prompt["prompt"], [response for response, _ in rated], order, options.judge,
                                     **common))
    feedback = [row | {"conversation": prompt["conversation"]} for row in feedback]
    return Converted(prompt, [demonstration(prompt, rated[order[0]][0], options.source_label)], feedback)
