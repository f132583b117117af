"""Anthropic HH-RLHF rows: ``chosen`` and ``rejected`` are whole transcripts
``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant: <answer>"`` (the
first turn with or without its leading blank line) that
share everything up to the last ``\\n\\nAssistant:`` (the prompt, one or more turns) and
differ in the answer after it. A row whose transcripts do not share their prompt is
rejected, never guessed at."""
from __future__ import annotations

import re

from alignray.importers.core import (Converted, ImportOptions, RowRejected, preference_pair, prompt_fields,
                                     text_field)

ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")  # a transcript may begin "Human:" with no blank line
_ROLES = {"Human": "user", "Assistant": "assistant"}


def split_transcript(transcript: str, field: str) -> tuple[list[dict], str]:
    """``(turns before the last answer, the last answer)``."""
    cut = transcript.rfind(ASSISTANT)
    if cut < 0:
        raise RowRejected("bad conversation", field, f"{field} has no {ASSISTANT.strip()!r} turn")
    head, answer = transcript[:cut], transcript[cut + len(ASSISTANT):]
    pieces = _TURN.split(head)
    if pieces[0].strip():
        raise RowRejected("bad conversation", field, f"{field} does not start with a Human or Assistant turn")
    turns = [{"role": _ROLES[speaker], "content": text.strip()} for speaker, text in zip(pieces[1::2], pieces[2::2])]
    return turns, answer


def convert_hh_row(row: dict, options: ImportOptions) -> Converted:
    for name in ("chosen", "rejected"):
        text_field(row, name)  # present, text, not blank; split below as written
    chosen_turns, chosen = split_transcript(row["chosen"], "chosen")
    rejected_turns, rejected = split_transcript(row["rejected"], "rejected")
    if chosen_turns != rejected_turns:
        raise RowRejected("prompts differ", "rejected", "chosen and rejected do not share their prompt")
    return preference_pair(prompt_fields(chosen_turns, options, "chosen"), chosen, rejected, options)
