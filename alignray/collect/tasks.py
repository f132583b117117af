"""Task files and per-annotator queues with gold items mixed in.

A tasks file is JSON lines or parquet, one task per line or row:
``{"prompt": str | "conversation": [{role, content}, ...], "responses": [str, ...],
"gold": {"winner": "a" | "b"} | null, "task_id": str | null, "forms": [...] | null}``.
Rows with ``gold`` are gold items: their answer is known, and they are spread through every
queue at random places, so an annotator cannot tell them from the others.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Sequence

import pyarrow.parquet as pq

from alignray.collect.labels import Task, make_task


def read_task_items(path: str | Path) -> list[dict]:
    """The items of a tasks file; a line that is not JSON is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tasks file {path} does not exist")
    if path.suffix == ".parquet":
        return [{key: value for key, value in row.items() if value is not None}
                for row in pq.read_table(path).to_pylist()]
    items = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
    return items


def read_tasks(path: str | Path, enabled_forms: Sequence[str]) -> list[Task]:
    items = read_task_items(path)
    if not items:
        raise ValueError(f"tasks file {path} holds no task")
    return [make_task(item, enabled_forms, f"{path}:{number}") for number, item in enumerate(items, start=1)]


def gold_count(regular: int, fraction: float) -> int:
    """How many gold items make ``fraction`` of a queue of ``regular`` other tasks."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"gold_fraction must be in [0, 1), not {fraction}")
    return math.ceil(regular * fraction / (1.0 - fraction) - 1e-9) if regular else 0


def mixed_queue(tasks: Sequence[Task], fraction: float, annotator_id: str, seed: int = 0) -> list[Task]:
    """The regular tasks in their order, with gold items at random places so that they make
    about ``fraction`` of the queue (at most every gold item once: a queue holds a task
    once); a different draw (places and items) per annotator."""
    regular = [task for task in tasks if task.gold_winner is None]
    gold = [task for task in tasks if task.gold_winner is not None]
    rng = random.Random(int(hashlib.sha256(f"{seed}:{annotator_id}".encode()).hexdigest()[:12], 16))
    queue = list(regular)
    for task in rng.sample(gold, min(len(gold), gold_count(len(regular), fraction))):
        queue.insert(rng.randint(0, len(queue)), task)
    return queue
