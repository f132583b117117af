"""The active-labelling study (benchmarks/active_labelling.py) end to end at tiny budgets:
simulated annotators answer through the collection API, in process and over HTTP (a
loopback stand-in for the collection server that serves the in-process desk)."""
from __future__ import annotations

import io
import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks.active_labelling import (LinearRewardEnsemble, StudySettings, bag_of_words, build_candidates,
                                         run_selection, run_study)
from benchmarks.labelling_desk import HttpDesk, InProcessDesk

GOOD = "love great happy wonderful best nice glad fun amazing excellent".split()
BAD = "hate awful sad worst angry terrible ugly bored fail horrible".split()
FILLER = "the a of to and it is was on for with this that my you".split()


def lexicon_texts(prompts: int, seed: int) -> tuple[list[str], list[list[str]]]:
    """Four short responses per prompt, a few sentiment words among filler words."""
    rng = np.random.default_rng(seed)

    def text():
        return " ".join(rng.choice(GOOD + BAD) if rng.random() < 0.4 else rng.choice(FILLER) for _ in range(6))

    return [f"prompt {seed}-{i}" for i in range(prompts)], [[text() for _ in range(4)] for _ in range(prompts)]


@pytest.fixture(scope="module")
def candidates():
    return build_candidates(lexicon_texts(60, seed=0), lexicon_texts(30, seed=1))


def test_study_in_process_learns_and_reports_each_strategy_at_each_budget(candidates):
    settings = StudySettings(budgets=[50, 150], cadence=50, members=3)
    study = run_study(candidates, settings, ["random", "active-disagreement", "active-margin"], [0, 1], InProcessDesk)
    assert len(study["runs"]) == 6
    for run in study["runs"]:
        assert [point["labels"] for point in run["curve"]] == [50, 100, 150]
        assert run["curve"][-1]["accuracy"] > 0.65  # chance 0.5: ten good and ten bad words, learnt from 150 labels
    rows = {(row["strategy"], row["labels"]): row for row in study["summary"]}
    assert len(rows) == 6 and rows[("random", 150)]["gain_over_random_mean"] == 0.0
    assert rows[("active-margin", 50)]["seeds"] == 2
    assert 0.5 < candidates.consensus_accuracy <= 1.0 and len(candidates.pairs) > 300


def test_active_run_labels_each_pair_once_through_the_desk(candidates):
    desk = InProcessDesk()
    model = LinearRewardEnsemble(bag_of_words(sorted(candidates.texts, key=candidates.texts.get)),
                                 candidates.texts, members=3, l2=1e-2)
    run_selection(desk, candidates, model, "active-disagreement", StudySettings(budgets=[120], cadence=40), 0, "run")
    feedback = desk.feedback().to_pylist()
    assert len(feedback) == 120 and {row["source"] for row in feedback} == {"human"}
    assert len({(row["prompt"], *sorted(row["responses"])) for row in feedback}) == 120
    assert {row["annotator_id"] for row in feedback} == {f"run-rater{r}" for r in range(1, 6)}
    assert {row["annotator_group"] for row in feedback} == {"lenient", "strict"}


@contextmanager
def collection_server_stand_in(desk: InProcessDesk, admin_token: str):
    """The collection API's routes used by the study, served from ``desk`` on 127.0.0.1."""
    tokens: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def _token(self):
            return self.headers.get("Authorization", "").removeprefix("Bearer ")

        def _send(self, status, body=b"", kind="application/json"):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/api/task" and self._token() in tokens:
                task = desk.next_task(self._token())
                return self._send(204) if task is None else self._send(200, json.dumps(task).encode())
            if self.path == "/admin/api/feedback" and self._token() == admin_token:
                buffer = io.BytesIO()
                pq.write_table(desk.feedback(), buffer)
                return self._send(200, buffer.getvalue(), "application/octet-stream")
            self._send(401, b'{"detail": "bad token"}')

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/admin/api/annotators" and self._token() == admin_token:
                tokens.add(token := desk.add_annotator(body["annotator_id"], body["group"]))
                return self._send(200, json.dumps({"annotator_id": body["annotator_id"], "token": token}).encode())
            if self.path == "/admin/api/tasks" and self._token() == admin_token:
                ids = desk.add_tasks(body["tasks"], body["assign_to"])
                return self._send(200, json.dumps({"added": len(ids), "task_ids": ids}).encode())
            if self.path == "/api/labels" and self._token() in tokens:
                return self._send(200, json.dumps(desk.submit(self._token(), body)).encode())
            self._send(401, b'{"detail": "bad token"}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_back_end_gives_the_same_labels_as_the_in_process_one(candidates):
    settings = StudySettings(budgets=[60], cadence=30, members=2)

    def labels(desk):
        model = LinearRewardEnsemble(bag_of_words(sorted(candidates.texts, key=candidates.texts.get)),
                                     candidates.texts, members=2, l2=1e-2)
        curve = run_selection(desk, candidates, model, "active-margin", settings, 3, "run")
        rows = desk.feedback().select(["prompt", "responses", "winner", "annotator_id", "annotator_group"])
        return curve, sorted(map(str, rows.to_pylist()))

    in_process = labels(InProcessDesk())
    with collection_server_stand_in(InProcessDesk(), "admin-secret") as url:
        over_http = labels(HttpDesk(url, "admin-secret"))
        with pytest.raises(RuntimeError, match="401"):
            HttpDesk(url, "wrong").add_annotator("x", None)
    assert over_http[1] == in_process[1] and len(in_process[1]) == 60
    assert [p["accuracy"] for p in over_http[0]] == [p["accuracy"] for p in in_process[0]]
