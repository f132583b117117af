"""The collection server over HTTP on the real Ray Serve app (one app for the module, on
loopback): the annotator and admin APIs, security (tokens, other annotators' queues, CSRF,
rate limits, unsafe binds), undo, gold items on the live quality report, the admin
actions of the workflow, and a SIGKILL of the serving process while 16 annotators submit."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from alignray.collect.store import LabelStore
from alignray.config.collect import CollectConfig, CollectQualityConfig
from alignray.serving.api import AuthConfigError

ADMIN_TOKEN = "collect-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
APP_NAME = "alignray-collect-test"
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    from alignray.actors.runtime import free_loopback_port
    return free_loopback_port()


def collect_settings(tmp_path: Path, **overrides) -> CollectConfig:
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN)
    settings = dict(store_path=str(tmp_path / "labels.sqlite"), port=free_port(), token_env=None,
                    token_file=str(token_file), cpus_per_replica=0, rate_per_minute=600, burst=20,
                    quality=CollectQualityConfig(min_items=5, min_gold=4))
    return CollectConfig(**(settings | overrides))


def start_collect_app(cfg: CollectConfig, name: str) -> str:
    from ray import serve

    from alignray.workflows.collect import build_collect_app
    from alignray.serving.endpoint import http_options
    serve.start(http_options=http_options(cfg))
    serve.run(build_collect_app(cfg), name=name, route_prefix="/")
    return f"http://127.0.0.1:{cfg.port}"


def stop_collect_app(name: str) -> None:
    from ray import serve
    serve.delete(name)
    serve.shutdown()


def tasks_body(n: int, prefix: str, gold_every: int = 0) -> list[dict]:
    return [{"task_id": f"{prefix}-{i}", "prompt": f"{prefix} prompt {i}",
             "responses": [f"kind answer {i}", f"rude answer {i}"],
             "gold": {"winner": "a"} if gold_every and i % gold_every == 0 else None} for i in range(n)]


@pytest.fixture(scope="module")
def server(ray_cluster, tmp_path_factory):
    cfg = collect_settings(tmp_path_factory.mktemp("collect"))
    url = start_collect_app(cfg, APP_NAME)
    yield url, cfg
    stop_collect_app(APP_NAME)


def admin_post(url: str, path: str, body: dict) -> dict:
    reply = requests.post(url + path, json=body, headers=ADMIN, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def new_annotator(url: str, annotator_id: str, tasks: list[dict], group: str | None = None) -> dict:
    created = admin_post(url, "/admin/api/annotators", {"annotator_id": annotator_id, "group": group})
    admin_post(url, "/admin/api/tasks", {"tasks": tasks, "assign_to": [annotator_id]})
    return created


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def submit(url: str, token: str, task_id: str, **fields) -> requests.Response:
    body = {"label_id": uuid.uuid4().hex, "task_id": task_id, "kind": "pairwise", "winner": "a", "seconds": 3.0}
    return requests.post(url + "/api/labels", json=body | fields, headers=bearer(token), timeout=30)


def test_an_annotator_labels_their_queue_once_per_label_id(server):
    url, _ = server
    ann = new_annotator(url, "flow", tasks_body(2, "flow"))
    assert ann["link"].startswith(url + "/login?key=")
    task = requests.get(url + "/api/task", headers=bearer(ann["token"]), timeout=30).json()
    assert task["task_id"] == "flow-0" and task["forms"] == ["pairwise", "ranking", "thumbs", "rating"]
    assert task["scale"] == [1.0, 7.0] and "inaccurate" in task["flaws"] and "gold" not in task
    assert task["progress"] == {"done": 0, "queued": 2}
    body = {"label_id": "retried", "task_id": "flow-0", "kind": "pairwise", "winner": "b", "strength": 0.5,
            "seconds": 7.5}
    first = requests.post(url + "/api/labels", json=body, headers=bearer(ann["token"]), timeout=30).json()
    again = requests.post(url + "/api/labels", json=body, headers=bearer(ann["token"]), timeout=30).json()
    assert first == {"saved": True, "label_id": "retried", "duplicate": False} and again["duplicate"] is True
    bad = submit(url, ann["token"], "flow-1", kind="rating", score=9)
    assert bad.status_code == 422 and bad.json()["detail"].startswith("score:")
    assert submit(url, ann["token"], "flow-1", kind="skip").status_code == 200
    assert requests.get(url + "/api/task", headers=bearer(ann["token"]), timeout=30).status_code == 204
    feedback = pq.read_table(io.BytesIO(requests.get(url + "/admin/api/feedback", headers=ADMIN, timeout=30).content))
    mine = [row for row in feedback.to_pylist() if row["annotator_id"] == "flow"]
    assert len(mine) == 1 and mine[0]["winner"] == "b" and mine[0]["source"] == "human"


def test_undo_over_http(server):
    url, _ = server
    ann = new_annotator(url, "undoer", tasks_body(2, "undo"))
    assert requests.post(url + "/api/undo", headers=bearer(ann["token"]), timeout=30).status_code == 409
    saved = submit(url, ann["token"], "undo-0").json()
    reply = requests.post(url + "/api/undo", headers=bearer(ann["token"]), timeout=30)
    assert reply.status_code == 200 and reply.json() == {"undone": saved["label_id"]}
    assert requests.get(url + "/api/task", headers=bearer(ann["token"]), timeout=30).json()["task_id"] == "undo-0"


def test_no_token_or_a_wrong_one_is_401(server):
    url, _ = server
    for method, path in (("GET", "/api/task"), ("POST", "/api/labels"), ("POST", "/api/undo"),
                         ("GET", "/admin/api/quality"), ("GET", "/admin/api/feedback"), ("POST", "/admin/api/tasks")):
        assert requests.request(method, url + path, json={}, timeout=30).status_code == 401, path
        wrong = requests.request(method, url + path, json={}, headers=bearer("wrong-token-0123456789"), timeout=30)
        assert wrong.status_code == 401, path
    assert requests.get(url + "/task", timeout=30).status_code == 401
    assert requests.get(url + "/healthz", timeout=30).json() == {"status": "ok"}


def test_another_annotators_token_cannot_read_or_write_this_queue(server):
    url, _ = server
    alice = new_annotator(url, "alice", tasks_body(2, "alice"))
    mallory = new_annotator(url, "mallory", tasks_body(1, "mallory"))
    assert requests.get(url + "/api/task", headers=bearer(mallory["token"]), timeout=30).json()["task_id"] == "mallory-0"
    refused = submit(url, mallory["token"], "alice-0")
    assert refused.status_code == 403 and "not in your queue" in refused.json()["detail"]
    saved = submit(url, alice["token"], "alice-0").json()
    assert requests.post(url + "/api/undo", headers=bearer(mallory["token"]), timeout=30).status_code == 409
    # Alice's label stands and her queue moved on; an annotator's token is not an admin's.
    assert requests.get(url + "/api/task", headers=bearer(alice["token"]), timeout=30).json()["task_id"] == "alice-1"
    assert requests.get(url + "/admin/api/quality", headers=bearer(alice["token"]), timeout=30).status_code == 401
    assert saved["saved"]


def test_a_cross_site_form_post_is_refused(server):
    url, _ = server
    ann = new_annotator(url, "carol", tasks_body(1, "carol"))
    browser = requests.Session()
    login = browser.get(ann["link"], allow_redirects=False, timeout=30)
    assert login.status_code == 303 and login.headers["location"] == "task"
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert requests.get(ann["link"], timeout=30).status_code == 401  # the key is spent
    page = browser.get(url + "/task", timeout=30)
    csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]
    form = {"label_id": "x1", "task_id": "carol-0", "kind": "pairwise", "winner": "a"}
    forged = browser.post(url + "/api/labels", data=form, headers={"Origin": "https://evil.example"}, timeout=30)
    assert forged.status_code == 403 and "cross-site" in forged.json()["detail"]
    no_csrf = browser.post(url + "/api/labels", json=form, headers={"Origin": url}, timeout=30)
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["detail"]
    same_site = browser.post(url + "/api/labels", json=form, headers={"Origin": url, "X-CSRF-Token": csrf}, timeout=30)
    assert same_site.status_code == 200 and same_site.json()["saved"]


def test_the_rate_limit_answers_429_with_retry_after(server):
    url, cfg = server
    ann = new_annotator(url, "hasty", tasks_body(1, "hasty"))
    # Many requests at once, so that even a slow machine sends them faster than the bucket
    # refills (burst + rate x elapsed stays well below their number).
    count = cfg.burst + 130
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: requests.get(url + "/api/task", headers=bearer(ann["token"]), timeout=60),
                                range(count)))
    limited = [reply for reply in replies if reply.status_code == 429]
    assert limited and int(limited[0].headers["retry-after"]) >= 1
    assert {reply.status_code for reply in replies} == {200, 429}


def test_gold_answers_move_the_verdict_on_the_live_quality_report(server):
    url, cfg = server

    def verdicts() -> dict:
        reply = requests.get(url + "/admin/api/quality", headers=ADMIN, timeout=60)
        assert reply.status_code == 200, reply.text
        return {row["annotator_id"]: row for row in reply.json()["annotators"]}

    careless = new_annotator(url, "careless", tasks_body(8, "gold", gold_every=2))
    for i in range(4):  # the regular items first: no gold answer yet
        assert submit(url, careless["token"], f"gold-{2 * i + 1}").status_code == 200
    before = verdicts()["careless"]
    assert before["labels"] == 4 and before["gold_items"] == 0 and before["verdict"] != "fails_gold"
    for i in range(4):
        assert submit(url, careless["token"], f"gold-{2 * i}", winner="b").status_code == 200
    after = verdicts()["careless"]
    assert after["labels"] == 8 and after["gold_accuracy"] == 0.0 and after["verdict"] == "fails_gold"
    assert after["weight"] == cfg.quality.downweight and after["cost"] > before["cost"]
    for labels, accuracy in ((400, 0.71), (200, 0.62)):
        admin_post(url, "/admin/api/accuracy", {"labels": labels, "accuracy": accuracy, "model": f"rm-{labels}"})
    curve = requests.get(url + "/admin/api/quality", headers=ADMIN, timeout=60).json()["accuracy"]
    assert [(point["labels"], point["accuracy"]) for point in curve] == [(200, 0.62), (400, 0.71)]
    bad = requests.post(url + "/admin/api/accuracy", json={"labels": 10, "accuracy": 1.5}, headers=ADMIN, timeout=30)
    assert bad.status_code == 422 and "accuracy" in bad.json()["detail"]
    page = requests.get(url + "/admin", headers=ADMIN, timeout=30)
    assert page.status_code == 200 and "static/admin.js" in page.text
    assert "admin/api/quality" in requests.get(url + "/static/admin.js", timeout=30).text


def test_a_non_loopback_bind_without_a_token_refuses_to_start(tmp_path, monkeypatch):
    from alignray.workflows.collect import build_collect_app
    monkeypatch.delenv("ALIGNRAY_COLLECT_TOKEN", raising=False)
    with pytest.raises(AuthConfigError, match="0.0.0.0 is reachable"):
        build_collect_app(CollectConfig(host="0.0.0.0", store_path=str(tmp_path / "s.sqlite")))
    env = {k: v for k, v in os.environ.items() if k != "ALIGNRAY_COLLECT_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "alignray.workflows.cli", "collect", "collect.host=0.0.0.0",
                           f"workdir={tmp_path}", "hydra.run.dir=" + str(tmp_path / "hydra")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "reachable from other machines" in done.stderr


class SimulatedAnnotator(threading.Thread):
    """Labels its queue to the end over HTTP, retrying a failed submit with the same
    label_id; records the label ids the server acknowledged. Stops by itself at `deadline`."""

    def __init__(self, url: str, token: str, deadline: float):
        super().__init__(daemon=True)
        self.url, self.headers, self.deadline = url, bearer(token), deadline
        self.acknowledged: list[str] = []
        self.failures = 0
        self.last_failure = ""  # what the server (or the connection) last answered, for an assertion's message

    def request(self, method: str, path: str, body: dict | None = None) -> requests.Response | None:
        while time.monotonic() < self.deadline:
            try:
                reply = requests.request(method, self.url + path, json=body, headers=self.headers, timeout=10)
            except requests.RequestException as error:
                reply, self.last_failure = None, repr(error)[:200]
            if reply is not None and reply.status_code in (200, 204):
                return reply
            if reply is not None:
                self.last_failure = f"{method} {path}: {reply.status_code} {reply.text[:200]}"
            self.failures += 1
            wait = float(reply.headers.get("retry-after", 0.2)) if reply is not None and reply.status_code == 429 else 0.2
            time.sleep(wait)
        return None

    def run(self) -> None:
        while (reply := self.request("GET", "/api/task")) is not None and reply.status_code == 200:
            body = {"label_id": uuid.uuid4().hex, "task_id": reply.json()["task_id"], "kind": "pairwise",
                    "winner": "a", "seconds": 1.0}
            saved = self.request("POST", "/api/labels", body)
            if saved is None:
                return
            if saved.json().get("saved") is not True:
                self.last_failure = f"not saved: {saved.text[:200]}"
                return
            self.acknowledged.append(body["label_id"])

    def status(self) -> str:
        return (f"{len(self.acknowledged)} acknowledged, {self.failures} failed requests, alive {self.is_alive()}, "
                f"deadline passed {time.monotonic() > self.deadline}, last failure: {self.last_failure}")


def test_every_acknowledged_label_survives_a_sigkill_of_the_serving_process(server):
    url, cfg = server
    annotators = {f"crash-{i:02d}": new_annotator(url, f"crash-{i:02d}", tasks_body(10, f"crash{i}"))
                  for i in range(16)}
    before = requests.get(url + "/admin/api/status", headers=ADMIN, timeout=30).json()
    # a generous deadline: on a loaded 2-core machine the replica's restart alone can take a minute
    workers = [SimulatedAnnotator(url, ann["token"], time.monotonic() + 300) for ann in annotators.values()]
    for worker in workers:
        worker.start()
    while sum(len(worker.acknowledged) for worker in workers) < 30 and any(w.is_alive() for w in workers):
        time.sleep(0.05)
    acknowledged_at_kill = sum(len(worker.acknowledged) for worker in workers)
    os.kill(before["pid"], signal.SIGKILL)  # the Serve replica's process: it holds the store
    for worker in workers:
        worker.join(timeout=330)
    after = requests.get(url + "/admin/api/status", headers=ADMIN, timeout=30).json()
    assert after["pid"] != before["pid"], "the replica was not restarted"
    failures = sum(worker.failures for worker in workers)
    assert 0 < acknowledged_at_kill < 160 and failures > 0, (acknowledged_at_kill, failures)
    store = LabelStore(cfg.store_path)
    stored = [(who, label_id) for who, label_id in store.label_ids() if who.startswith("crash-")]
    assert len(stored) == len(set(stored))
    for (who, _), worker in zip(annotators.items(), workers):
        assert not worker.is_alive() and len(worker.acknowledged) == 10, (who, worker.status())
        mine = [label_id for owner, label_id in stored if owner == who]
        assert sorted(mine) == sorted(worker.acknowledged), who
    rows = [row for row in store.feedback_table().to_pylist() if row["annotator_id"].startswith("crash-")]
    assert len(rows) == 160 == len({(row["annotator_id"], row["prompt"]) for row in rows})
    store.close()
