"""Tasks and labels of the collection server, and how a label becomes a feedback row.

A task is a prompt (with its conversation, if any) and 2..k responses; it enables some of
the feedback forms. A label is one answer in one form; the rating and thumbs forms judge
one response of the task (``response``, an index, 0 unless told). Each label is checked
by building the row it will compact to and running the feedback schema's own row checks,
so a label the server accepts is always a valid feedback row.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from alignray.data.prompts import conversation_problems, render_conversation
from alignray.feedback.schema import (DEFAULT_FLAWS, FEEDBACK_SCHEMA, KINDS, feedback_row_checks, pairwise_feedback,
                                      ranking_feedback, rating_feedback, thumbs_feedback)

SKIP = "skip"
MAX_RESPONSES = 8


class LabelError(ValueError):
    """A label that does not fit its task: ``field`` names the offending field (422)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class Task:
    task_id: str
    prompt: str
    responses: list[str]
    conversation: Optional[list[dict]] = None
    forms: list[str] = field(default_factory=list)
    gold_winner: Optional[str] = None  # "a" | "b" for a gold item, whose answer is known

    def public(self) -> dict:
        """What an annotator sees: everything but the gold answer."""
        return {"task_id": self.task_id, "prompt": self.prompt, "conversation": self.conversation,
                "responses": list(self.responses), "forms": list(self.forms)}


def default_forms(enabled: Sequence[str], responses: int) -> list[str]:
    """The enabled forms that fit a task of ``responses`` responses: pairwise needs two,
    ranking at least two; thumbs and rating judge one response at a time."""
    fits = {"pairwise": responses == 2, "ranking": responses >= 2, "thumbs": True, "rating": True}
    return [form for form in enabled if fits[form]]


def make_task(item: dict, enabled_forms: Sequence[str], where: str = "task") -> Task:
    """A task from an admin's item ``{task_id?, prompt?, conversation?, responses, gold?, forms?}``;
    a bad item is a ValueError naming ``where`` and the field. Without a task_id, the id is a
    hash of the content, so loading the same item twice gives the same task."""
    conversation = item.get("conversation")
    if conversation is not None:
        problems = conversation_problems(conversation)
        if problems:
            raise ValueError(f"{where}.conversation: {problems[0]}")
        conversation = [{"role": m["role"], "content": m["content"]} for m in conversation]
    prompt = item.get("prompt") or (render_conversation(conversation) if conversation else None)
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"{where}.prompt: a non-empty prompt (or a conversation) is required")
    if conversation is not None and render_conversation(conversation) != prompt:
        raise ValueError(f"{where}.prompt: is not the rendering of its conversation")
    responses = item.get("responses")
    if (not isinstance(responses, list) or not 1 <= len(responses) <= MAX_RESPONSES
            or not all(isinstance(r, str) for r in responses)):
        raise ValueError(f"{where}.responses: a list of 1..{MAX_RESPONSES} texts is required")
    gold = item.get("gold")
    gold_winner = gold.get("winner") if isinstance(gold, dict) else None
    if gold is not None and (gold_winner not in ("a", "b") or len(responses) != 2):
        raise ValueError(f"{where}.gold: gold is {{\"winner\": \"a\"|\"b\"}} on a task of two responses")
    forms = item.get("forms") or default_forms(enabled_forms, len(responses))
    unknown = sorted(set(forms) - set(KINDS))
    if unknown:
        raise ValueError(f"{where}.forms: unknown forms {unknown}; known: {list(KINDS)}")
    if gold_winner and "pairwise" not in forms:
        raise ValueError(f"{where}.forms: a gold item needs the pairwise form")
    task_id = item.get("task_id") or content_id(prompt, responses)
    return Task(str(task_id), prompt, list(responses), conversation, list(forms), gold_winner)


def content_id(prompt: str, responses: Sequence[str]) -> str:
    return "t-" + hashlib.sha256(json.dumps([prompt, list(responses)]).encode()).hexdigest()[:16]


class LabelBody(BaseModel):
    """POST /api/labels (see docs/collect_api.md); one form's fields per label."""
    model_config = ConfigDict(extra="forbid")
    label_id: StrictStr = Field(min_length=1, max_length=128)
    task_id: StrictStr = Field(min_length=1, max_length=256)
    kind: Literal["pairwise", "ranking", "thumbs", "rating", "skip"]
    winner: Optional[Literal["a", "b", "tie"]] = None
    strength: Optional[float] = None
    order: Optional[list[int]] = None
    thumb: Optional[Literal["up", "down"]] = None
    score: Optional[float] = None
    flaws: Optional[list[StrictStr]] = None
    response: int = Field(0, ge=0, description="the response a rating or thumbs label judges")
    seconds: float = Field(0.0, ge=0.0, le=24 * 3600)


@dataclass(frozen=True)
class FormSettings:
    scale: tuple[float, float] = (1.0, 7.0)
    flaws: tuple[str, ...] = DEFAULT_FLAWS


def feedback_row(task: Task, label: dict, annotator_id: str, group: Optional[str],
                 settings: FormSettings, timestamp: Optional[datetime] = None) -> dict:
    """The feedback row (alignray.feedback.schema) of one label on ``task``."""
    kind = label["kind"]
    common = dict(source="human", annotator_group=group, timestamp=timestamp or datetime.now(timezone.utc))
    if kind == "pairwise":
        row = pairwise_feedback(task.prompt, *task.responses[:2], label["winner"], annotator_id,
                                strength=label.get("strength"), **common)
        if len(task.responses) != 2:
            row["responses"] = list(task.responses)  # the schema check names the count
    elif kind == "ranking":
        row = ranking_feedback(task.prompt, task.responses, label.get("order") or [], annotator_id, **common)
    else:
        response = task.responses[label.get("response") or 0]
        if kind == "thumbs":
            row = thumbs_feedback(task.prompt, response, label.get("thumb"), annotator_id, **common)
        else:
            score = label.get("score")
            row = rating_feedback(task.prompt, response, score if score is not None else float("nan"), annotator_id,
                                  scale=settings.scale, flaws=label.get("flaws") or (), **common)
    return row | {"conversation": task.conversation}


def check_label(task: Task, label: LabelBody, settings: FormSettings) -> None:
    """Raise LabelError (naming the field) unless ``label`` is a valid answer to ``task``."""
    if label.kind == SKIP:
        return
    if label.kind not in task.forms:
        raise LabelError("kind", f"this task asks for {task.forms}, not {label.kind!r}")
    if label.kind in ("thumbs", "rating") and label.response >= len(task.responses):
        raise LabelError("response", f"index {label.response} but the task has {len(task.responses)} responses")
    needed = {"pairwise": "winner", "ranking": "order", "thumbs": "thumb", "rating": "score"}[label.kind]
    if getattr(label, needed) is None:
        raise LabelError(needed, f"a {label.kind} label needs {needed}")
    row = feedback_row(task, label.model_dump(), "check", None, settings)
    (check,) = feedback_row_checks(settings.flaws)
    errors = check({name: row.get(name) for name in FEEDBACK_SCHEMA.names})
    if errors:
        raise LabelError(*errors[0])


def gold_correct(task: Task, label: dict) -> Optional[bool]:
    """Whether a label on a gold item agrees with its known answer; None when the label
    says nothing about it (not a gold item, or a form without a preference)."""
    if task.gold_winner is None:
        return None
    if label["kind"] == "pairwise":
        return label["winner"] == task.gold_winner
    if label["kind"] == "ranking":
        order = label["order"]
        return (order.index(0) < order.index(1)) == (task.gold_winner == "a")
    return None
