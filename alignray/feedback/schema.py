"""One parquet schema for every form of human (or AI, or simulated) feedback.

A feedback file is one flat table. ``kind`` says which form a row has; the columns of the
other forms are null in it:

=========  =======================  =========================================================
kind       responses                kind-specific columns
=========  =======================  =========================================================
pairwise   [response_a, response_b] ``winner`` "a" | "b" | "tie"; optional ``strength`` in
                                    [0, 1] (0 barely better, 1 decisively better)
ranking    k >= 2 responses         ``order``: a permutation of 0..k-1, best first
thumbs     [response]               ``thumb`` "up" | "down"
rating     [response]               ``score`` within [``scale_min``, ``scale_max``];
                                    optional ``flaws`` from a vocabulary (harmful, ...)
=========  =======================  =========================================================

Responses live in one list column, ``responses``, because a ranking has any number of
them; a pairwise row names them "a" and "b" by position. Every row carries
``annotator_id``, an optional ``annotator_group``, ``source`` (human | ai | simulated) and a
UTC ``timestamp``. A multi-turn prompt also carries its turns in ``conversation`` (as in
the prompts schema, ``alignray.data.prompts``; ``prompt`` is then their rendering).
"""
from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa

from alignray.data.prompts import MESSAGES_TYPE, conversation_check
from alignray.data.validation import RowCheck, ValidationReport, read_parquet_validated, validate_table, write_parquet

KINDS = ("pairwise", "ranking", "thumbs", "rating")
SOURCES = ("human", "ai", "simulated")
AI_JUDGE_ID = "ai-judge"  # the annotator id of the AI judge's rows (alignray.feedback.rlaif)
WINNERS = ("a", "b", "tie")
THUMBS = ("up", "down")
DEFAULT_FLAWS = ("harmful", "inaccurate", "unhelpful", "off_topic")

FEEDBACK_SCHEMA = pa.schema([
    pa.field("kind", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("responses", pa.list_(pa.string()), nullable=False),
    pa.field("winner", pa.string()),
    pa.field("strength", pa.float64()),
    pa.field("order", pa.list_(pa.int32())),
    pa.field("thumb", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("scale_min", pa.float64()),
    pa.field("scale_max", pa.float64()),
    pa.field("flaws", pa.list_(pa.string())),
    pa.field("annotator_id", pa.string(), nullable=False),
    pa.field("annotator_group", pa.string()),
    pa.field("source", pa.string(), nullable=False),
    pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("conversation", MESSAGES_TYPE),
])

# The columns each kind may (and for all but strength and flaws, must) fill.
_KIND_FIELDS = {
    "pairwise": {"winner", "strength"},
    "ranking": {"order"},
    "thumbs": {"thumb"},
    "rating": {"score", "scale_min", "scale_max", "flaws"},
}
_ALL_KIND_FIELDS = set().union(*_KIND_FIELDS.values())


def _check_pairwise(row: dict) -> list[tuple[str, str]]:
    errors = []
    if len(row["responses"]) != 2:
        errors.append(("responses", f"pairwise needs 2 responses, got {len(row['responses'])}"))
    if row["winner"] not in WINNERS:
        errors.append(("winner", f"winner {row['winner']!r} is not one of {WINNERS}"))
    strength = row["strength"]
    if strength is not None and not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
        errors.append(("strength", f"strength {strength} is outside [0, 1]"))
    return errors


def _check_ranking(row: dict) -> list[tuple[str, str]]:
    k = len(row["responses"])
    if k < 2:
        return [("responses", f"ranking needs at least 2 responses, got {k}")]
    order = row["order"]
    if order is None or sorted(order) != list(range(k)):
        return [("order", f"order {order} is not a permutation of 0..{k - 1}")]
    return []


def _check_thumbs(row: dict) -> list[tuple[str, str]]:
    errors = []
    if len(row["responses"]) != 1:
        errors.append(("responses", f"thumbs needs 1 response, got {len(row['responses'])}"))
    if row["thumb"] not in THUMBS:
        errors.append(("thumb", f"thumb {row['thumb']!r} is not one of {THUMBS}"))
    return errors


def _rating_checker(flaw_vocabulary: Sequence[str]):
    vocabulary = set(flaw_vocabulary)

    def check_rating(row: dict) -> list[tuple[str, str]]:
        errors = []
        if len(row["responses"]) != 1:
            errors.append(("responses", f"rating needs 1 response, got {len(row['responses'])}"))
        low, high, score = row["scale_min"], row["scale_max"], row["score"]
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high) and low < high):
            errors.append(("scale_max", f"scale [{low}, {high}] is not a finite interval"))
        elif score is None or not (low <= score <= high):
            errors.append(("score", f"score {score} is outside the scale [{low}, {high}]"))
        unknown = sorted(set(row["flaws"] or ()) - vocabulary)
        if unknown:
            errors.append(("flaws", f"unknown flaws {unknown}; known: {sorted(vocabulary)}"))
        return errors

    return check_rating


