"""Preference pairs in the format of Hugging Face TRL and OpenRLHF: ``prompt``, ``chosen``,
``rejected``, each either text or a list of ``{"role", "content"}`` messages.

- Standard: ``prompt`` text, ``chosen``/``rejected`` text.
- Conversational: ``prompt`` messages (a leading system message allowed),
  ``chosen``/``rejected`` one assistant message each.
- Implicit prompt (no ``prompt``): ``chosen``/``rejected`` are whole conversations that must
  share every message but the last, which is the assistant's answer.
"""
from __future__ import annotations

from alignray.importers.core import (Converted, ImportOptions, RowRejected, messages_field, preference_pair,
                                     prompt_fields, required, text_field)


def _answer(row: dict, name: str) -> str:
    """A response given as text or as a single assistant message."""
    if isinstance(required(row, name), str):
        return row[name]
    messages = messages_field(row, name)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise RowRejected("bad conversation", name, f"{name} must be text or one assistant message")
    return messages[0]["content"]


def _implicit(row: dict) -> tuple[list[dict], str, str]:
    chosen, rejected = messages_field(row, "chosen"), messages_field(row, "rejected")
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise RowRejected("bad conversation", name, f"{name} must end with an assistant answer to a prompt")
    if chosen[:-1] != rejected[:-1]:
        raise RowRejected("prompts differ", "rejected", "chosen and rejected do not share their prompt")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def convert_preference_row(row: dict, options: ImportOptions) -> Converted:
    if row.get("prompt") is None:
        turns, chosen, rejected = _implicit(row)
    else:
        turns = ([{"role": "user", "content": text_field(row, "prompt")}] if isinstance(row["prompt"], str)
                 else messages_field(row, "prompt"))
        chosen, rejected = _answer(row, "chosen"), _answer(row, "rejected")
    return preference_pair(prompt_fields(turns, options, "prompt"), chosen, rejected, options)
