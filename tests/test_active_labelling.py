"""The active-labelling study (benchmarks/active_labelling.py) end to end at tiny budgets:
simulated annotators answer through the collection API, in process and over HTTP (the
collection server's API, served on loopback)."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
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
def collection_api(store_path, admin_token: str):
    """The collection server's own API (alignray.collect.api) on 127.0.0.1, served by
    uvicorn in a thread while the block runs, on a fresh store; rate limits out of the way."""
    import uvicorn

    from alignray.collect.api import build_collect_api
    from alignray.collect.store import LabelStore
    from alignray.config.collect import CollectConfig
    from alignray.serving.api import token_digest
    cfg = CollectConfig(store_path=str(store_path), rate_per_minute=1_000_000, burst=100_000)
    app = build_collect_api(LabelStore(cfg.store_path), cfg, token_digest(admin_token))
    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_http_back_end_gives_the_same_labels_as_the_in_process_one(candidates, tmp_path):
    settings = StudySettings(budgets=[60], cadence=30, members=2)

    def labels(desk):
        model = LinearRewardEnsemble(bag_of_words(sorted(candidates.texts, key=candidates.texts.get)),
                                     candidates.texts, members=2, l2=1e-2)
        curve = run_selection(desk, candidates, model, "active-margin", settings, 3, "run")
        rows = desk.feedback().select(["prompt", "responses", "winner", "annotator_id", "annotator_group"])
        return curve, sorted(map(str, rows.to_pylist()))

    in_process = labels(InProcessDesk())
    with collection_api(tmp_path / "labels.sqlite", "admin-secret-" + "x" * 20) as url:
        over_http = labels(HttpDesk(url, "admin-secret-" + "x" * 20))
        with pytest.raises(RuntimeError, match="401"):
            HttpDesk(url, "wrong").add_annotator("x", None)
        # each retrain's accuracy reached the admin page's curve
        admin = HttpDesk(url, "admin-secret-" + "x" * 20)
        curve = admin._call("GET", "/admin/api/quality").json()["accuracy"]
    assert [(p["labels"], p["accuracy"]) for p in curve] == [(p["labels"], p["accuracy"]) for p in over_http[0]]
    assert over_http[1] == in_process[1] and len(in_process[1]) == 60
    assert [p["accuracy"] for p in over_http[0]] == [p["accuracy"] for p in in_process[0]]