def feedback_row_checks(flaw_vocabulary: Sequence[str] = DEFAULT_FLAWS) -> list[RowCheck]:
    """The per-row checks of a feedback table (kinds, sources and each kind's fields)."""
    per_kind = {
        "pairwise": _check_pairwise,
        "ranking": _check_ranking,
        "thumbs": _check_thumbs,
        "rating": _rating_checker(flaw_vocabulary),
    }

    def check_row(row: dict) -> list[tuple[str, str]]:
        errors = []
        if row["source"] not in SOURCES:
            errors.append(("source", f"source {row['source']!r} is not one of {SOURCES}"))
        if any(response is None for response in row["responses"]):
            errors.append(("responses", "a response is null"))
        errors += conversation_check(row)
        kind = row["kind"]
        if kind not in per_kind:
            return errors + [("kind", f"kind {kind!r} is not one of {KINDS}")]
        # A value in another kind's column would be silently ignored downstream: refuse it.
        for name in sorted(_ALL_KIND_FIELDS - _KIND_FIELDS[kind]):
            if row[name] is not None:
                errors.append((name, f"{name} is set but kind is {kind!r}"))
        return errors + per_kind[kind](row)

    return [check_row]


def validate_feedback(
    table: pa.Table,
    file: str = "<feedback>",
    flaw_vocabulary: Sequence[str] = DEFAULT_FLAWS,
    strict: bool = True,
) -> tuple[pa.Table, ValidationReport]:
    return validate_table(table, FEEDBACK_SCHEMA, file, feedback_row_checks(flaw_vocabulary), strict)


def read_feedback(
    path: str | os.PathLike,
    flaw_vocabulary: Sequence[str] = DEFAULT_FLAWS,
    strict: bool = True,
) -> tuple[pa.Table, ValidationReport]:
    return read_parquet_validated(path, FEEDBACK_SCHEMA, feedback_row_checks(flaw_vocabulary), strict)


def read_feedback_files(path: str | os.PathLike,
                        flaw_vocabulary: Sequence[str] = DEFAULT_FLAWS) -> tuple[pa.Table, list[ValidationReport]]:
    """The accepted rows of a feedback file, or of every ``*.parquet`` in a folder, and one
    report per file (bad rows are counted and named there, never raised)."""
    if not path:
        raise ValueError("feedback.source=files needs feedback.path (a parquet file or a folder of them)")
    root = Path(path)
    files = sorted(root.glob("*.parquet")) if root.is_dir() else [root]
    if not files:
        raise FileNotFoundError(f"no parquet files in {root}")
    read = [read_feedback(file, flaw_vocabulary, strict=False) for file in files]
    return pa.concat_tables([table for table, _ in read]), [report for _, report in read]


def write_feedback(
    rows: pa.Table | Iterable[dict],
    path: str | os.PathLike,
    flaw_vocabulary: Sequence[str] = DEFAULT_FLAWS,
) -> pa.Table:
    rows = rows if isinstance(rows, pa.Table) else list(rows)
    return write_parquet(rows, path, FEEDBACK_SCHEMA, feedback_row_checks(flaw_vocabulary))


def feedback_table(rows: Iterable[dict]) -> pa.Table:
    """Rows (as made by the constructors below) as a table with the feedback schema."""
    return pa.Table.from_pylist(list(rows), schema=FEEDBACK_SCHEMA)


# Row constructors: one per kind, so every producer (simulated annotators, the AI judge,
# importers of human data) fills the same columns the same way.

def _row(kind, prompt, responses, annotator_id, source, annotator_group, timestamp) -> dict:
    return {
        "kind": kind,
        "prompt": prompt,
        "responses": list(responses),
        "annotator_id": annotator_id,
        "annotator_group": annotator_group,
        "source": source,
        "timestamp": timestamp or datetime.now(timezone.utc),
    }


def pairwise_feedback(prompt, response_a, response_b, winner, annotator_id, *, strength=None,
                      source="human", annotator_group=None, timestamp=None) -> dict:
    row = _row("pairwise", prompt, [response_a, response_b], annotator_id, source, annotator_group, timestamp)
    return row | {"winner": winner, "strength": strength}


def ranking_feedback(prompt, responses, order, annotator_id, *, source="human",
                     annotator_group=None, timestamp=None) -> dict:
    row = _row("ranking", prompt, responses, annotator_id, source, annotator_group, timestamp)
    return row | {"order": [int(i) for i in order]}


def thumbs_feedback(prompt, response, thumb, annotator_id, *, source="human",
                    annotator_group=None, timestamp=None) -> dict:
    row = _row("thumbs", prompt, [response], annotator_id, source, annotator_group, timestamp)
    return row | {"thumb": thumb}


def rating_feedback(prompt, response, score, annotator_id, *, scale=(1.0, 7.0), flaws=(),
                    source="human", annotator_group=None, timestamp=None) -> dict:
    row = _row("rating", prompt, [response], annotator_id, source, annotator_group, timestamp)
    return row | {"score": float(score), "scale_min": float(scale[0]), "scale_max": float(scale[1]),
                  "flaws": list(flaws)}
