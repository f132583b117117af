"""The study's labeller: simulated annotators answering tasks through the collection API
(notes: the HTTP contract of issue #16), with two back ends of the same operations.

* :class:`HttpDesk` speaks to a running collection server: admin ``POST
  /admin/api/annotators`` and ``POST /admin/api/tasks``, annotator ``GET /api/task`` and
  ``POST /api/labels`` with a bearer token, admin ``GET /admin/api/feedback`` (parquet);
* :class:`InProcessDesk` keeps the same queues in memory, for speed while developing and
  for tests: one queue per annotator, tasks in the order given, idempotent label ids,
  feedback as FEEDBACK_SCHEMA rows with source "human" and the annotator's group.

:func:`answer_queue` is one simulated annotator working through its queue as a person
would: fetch a task, judge it (alignray.feedback.simulated), post the label, until the
queue is empty.
"""
from __future__ import annotations

import io
import itertools
import time
from collections import deque

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import requests

from alignray.feedback.schema import feedback_table, pairwise_feedback
from alignray.feedback.simulated import SimulatedAnnotator


class InProcessDesk:
    """The collection API's queues and labels in memory (pairwise labels only)."""

    def __init__(self):
        self._annotators: dict[str, tuple[str, str | None]] = {}  # token -> (annotator_id, group)
        self._queues: dict[str, deque] = {}
        self._tasks: dict[str, dict] = {}
        self._labels: dict[str, dict] = {}  # label_id -> feedback row
        self._ids = itertools.count()
        self.accuracy_curve: list[dict] = []

    def add_annotator(self, annotator_id: str, group: str | None) -> str:
        token = f"token-{annotator_id}"
        self._annotators[token] = (annotator_id, group)
        self._queues[annotator_id] = deque()
        return token

    def add_tasks(self, tasks: list[dict], assign_to: list[str] | None) -> list[str]:
        ids = []
        for task in tasks:
            task_id = task.get("task_id") or f"task-{next(self._ids)}"
            self._tasks[task_id] = task | {"task_id": task_id}
            ids.append(task_id)
        for annotator in self._queues if assign_to is None else assign_to:
            self._queues[annotator].extend(ids)
        return ids

    def next_task(self, token: str) -> dict | None:
        annotator, _ = self._annotators[token]
        queue = self._queues[annotator]
        return {key: value for key, value in self._tasks[queue[0]].items() if key != "gold"} if queue else None

    def submit(self, token: str, label: dict) -> dict:
        annotator, group = self._annotators[token]
        if label["label_id"] in self._labels:
            return {"saved": True, "label_id": label["label_id"], "duplicate": True}
        task = self._tasks[label["task_id"]]
        self._queues[annotator].remove(label["task_id"])
        self._labels[label["label_id"]] = pairwise_feedback(task["prompt"], *task["responses"], label["winner"],
                                                            annotator, source="human", annotator_group=group)
        return {"saved": True, "label_id": label["label_id"], "duplicate": False}

    def feedback(self) -> pa.Table:
        return feedback_table(self._labels.values())

    def report_accuracy(self, labels: int, accuracy: float, model: str) -> None:
        self.accuracy_curve.append({"labels": labels, "accuracy": accuracy, "model": model})


class HttpDesk:
    """The same operations against a collection server at ``url`` (admin token ``admin_token``)."""

    def __init__(self, url: str, admin_token: str, timeout_s: float = 10.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self.session = requests.Session()
        self._admin = {"Authorization": f"Bearer {admin_token}"}

    def _call(self, method: str, path: str, token: str | None = None, **kwargs) -> requests.Response:
        headers = self._admin if token is None else {"Authorization": f"Bearer {token}"}
        answer = self.session.request(method, self.url + path, headers=headers, timeout=self.timeout_s, **kwargs)
        if answer.status_code >= 400:
            raise RuntimeError(f"{method} {path} answered {answer.status_code}: {answer.text[:300]}")
        return answer

    def add_annotator(self, annotator_id: str, group: str | None) -> str:
        return self._call("POST", "/admin/api/annotators", json={"annotator_id": annotator_id, "group": group}
                          ).json()["token"]

    def add_tasks(self, tasks: list[dict], assign_to: list[str] | None) -> list[str]:
        return self._call("POST", "/admin/api/tasks", json={"tasks": tasks, "assign_to": assign_to}).json()["task_ids"]

    def next_task(self, token: str) -> dict | None:
        answer = self._call("GET", "/api/task", token)
        return None if answer.status_code == 204 else answer.json()

    def submit(self, token: str, label: dict) -> dict:
        return self._call("POST", "/api/labels", token, json=label).json()

    def feedback(self) -> pa.Table:
        return pq.read_table(io.BytesIO(self._call("GET", "/admin/api/feedback").content))

    def report_accuracy(self, labels: int, accuracy: float, model: str) -> None:
        """The retrained model's held-out accuracy, for the admin page's curve."""
        self._call("POST", "/admin/api/accuracy", json={"labels": labels, "accuracy": accuracy, "model": model})


def pair_task(prompt: str, response_a: str, response_b: str) -> dict:
    """A task of the collection API showing two responses to ``prompt``."""
    return {"task_id": None, "prompt": prompt, "conversation": None, "responses": [response_a, response_b],
            "gold": None}


def answer_queue(desk, token: str, annotator: SimulatedAnnotator, rng: np.random.Generator) -> int:
    """``annotator`` labels every task in its queue, pairwise; returns the number labelled."""
    done = 0
    while (task := desk.next_task(token)) is not None:
        started = time.monotonic()
        winner = annotator.pairwise(task["prompt"], *task["responses"], rng)["winner"]
        desk.submit(token, {"label_id": f"{annotator.annotator_id}-{task['task_id']}", "task_id": task["task_id"],
                            "kind": "pairwise", "winner": winner, "strength": None, "order": None, "thumb": None,
                            "score": None, "flaws": None, "seconds": time.monotonic() - started})
        done += 1
    return done
