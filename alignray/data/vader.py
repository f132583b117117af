"""The VADER sentiment lexicon as ten real human raters.

``vader_lexicon.txt`` in the `vadersentiment` package has 7,520 entries (7,506 distinct
tokens), each with the mean, the standard deviation and the ten individual ratings
(integers in [-4, 4]) that ten people gave it. Keeping the ten ratings apart gives ten raters who really disagree.

A rater scores a text as the MEAN of their ratings over the lexicon words the text
contains (every occurrence counts). Never the sum: a sum pays for repeating one positive
word, and a policy optimised against it learns to say "best best best ...". A text with no
lexicon word scores 0.0, the neutral middle of the scale.

Raters are numbered 1..10, the position of their rating in the file's list.
"""
from __future__ import annotations

import importlib.util
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa

from alignray.data.validation import validate_table

NUM_RATERS = 10
RATING_RANGE = (-4, 4)

VADER_LEXICON_SCHEMA = pa.schema([
    pa.field("word", pa.string(), nullable=False),
    pa.field("mean", pa.float64(), nullable=False),
    pa.field("ratings", pa.list_(pa.int8()), nullable=False),  # rater 1 first
])

# Lowercase runs of letters and digits, with an inner apostrophe kept ("don't"). Emoticons
# in the lexicon (":)", ":-D") are not words and are not matched.
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """The lowercase words of ``text``."""
    return _WORD.findall(text.lower())


def vader_lexicon_path() -> Path:
    spec = importlib.util.find_spec("vaderSentiment")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the simulated raters need the `vadersentiment` package (pip install vadersentiment==3.3.2)")
    return Path(spec.submodule_search_locations[0]) / "vader_lexicon.txt"


def _check_lexicon_row(row: dict) -> list[tuple[str, str]]:
    ratings = row["ratings"]
    if len(ratings) != NUM_RATERS:
        return [("ratings", f"{len(ratings)} ratings, expected {NUM_RATERS}")]
    if not all(RATING_RANGE[0] <= r <= RATING_RANGE[1] for r in ratings):
        return [("ratings", f"a rating of {ratings} is outside {RATING_RANGE}")]
    return []


def load_vader_lexicon(path: str | os.PathLike | None = None) -> pa.Table:
    """The lexicon as a table (word, mean, ratings), validated; lines end with \\r\\n."""
    path = Path(path) if path is not None else vader_lexicon_path()
    rows = []
    with open(path, encoding="utf-8", newline="") as lexicon:
        for line in lexicon:
            word, mean, _std, ratings = line.rstrip("\r\n").split("\t")
            ratings = [int(r) for r in ratings.strip("[]").split(",")]
            rows.append({"word": word, "mean": float(mean), "ratings": ratings})
    table, _ = validate_table(pa.Table.from_pylist(rows), VADER_LEXICON_SCHEMA, str(path), [_check_lexicon_row])
    return table


class LexiconRaters:
    """The ten raters of a lexicon table; scores are means over the lexicon words found."""

    def __init__(self, lexicon: pa.Table):
        words = lexicon.column("word").to_pylist()
        # 14 tokens ("lol", "ok", "fav", ...) appear twice in the file; as in vaderSentiment's
        # own analyser, which builds a dict of the lines, the later entry wins.
        self._row_of_word = {word: i for i, word in enumerate(words)}
        self._ratings = np.asarray(lexicon.column("ratings").to_pylist(), dtype=float)

    def lexicon_words(self, text: str) -> list[str]:
        return [token for token in tokenize(text) if token in self._row_of_word]

    def all_scores(self, text: str) -> np.ndarray:
        """The ten raters' scores of ``text`` (index 0 is rater 1); zeros without lexicon words."""
        rows = [self._row_of_word[word] for word in self.lexicon_words(text)]
        return self._ratings[rows].mean(axis=0) if rows else np.zeros(NUM_RATERS)

    def mean_ratings(self) -> np.ndarray:
        """Each rater's mean rating over the lexicon's distinct words (index 0 is rater 1)."""
        return self._ratings[sorted(self._row_of_word.values())].mean(axis=0)


@lru_cache(maxsize=1)
def vader_raters() -> LexiconRaters:
    """The raters of the installed lexicon, loaded once per process."""
    return LexiconRaters(load_vader_lexicon())
