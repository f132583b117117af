"""A per-key token bucket: each key (an annotator) may send ``burst`` requests at once and
``rate_per_minute`` on average. Pure: the caller passes the time, so tests need no sleeps."""
from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, rate_per_minute: float, burst: int):
        if rate_per_minute <= 0 or burst < 1:
            raise ValueError(f"rate_per_minute ({rate_per_minute}) must be > 0 and burst ({burst}) >= 1")
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, now: float) -> float:
        """0.0 when ``key`` may proceed (one token taken), else the seconds until it may."""
        with self._lock:
            bucket = self._buckets.setdefault(key, _Bucket(self.burst, now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate
