"""One local Ray instance for the whole test session, with four logical GPUs so the GPU
layout (one bundle per model role) schedules on a CPU machine; and the tiny base model
every model test starts from."""
from __future__ import annotations

import json
import logging
import os
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Sequence

import pytest
import torch

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# These keep DeepSpeed from JIT-compiling any C++ op during tests; on a GPU machine
# (`pytest -m gpu`) DeepSpeed keeps its CUDA accelerator.
os.environ.setdefault("DS_BUILD_OPS", "0")
os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_cluster():
    """Started once, stopped by its own handle (never `ray stop`)."""
    import ray
    from alignray.actors.runtime import worker_env
    from alignray.actors.worker_setup import HOOK as WORKER_SETUP_HOOK
    # Ray 2.60 turns token auth on for a new local instance and caches the mode in the
    # process; tests of the submit wrapper's auth handling flip RAY_AUTH_MODE, and a driver
    # whose cached mode disagrees with its own GCS cannot start it. This instance is
    # private, on loopback and without a dashboard: authentication off keeps it consistent.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # num_cpus is a logical count for scheduling; the machine has two cores.
    # address="local": a private instance even when a `ray start` cluster (ours in
    # test_cluster_submit, or anyone's on this host) is recorded as the current one.
    ray.init(address="local", num_cpus=8, num_gpus=4, include_dashboard=False,
             object_store_memory=256 * 1024 * 1024,
             runtime_env={"env_vars": worker_env(), "worker_process_setup_hook": WORKER_SETUP_HOOK})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> Path:
    """A tiny base model pretrained on the tweets (a few seconds), in Hugging Face format."""
    from alignray.pretrain.embedded import TINY_TEST_RECIPE, build_base_model
    cache = Path(os.environ.get("ALIGNRAY_TEST_CACHE", REPO / ".alignray-cache" / "tests"))
    return build_base_model(TINY_TEST_RECIPE, cache_dir=cache, seed=0)


@pytest.fixture(scope="session")
def cluster_job():
    """The pipeline submitted to a private `ray start` cluster (tests/cluster_job.py), run once
    for the tests of the submission and of the HH-RLHF run it is; its files kept until the end."""
    import shutil
    import tempfile
    from tests.cluster_job import run_cluster_job
    # Short path: Ray puts Unix sockets under its temp dir (107-character limit).
    root = Path(tempfile.mkdtemp(prefix="ar-", dir="/tmp"))
    try:
        yield run_cluster_job(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


OPENINGS = ["I love the new", "Flying with this airline", "Self-driving cars are", "My phone just",
            "The weather today is", "Can't believe the game", "Monday mornings are", "This coffee shop",
            "Just watched the movie", "Our team finally", "The new update is", "Traffic on the way"]


@pytest.fixture(scope="session")
def prompts_path(tmp_path_factory) -> Path:
    """A small prompts file with the declared schema (tweet openings)."""
    from alignray.data.prompts import PROMPT_SCHEMA
    from alignray.data.validation import write_parquet
    path = tmp_path_factory.mktemp("prompts") / "prompts.parquet"
    write_parquet([{"prompt_id": str(i), "prompt": p, "system": None, "source": "test"}
                   for i, p in enumerate(OPENINGS * 3)], path, PROMPT_SCHEMA)
    return path


@pytest.fixture(scope="session")
def demonstrations_path(tmp_path_factory) -> Path:
    """The first 500 embedded demonstrations in one file (SFT's runs split off their held-out rows)."""
    from tests.sft_setup import demonstrations_file
    return demonstrations_file(tmp_path_factory.mktemp("demonstrations"), 500)


class ProgressLines(logging.Handler):
    """The messages of the ``alignray.progress`` log while it is attached, at INFO as a Hydra
    app's logging has it."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []
        self.logger = logging.getLogger("alignray.progress")

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self) -> list[str]:
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self.lines

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


@pytest.fixture(scope="session")
def one_worker_sft(ray_cluster, tiny_base_model, demonstrations_path, tmp_path_factory) -> tuple[Path, list[str]]:
    """SFT on one Ray Train worker at tests/test_sft.py's settings with the default logger, and
    the progress lines its driver logged: one Ray Train fit for test_sft (one worker against
    two) and test_tracking (what reached the tracker, the log and `ray.train.report`)."""
    from alignray.workflows.sft import run_sft
    from tests.sft_setup import sft_config
    with ProgressLines() as lines:
        out = run_sft(sft_config(tmp_path_factory.mktemp("one_worker"), demonstrations_path, "cluster.num_workers=1"),
                      tiny_base_model)
    return out, lines


@contextmanager
def score_endpoint(score: Callable[[Sequence[str], Sequence[str]], Sequence[float]]):
    """A ``/v1/score`` endpoint on 127.0.0.1 that scores with ``score(prompts, responses)``
    while the block runs (stopped at its end); yields its URL and the prompts it received.
    It also answers OpenRLHF's ``/get_reward``, scoring ``score(prompts, queries)``."""
    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.extend(body["prompts"])
            texts = body["query"] if self.path == "/get_reward" else body["responses"]
            answer = json.dumps({"rewards": [float(x) for x in score(body["prompts"], texts)]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
