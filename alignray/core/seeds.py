"""Seeds derived from the run's seed, by one formula: a retried shard, a resumed run and every
rank draw exactly what the uninterrupted run drew (Python's ``hash()`` differs per process)."""
from __future__ import annotations


def derived_seed(seed: int, first: int, *more: int) -> int:
    """The seed of one draw in a run, e.g. ``derived_seed(seed, step, shard)``; distinct for
    distinct small coordinates (steps and epochs below 1,000,003, shards and ranks below 1,009)."""
    value = seed * 1_000_003 + first
    for part in more:
        value = value * 1_009 + part
    return value
