"""The collection server's pure parts: the label store (idempotency, undo, compaction into
the feedback schema), label checks, gold items and the live verdicts, queues, the rate
limiter. No Ray, no HTTP."""
from __future__ import annotations

import sqlite3

import pytest

from alignray.collect.labels import FormSettings, LabelBody, LabelError, check_label, make_task
from alignray.collect.quality import gold_verdict, live_quality
from alignray.collect.ratelimit import RateLimiter
from alignray.collect.store import LabelStore, StoreError
from alignray.collect.tasks import gold_count, mixed_queue, read_tasks
from alignray.config.collect import CollectConfig, CollectQualityConfig
from alignray.data.prompts import render_conversation
from alignray.feedback.schema import read_feedback, write_feedback

FORMS = ["pairwise", "ranking", "thumbs", "rating"]
SETTINGS = FormSettings()
CONVERSATION = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Tell me about the weather"}]


def task_items(n: int, gold_every: int = 0) -> list[dict]:
    items = []
    for i in range(n):
        item = {"task_id": f"task-{i}", "prompt": f"prompt {i}", "responses": [f"good answer {i}", f"bad {i}"]}
        if gold_every and i % gold_every == 0:
            item["gold"] = {"winner": "a"}
        items.append(item)
    return items


@pytest.fixture
def store(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    yield store
    store.close()


def label(label_id: str, task_id: str, kind: str = "pairwise", **fields) -> dict:
    body = {"label_id": label_id, "task_id": task_id, "kind": kind, "seconds": 4.0}
    if kind == "pairwise":
        body.setdefault("winner", "a")
    return LabelBody(**(body | fields)).model_dump()


def test_the_store_is_durable_sqlite_wal_with_full_sync(store):
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_tokens_are_stored_as_digests_and_login_keys_are_spent_once(store):
    new = store.add_annotator("ann", "lenient")
    with pytest.raises(StoreError, match="exists already"):
        store.add_annotator("ann")
    raw = store.path.read_bytes() + store.path.with_name(store.path.name + "-wal").read_bytes()
    assert new.token.encode() not in raw and new.login_key.encode() not in raw
    assert store.authenticate(new.token).subject == "ann" and store.authenticate("nope" * 8) is None
    credential, session = store.redeem_login_key(new.login_key)
    assert credential.subject == "ann" and store.authenticate(session).subject == "ann"
    assert store.redeem_login_key(new.login_key) is None


def test_a_retried_label_id_is_stored_once(store):
    store.add_annotator("ann")
    store.add_tasks([make_task(item, FORMS) for item in task_items(2)])
    assert store.record("ann", label("l1", "task-0")) is False
    assert store.record("ann", label("l1", "task-0", winner="b")) is True  # the first one stands
    assert store.feedback_table().column("winner").to_pylist() == ["a"]
    assert store.next_task("ann").task_id == "task-1"
    assert store.progress("ann") == {"done": 1, "queued": 1}


def test_undo_returns_the_task_to_the_front_of_the_queue(store):
    store.add_annotator("ann")
    store.add_tasks([make_task(item, FORMS) for item in task_items(3)])
    store.record("ann", label("l1", "task-0"))
    store.record("ann", label("s1", "task-1", kind="skip"))
    assert store.next_task("ann").task_id == "task-2"
    assert store.undo("ann") == "s1" and store.next_task("ann").task_id == "task-1"
    assert store.undo("ann") == "l1" and store.next_task("ann").task_id == "task-0"
    assert store.undo("ann") is None
    assert store.feedback_table().num_rows == 0
    # A late retry of an undone label does not bring it back.
    assert store.record("ann", label("l1", "task-0")) is True and store.feedback_table().num_rows == 0
    assert store.effort()["ann"]["undone"] == 2


def test_compaction_round_trips_through_the_feedback_schema(store, tmp_path):
    store.add_annotator("ann", "strict")
    items = [{"task_id": "pair", "conversation": CONVERSATION, "responses": ["Sunny", "Rainy"]},
             {"task_id": "three", "prompt": "Rank these", "responses": ["x", "y", "z"]}]
    store.add_tasks([make_task(item, FORMS) for item in items])
    store.record("ann", label("1", "pair", winner="tie"))
    store.record("ann", label("2", "pair", kind="rating", score=2, flaws=["inaccurate"], response=1))
    store.record("ann", label("3", "pair", kind="thumbs", thumb="up"))
    store.record("ann", label("4", "three", kind="ranking", order=[2, 0, 1]))
    written = write_feedback(store.feedback_table(), tmp_path / "collected.parquet")
    table, report = read_feedback(tmp_path / "collected.parquet")
    assert report.rejected == 0 and table.num_rows == 4 == written.num_rows
    rows = table.to_pylist()
    assert {row["source"] for row in rows} == {"human"} and {row["annotator_group"] for row in rows} == {"strict"}
    assert [row["kind"] for row in rows] == ["pairwise", "rating", "thumbs", "ranking"]
    assert rows[0]["prompt"] == render_conversation(CONVERSATION) and rows[0]["conversation"] == CONVERSATION
    assert rows[1]["responses"] == ["Rainy"] and rows[1]["flaws"] == ["inaccurate"]
    assert (rows[1]["scale_min"], rows[1]["scale_max"]) == (1.0, 7.0)
    assert rows[3]["order"] == [2, 0, 1] and rows[3]["responses"] == ["x", "y", "z"]


@pytest.mark.parametrize("fields, where", [
    ({"kind": "rating", "score": 9}, "score"),
    ({"kind": "rating", "score": 3, "flaws": ["boring"]}, "flaws"),
    ({"kind": "rating", "score": 3, "response": 2}, "response"),
    ({"kind": "pairwise", "winner": "a", "strength": 2.0}, "strength"),
    ({"kind": "ranking", "order": [0, 0]}, "order"),
    ({"kind": "thumbs"}, "thumb"),
])
def test_a_label_that_does_not_fit_its_task_names_the_field(fields, where):
    task = make_task({"prompt": "p", "responses": ["a", "b"]}, FORMS)
    with pytest.raises(LabelError) as error:
        check_label(task, LabelBody(label_id="x", task_id=task.task_id, **fields), SETTINGS)
    assert error.value.field == where


def test_forms_follow_the_number_of_responses():
    assert make_task({"prompt": "p", "responses": ["a", "b"]}, FORMS).forms == FORMS
    assert make_task({"prompt": "p", "responses": ["a", "b", "c"]}, FORMS).forms == ["ranking", "thumbs", "rating"]
    three = make_task({"prompt": "p", "responses": ["a", "b", "c"]}, FORMS)
    with pytest.raises(LabelError, match="kind"):
        check_label(three, LabelBody(label_id="x", task_id=three.task_id, kind="pairwise", winner="a"), SETTINGS)
    with pytest.raises(ValueError, match=r"t\.gold"):
        make_task({"prompt": "p", "responses": ["a", "b", "c"], "gold": {"winner": "a"}}, FORMS, "t")


def test_gold_items_make_the_asked_share_of_each_queue_at_different_places(tmp_path):
    path = tmp_path / "tasks.jsonl"
    import json
    path.write_text("\n".join(json.dumps(item) for item in task_items(40, gold_every=4)))
    tasks = read_tasks(path, FORMS)
    assert gold_count(30, 0.25) == 10 and gold_count(0, 0.25) == 0
    first, second = (mixed_queue(tasks, 0.2, who) for who in ("ann", "bob"))
    gold = [[i for i, task in enumerate(queue) if task.gold_winner] for queue in (first, second)]
    assert len(gold[0]) == len(gold[1]) == 8 and len(first) == 38
    assert gold[0] != gold[1]
    assert [t.task_id for t in first if not t.gold_winner] == [t.task_id for t in tasks if not t.gold_winner]


def answer_everything(store: LabelStore, who: str, wrong_on_gold: bool) -> None:
    task = store.next_task(who)
    number = 0
    while task is not None:
        winner = "b" if (task.gold_winner and wrong_on_gold) else "a"
        store.record(who, label(f"{who}-{number}", task.task_id, winner=winner))
        task, number = store.next_task(who), number + 1


def test_wrong_answers_on_gold_items_move_the_verdict(store):
    cfg = CollectConfig(quality=CollectQualityConfig(min_items=30, min_gold=5, policy="exclude"))
    for who in ("honest", "careless"):
        store.add_annotator(who)
    store.add_tasks([make_task(item, FORMS) for item in task_items(20, gold_every=2)])
    answer_everything(store, "honest", wrong_on_gold=False)
    before = {row["annotator_id"]: row for row in live_quality(store, cfg)["annotators"]}
    assert before["careless"]["verdict"] == "no_labels"
    answer_everything(store, "careless", wrong_on_gold=True)
    after = {row["annotator_id"]: row for row in live_quality(store, cfg)["annotators"]}
    assert after["careless"]["gold_accuracy"] == 0.0 and after["careless"]["gold_items"] == 10
    assert after["careless"]["verdict"] == "fails_gold" and after["careless"]["weight"] == 0.0
    assert after["honest"]["gold_accuracy"] == 1.0 and after["honest"]["verdict"] != "fails_gold"
    assert after["honest"]["weight"] == 1.0
    assert gold_verdict(4, 0, cfg.quality) is None  # too few gold answers to judge


def test_cost_follows_the_recorded_seconds(store):
    cfg = CollectConfig(hourly_rate=36.0)
    store.add_annotator("ann")
    store.add_tasks([make_task(item, FORMS) for item in task_items(3)])
    for i, seconds in enumerate((10.0, 20.0)):
        store.record("ann", label(f"l{i}", f"task-{i}", seconds=seconds))
    store.record("ann", label("s", "task-2", kind="skip", seconds=6.0))
    report = live_quality(store, cfg)
    (row,) = report["annotators"]
    assert row["labels"] == 2 and row["skips"] == 1
    assert row["seconds_per_label"] == pytest.approx(18.0)  # the skip's time is paid too
    assert row["labels_per_hour"] == pytest.approx(200.0) and row["cost"] == pytest.approx(0.36)
    assert report["totals"]["cost"] == pytest.approx(0.36)


def test_the_rate_limiter_allows_a_burst_then_the_rate():
    limiter = RateLimiter(rate_per_minute=60, burst=3)
    assert [limiter.acquire("ann", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("ann", 0.0) == pytest.approx(1.0)
    assert limiter.acquire("bob", 0.0) == 0.0  # per key
    assert limiter.acquire("ann", 0.5) == pytest.approx(0.5)
    assert limiter.acquire("ann", 1.0) == 0.0
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(60, 0)
