"""What every importer shares: a row's rejection with its reason, the options, the result
with its counts, the driver, and the messages of a conversation."""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

from alignray.data.prompts import ROLES, conversation_problems, render_conversation
from alignray.feedback.schema import pairwise_feedback
from alignray.data.validation import RowError, ValidationReport


class RowRejected(Exception):
    """One input row is unusable: ``reason`` counts it (e.g. "missing field"), ``field`` and
    ``message`` say where and why."""

    def __init__(self, reason: str, field: str, message: str):
        super().__init__(message)
        self.reason, self.field, self.message = reason, field, message


@dataclass(frozen=True)
class ImportOptions:
    annotator_id: str = "imported"  # who gave human preferences (HH-RLHF and TRL files name no one)
    judge: str = "gpt-4"  # the AI judge of UltraFeedback-style ratings: their annotator_id
    source_label: str = "imported"  # the prompts' and demonstrations' ``source``
    timestamp: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


@dataclass
class Converted:
    """One input row's alignray rows. ``prompt``: a PROMPT_SCHEMA row without ``prompt_id``."""

    prompt: dict
    demonstrations: list[dict] = field(default_factory=list)
    feedback: list[dict] = field(default_factory=list)


@dataclass
class Imported:
    """Everything one input gave; prompts are distinct (by text), ``prompt_id`` a content hash."""

    prompts: list[dict]
    demonstrations: list[dict]
    feedback: list[dict]
    report: ValidationReport


Converter = Callable[[dict, ImportOptions], Converted]


def import_records(records: Iterable[tuple[int, dict | RowRejected]], convert: Converter, options: ImportOptions,
                   file: str) -> Imported:
    """Convert each record (a row, or a reader's rejection of it) and count."""
    prompts: dict[str, dict] = {}
    demonstrations, feedback, errors = [], [], []
    reasons: Counter[str] = Counter()
    rows_in = 0
    for index, record in records:
        rows_in += 1
        try:
            if isinstance(record, RowRejected):
                raise record
            converted = convert(record, options)
        except RowRejected as rejected:
            errors.append(RowError(file, index, rejected.field, rejected.message))
            reasons[rejected.reason] += 1
            continue
        prompt = converted.prompt
        prompts.setdefault(prompt["prompt"], {"prompt_id": prompt_id(prompt["prompt"])} | prompt)
        demonstrations += converted.demonstrations
        feedback += converted.feedback
    report = ValidationReport(file, rows_in, rows_in - len(errors), len(errors), errors, dict(reasons))
    return Imported(list(prompts.values()), demonstrations, feedback, report)


def prompt_id(prompt: str) -> str:
    return hashlib.sha1(prompt.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- fields and messages

def required(row: dict, name: str):
    if name not in row or row[name] is None:
        raise RowRejected("missing field", name, f"missing field {name!r} (fields: {sorted(row)})")
    return row[name]


def text_field(row: dict, name: str) -> str:
    """A required text field, stripped; empty text is rejected."""
    value = required(row, name)
    if not isinstance(value, str):
        raise RowRejected("wrong type", name, f"{name} is {type(value).__name__}, not text")
    if not value.strip():
        raise RowRejected("empty text", name, f"{name} is empty")
    return value.strip()


def answer_field(row: dict, name: str, where: str | None = None) -> str:
    """A required response text; an empty one is rejected as "empty response"."""
    where = where or name
    value = row.get(name)
    if value is None:
        raise RowRejected("missing field", where, f"missing field {where!r}")
    if not isinstance(value, str):
        raise RowRejected("wrong type", where, f"{where} is {type(value).__name__}, not text")
    if not value.strip():
        raise RowRejected("empty response", where, f"{where} is empty")
    return value.strip()


def messages_field(row: dict, name: str) -> list[dict]:
    """A required non-empty list of {role, content} messages (system, user, assistant)."""
    value = required(row, name)
    if not isinstance(value, list) or not value:
        raise RowRejected("wrong type", name, f"{name} is {type(value).__name__}, not a list of messages")
    messages = []
    for i, message in enumerate(value):
        if (not isinstance(message, dict) or not isinstance(message.get("content"), str)
                or message.get("role") not in ("system", *ROLES)):
            raise RowRejected("bad conversation", name,
                              f"{name}[{i}] is not a {{role, content}} message with a known role and text")
        messages.append({"role": message["role"], "content": message["content"].strip()})
    return messages


def prompt_fields(messages: list[dict], options: ImportOptions, field_name: str) -> dict:
    """A prompt row (PROMPT_SCHEMA, without prompt_id) from the turns before a response."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    if problems := conversation_problems(turns):
        raise RowRejected("bad conversation", field_name, f"{field_name}: {'; '.join(problems)}")
    return {"prompt": render_conversation(turns), "system": system, "source": options.source_label,
            "conversation": turns}


def response_pair(chosen: str, rejected: str, field_names=("chosen", "rejected")) -> tuple[str, str]:
    """Two responses that can make a preference: both non-empty and different."""
    for name, text in zip(field_names, (chosen, rejected)):
        if not text.strip():
            raise RowRejected("empty response", name, f"the {name} response is empty")
    if chosen.strip() == rejected.strip():
        raise RowRejected("identical responses", field_names[1], "chosen and rejected responses are identical")
    return chosen.strip(), rejected.strip()


def demonstration(prompt: dict, response: str, source: str) -> dict:
    return {"prompt": prompt["prompt"], "response": response, "system": prompt["system"], "source": source,
            "conversation": prompt["conversation"]}


def preference_pair(prompt: dict, chosen: str, rejected: str, options: ImportOptions) -> Converted:
    """A human preference of ``chosen`` over ``rejected``: the pairwise feedback row, and
    the chosen response as a demonstration."""
    chosen, rejected = response_pair(chosen, rejected)
    a, b, winner = balanced_winner(prompt["prompt"], chosen, rejected)
    pair = pairwise_feedback(prompt["prompt"], a, b, winner, options.annotator_id, source="human",
                             timestamp=options.timestamp) | {"conversation": prompt["conversation"]}
    return Converted(prompt, [demonstration(prompt, chosen, options.source_label)], [pair])


def balanced_winner(prompt: str, chosen: str, rejected: str) -> tuple[str, str, str]:
    """``(response_a, response_b, winner)`` with the chosen response first or second by a
    content hash, so position never predicts the preference."""
    if hashlib.sha1((prompt + chosen).encode()).digest()[0] % 2:
        return rejected, chosen, "b"
    return chosen, rejected, "a"
