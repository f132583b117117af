"""SFT demonstrations: ``prompt``/``completion`` (each text, or messages as in TRL's
conversational prompt-completion format), or ``messages``: a whole conversation whose last
message is the assistant's answer and whose earlier messages are its prompt."""
from __future__ import annotations

from alignray.importers.core import (Converted, ImportOptions, RowRejected, answer_field, demonstration,
                                     messages_field, prompt_fields, required, text_field)


def _completion(row: dict) -> str:
    if isinstance(required(row, "completion"), str):
        return answer_field(row, "completion")
    messages = messages_field(row, "completion")
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise RowRejected("bad conversation", "completion", "completion must be text or one assistant message")
    if not messages[0]["content"]:
        raise RowRejected("empty response", "completion", "the completion is empty")
    return messages[0]["content"]


def convert_demonstration(row: dict, options: ImportOptions) -> Converted:
    if "messages" in row:
        messages = messages_field(row, "messages")
        if messages[-1]["role"] != "assistant" or not messages[-1]["content"]:
            raise RowRejected("bad conversation", "messages", "the last message must be a non-empty assistant answer")
        prompt, response = prompt_fields(messages[:-1], options, "messages"), messages[-1]["content"]
    else:
        turns = ([{"role": "user", "content": text_field(row, "prompt")}] if isinstance(row.get("prompt"), str)
                 else messages_field(row, "prompt"))
        prompt, response = prompt_fields(turns, options, "prompt"), _completion(row)
    return Converted(prompt, [demonstration(prompt, response, options.source_label)])
