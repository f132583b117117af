"""The collection server's durable state: one SQLite file in WAL mode with synchronous=FULL,
so a committed write has been fsync'd before the server answers "saved".

It holds annotators and their credentials (only SHA-256 digests of tokens and one-time
login keys), tasks, each annotator's queue, and every label, skip and undo. Labels are
never deleted: an undo marks one, and a retried label_id (per annotator) is answered as a
duplicate and stored once. `feedback_table()` compacts the labels that stand into the
feedback parquet schema (alignray.feedback.schema), source "human".

One connection per store, guarded by a lock: the server calls it from worker threads, and
the admin command may write the same file from another process (SQLite serialises the
writers; the busy timeout waits for the other's commit).
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

import pyarrow as pa

from alignray.collect.labels import SKIP, FormSettings, Task, feedback_row, gold_correct
from alignray.feedback.schema import FEEDBACK_SCHEMA, validate_feedback
from alignray.serving.api import token_digest

ADMIN = "admin"
ANNOTATOR = "annotator"
SCHEMA = """
CREATE TABLE IF NOT EXISTS annotators (annotator_id TEXT PRIMARY KEY, grp TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS credentials (digest TEXT PRIMARY KEY, role TEXT NOT NULL, subject TEXT NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS login_keys (digest TEXT PRIMARY KEY, role TEXT NOT NULL, subject TEXT NOT NULL,
    created REAL NOT NULL, spent REAL);
CREATE TABLE IF NOT EXISTS tasks (task_id TEXT PRIMARY KEY, body TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS queue (annotator_id TEXT NOT NULL, task_id TEXT NOT NULL, position INTEGER NOT NULL,
    state TEXT NOT NULL, PRIMARY KEY (annotator_id, task_id));
CREATE INDEX IF NOT EXISTS queue_order ON queue (annotator_id, state, position);
CREATE TABLE IF NOT EXISTS labels (seq INTEGER PRIMARY KEY AUTOINCREMENT, annotator_id TEXT NOT NULL,
    label_id TEXT NOT NULL, task_id TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
    seconds REAL NOT NULL, created REAL NOT NULL, undone REAL, UNIQUE (annotator_id, label_id));
CREATE TABLE IF NOT EXISTS accuracy (labels INTEGER NOT NULL, accuracy REAL NOT NULL, model TEXT,
    created REAL NOT NULL);
"""


class StoreError(ValueError):
    """A request the state refuses; ``status`` is the HTTP code it maps to."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class NewAnnotator:
    annotator_id: str
    group: Optional[str]
    token: str  # shown once: the store keeps its digest only
    login_key: str


@dataclass(frozen=True)
class Credential:
    role: str  # "annotator" | "admin"
    subject: str  # the annotator id, or "admin"


class LabelStore:
    def __init__(self, path: str | Path, settings: FormSettings = FormSettings()):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._lock:
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, work):
        """Run ``work(db)`` in one immediate transaction: committed (and fsync'd) on return."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # ------------------------------------------------------------ annotators and credentials
    def add_annotator(self, annotator_id: str, group: Optional[str] = None) -> NewAnnotator:
        if not annotator_id or not isinstance(annotator_id, str) or annotator_id == ADMIN:
            raise StoreError(422, f"annotator_id: {annotator_id!r} is not a usable id")
        token, key = secrets.token_urlsafe(32), secrets.token_urlsafe(24)

        def add(db):
            if db.execute("SELECT 1 FROM annotators WHERE annotator_id=?", (annotator_id,)).fetchone():
                raise StoreError(409, f"annotator {annotator_id!r} exists already")
            now = time.time()
            db.execute("INSERT INTO annotators VALUES (?,?,?)", (annotator_id, group, now))
            db.execute("INSERT INTO credentials VALUES (?,?,?,?)", (token_digest(token), ANNOTATOR, annotator_id, now))
            db.execute("INSERT INTO login_keys VALUES (?,?,?,?,NULL)", (token_digest(key), ANNOTATOR, annotator_id, now))

        self._write(add)
        return NewAnnotator(annotator_id, group, token, key)

    def new_login_key(self, role: str, subject: str) -> str:
        """A fresh one-time key for ``subject`` (an annotator id, or "admin")."""
        key = secrets.token_urlsafe(24)
        self._write(lambda db: db.execute("INSERT INTO login_keys VALUES (?,?,?,?,NULL)",
                                          (token_digest(key), role, subject, time.time())))
        return key

    def redeem_login_key(self, key: str) -> Optional[tuple[Credential, str]]:
        """Spend a one-time key: its credential and a new session token, or None when the
        key is unknown or spent already."""
        session = secrets.token_urlsafe(32)

        def redeem(db):
            found = db.execute("SELECT role, subject FROM login_keys WHERE digest=? AND spent IS NULL",
                               (token_digest(key),)).fetchone()
            if found is None:
                return None
            db.execute("UPDATE login_keys SET spent=? WHERE digest=?", (time.time(), token_digest(key)))
            db.execute("INSERT INTO credentials VALUES (?,?,?,?)", (token_digest(session), *found, time.time()))
            return Credential(*found), session

        return self._write(redeem)

    def authenticate(self, token: str) -> Optional[Credential]:
        rows = self._read("SELECT role, subject FROM credentials WHERE digest=?", (token_digest(token),))
        return Credential(*rows[0]) if rows else None

    def annotator_groups(self) -> dict[str, Optional[str]]:
        return dict(self._read("SELECT annotator_id, grp FROM annotators ORDER BY annotator_id"))

    # ------------------------------------------------------------ tasks and queues
    def add_tasks(self, tasks: list[Task], assign_to: Optional[list[str]] = None) -> list[str]:
        """Store ``tasks`` and append them, in order, to the queues of ``assign_to`` (every
        annotator when None). A task id stored already with other content is a conflict."""
        def add(db):
            known = {row[0] for row in db.execute("SELECT annotator_id FROM annotators")}
            targets = sorted(known) if assign_to is None else list(assign_to)
            unknown = [who for who in targets if who not in known]
            if unknown:
                raise StoreError(404, f"assign_to: unknown annotators {unknown}")
            for task in tasks:
                body = json.dumps(task.__dict__, sort_keys=True)
                stored = db.execute("SELECT body FROM tasks WHERE task_id=?", (task.task_id,)).fetchone()
                if stored is None:
                    db.execute("INSERT INTO tasks VALUES (?,?,?)", (task.task_id, body, time.time()))
                elif stored[0] != body:
                    raise StoreError(409, f"task_id {task.task_id!r} exists already with other content")
            for who in targets:
                (last,) = db.execute("SELECT COALESCE(MAX(position), -1) FROM queue WHERE annotator_id=?",
                                     (who,)).fetchone()
                for offset, task in enumerate(tasks, start=last + 1):
                    db.execute("INSERT OR IGNORE INTO queue VALUES (?,?,?,'queued')", (who, task.task_id, offset))
            return [task.task_id for task in tasks]

        return self._write(add)

    def task(self, task_id: str) -> Task:
        rows = self._read("SELECT body FROM tasks WHERE task_id=?", (task_id,))
        if not rows:
            raise StoreError(404, f"task {task_id!r} does not exist")
        return Task(**json.loads(rows[0][0]))

    def queued_task(self, annotator_id: str, task_id: str) -> Task:
        """``task_id`` if it is in this annotator's queue (done or not); another's task is 403."""
        task = self.task(task_id)
        if not self._read("SELECT 1 FROM queue WHERE annotator_id=? AND task_id=?", (annotator_id, task_id)):
            raise StoreError(403, f"task {task_id!r} is not in your queue")
        return task

    def next_task(self, annotator_id: str) -> Optional[Task]:
        rows = self._read("SELECT task_id FROM queue WHERE annotator_id=? AND state='queued' "
                          "ORDER BY position LIMIT 1", (annotator_id,))
        return self.task(rows[0][0]) if rows else None

    def progress(self, annotator_id: str) -> dict:
        counts = dict(self._read("SELECT state, COUNT(*) FROM queue WHERE annotator_id=? GROUP BY state",
                                 (annotator_id,)))
        return {"done": counts.get("done", 0) + counts.get("skipped", 0), "queued": counts.get("queued", 0)}

    # ------------------------------------------------------------ labels
    def record(self, annotator_id: str, label: dict) -> bool:
        """Store one validated label (or skip) and take its task off the queue; True when
        this label_id was stored before (nothing changes then). Returns once committed."""
        def record(db):
            if db.execute("SELECT 1 FROM labels WHERE annotator_id=? AND label_id=?",
                          (annotator_id, label["label_id"])).fetchone():
                return True
            db.execute("INSERT INTO labels (annotator_id, label_id, task_id, kind, body, seconds, created) "
                       "VALUES (?,?,?,?,?,?,?)", (annotator_id, label["label_id"], label["task_id"], label["kind"],
                                                  json.dumps(label), float(label.get("seconds") or 0.0), time.time()))
            state = "skipped" if label["kind"] == SKIP else "done"
            db.execute("UPDATE queue SET state=? WHERE annotator_id=? AND task_id=? AND state='queued'",
                       (state, annotator_id, label["task_id"]))
            return False

        return self._write(record)

    def undo(self, annotator_id: str) -> Optional[str]:
        """Undo this annotator's last standing label or skip; its task returns to the
        queue (at its old place, so it comes next) once no label of it stands."""
        def undo(db):
            last = db.execute("SELECT seq, label_id, task_id FROM labels WHERE annotator_id=? AND undone IS NULL "
                              "ORDER BY seq DESC LIMIT 1", (annotator_id,)).fetchone()
            if last is None:
                return None
            seq, label_id, task_id = last
            db.execute("UPDATE labels SET undone=? WHERE seq=?", (time.time(), seq))
            if not db.execute("SELECT 1 FROM labels WHERE annotator_id=? AND task_id=? AND undone IS NULL",
                              (annotator_id, task_id)).fetchone():
                db.execute("UPDATE queue SET state='queued' WHERE annotator_id=? AND task_id=?", (annotator_id, task_id))
            return label_id

        return self._write(undo)

    def standing_labels(self) -> list[tuple[str, str, dict, float]]:
        """(annotator_id, task_id, label, created) of every label that stands, in order."""
        rows = self._read("SELECT annotator_id, task_id, body, created FROM labels WHERE undone IS NULL "
                          "AND kind != ? ORDER BY seq", (SKIP,))
        return [(who, task_id, json.loads(body), created) for who, task_id, body, created in rows]

    def label_ids(self) -> list[tuple[str, str]]:
        """(annotator_id, label_id) of every stored label and skip, undone ones included."""
        return self._read("SELECT annotator_id, label_id FROM labels ORDER BY seq")

    def version(self) -> int:
        """Changes whenever a label, skip or undo is stored: a cache key for derived views."""
        (seq, undone) = self._read("SELECT COALESCE(MAX(seq), 0), COUNT(undone) FROM labels")[0]
        return seq * 1_000_003 + undone

    def effort(self) -> dict[str, dict]:
        """Per annotator: labels and skips that stand, undone ones, seconds spent on all of
        them (undone work was paid too), and the first and last submission times."""
        rows = self._read("SELECT annotator_id, SUM(kind != ? AND undone IS NULL), SUM(kind = ? AND undone IS NULL), "
                          "SUM(undone IS NOT NULL), SUM(seconds), MIN(created), MAX(created) FROM labels "
                          "GROUP BY annotator_id", (SKIP, SKIP))
        return {who: {"labels": labels, "skips": skips, "undone": undone, "seconds": seconds,
                      "first": first, "last": last}
                for who, labels, skips, undone, seconds, first, last in rows}

    def gold_results(self) -> dict[str, tuple[int, int]]:
        """Per annotator: (gold answers judged, correct ones) over the labels that stand."""
        tasks: dict[str, Task] = {}
        results: dict[str, list[int]] = {}
        for who, task_id, label, _ in self.standing_labels():
            task = tasks.setdefault(task_id, self.task(task_id))
            correct = gold_correct(task, label)
            if correct is not None:
                tally = results.setdefault(who, [0, 0])
                tally[0] += 1
                tally[1] += int(correct)
        return {who: (n, correct) for who, (n, correct) in results.items()}

    # ------------------------------------------------------------ the reward model's progress
    def add_accuracy(self, labels: int, accuracy: float, model: Optional[str] = None) -> None:
        """A reward model's held-out accuracy after training on ``labels`` labels (reported
        by whoever retrains it): the admin page's accuracy-by-labels curve."""
        self._write(lambda db: db.execute("INSERT INTO accuracy VALUES (?,?,?,?)",
                                          (int(labels), float(accuracy), model, time.time())))

    def accuracy_curve(self) -> list[dict]:
        rows = self._read("SELECT labels, accuracy, model FROM accuracy ORDER BY labels, created")
        return [{"labels": labels, "accuracy": accuracy, "model": model} for labels, accuracy, model in rows]

    # ------------------------------------------------------------ compaction
    def feedback_rows(self) -> Iterable[dict]:
        groups = self.annotator_groups()
        tasks: dict[str, Task] = {}
        for who, task_id, label, created in self.standing_labels():
            task = tasks.setdefault(task_id, self.task(task_id))
            yield feedback_row(task, label, who, groups.get(who), self.settings,
                               datetime.fromtimestamp(created, timezone.utc))

    def feedback_table(self) -> pa.Table:
        """Every standing label as a feedback table, checked against the schema."""
        table = pa.Table.from_pylist(list(self.feedback_rows()), schema=FEEDBACK_SCHEMA)
        checked, _ = validate_feedback(table, str(self.path), self.settings.flaws, strict=True)
        return checked
