"""Verdicts already paid for, in SQLite: keyed by everything that decides one (the judge and
its decoding settings, the rubric's digest, the form, the exact question with both replies in
their order, the labels), so a rerun or a crash never pays twice and an edited rubric is asked
afresh. Each verdict is committed as it arrives (WAL, synchronous=FULL: it survives a crash of
the phase). Failed requests are not stored: they are asked again next time."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Optional

from alignray.judges.verdicts import FAILED, Answer


def verdict_key(**decides) -> str:
    return hashlib.sha256(json.dumps(decides, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class VerdictCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()  # one connection, shared by the judge's request threads
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
        self.hits = 0

    def get(self, key: str) -> Optional[Answer]:
        with self.lock:
            row = self.db.execute("SELECT answer FROM verdicts WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        self.hits += 1
        return Answer(**json.loads(row[0]))

    def put(self, key: str, answer: Answer) -> None:
        if answer.status == FAILED:
            return
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?)", (key, json.dumps(answer.to_dict())))

    def __len__(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]

    def close(self) -> None:
        with self.lock:
            self.db.close()
