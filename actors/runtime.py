"""The Ray runtime, in one place: start a local instance bound to loopback, or join one.

Every workflow calls `connect(cluster_cfg)` before it creates actors or trainers. Run as a
submitted job (`ray job submit`), RAY_ADDRESS is set and we join that cluster; with
`cluster.address=auto` we join the cluster running on this node. Otherwise a private
local instance starts, with every listener on 127.0.0.1 and, when asked, logical GPUs so
the GPU layout can be scheduled and tested on a CPU machine.

We never call `ray stop`: it ends every Ray instance on the host, other people's too.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import socket
import time
from contextlib import contextmanager
from pathlib import Path

# Must be set before Ray starts its processes: keeps node listeners on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

import alignray.cluster  # noqa: E402
from alignray.actors.worker_setup import HOOK as WORKER_SETUP_HOOK  # noqa: E402
from alignray.ppo.layout import Resources, capacity_error, unplaceable  # noqa: E402

log = logging.getLogger(__name__)
# Where `import alignray` is found (a checkout's root, or site-packages): workers import from there.
IMPORT_ROOT = Path(alignray.__file__).resolve().parent.parent
# Ray Data reads its logging setup from this variable: INFO to its log file, not the console
RAY_DATA_LOGGING_ENV = "RAY_DATA_LOGGING_CONFIG"
RAY_DATA_LOGGING_FILE = Path(alignray.cluster.__file__).resolve().parent / "ray_data_logging.yaml"
RAY_DATA_PROGRESS_ENV = "RAY_DATA_DISABLE_PROGRESS_BARS"  # read when a DataContext is created


def worker_env() -> dict[str, str]:
    """What every actor and Ray Train worker needs: the project importable, the driver's hub
    setting (offline for the embedded default, the user's own for a hub id), DeepSpeed's
    accelerator chosen from torch (on CPU nothing may JIT-compile) and Ray Data's INFO lines
    kept off the console."""
    import torch
    hub = {"HF_HUB_OFFLINE": os.environ["HF_HUB_OFFLINE"]} if "HF_HUB_OFFLINE" in os.environ else {}
    return {"PYTHONPATH": str(IMPORT_ROOT), "TOKENIZERS_PARALLELISM": "false", **hub,
            "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu"),
            **ray_data_logging()}


def ray_data_logging() -> dict[str, str]:
    """The variables that point Ray Data at our logging setup (none when the file is missing:
    Ray Data's import fails on a path that does not exist; the user's own when set) and turn
    its progress bars off: without a terminal each bar's refresh is a new console line, and a
    finished dataset's bar kept printing through the later phases (~180 lines in a first run).
    The phases print their own progress lines."""
    setup = os.environ.get(RAY_DATA_LOGGING_ENV) or (
        str(RAY_DATA_LOGGING_FILE) if RAY_DATA_LOGGING_FILE.exists() else None)
    return ({RAY_DATA_LOGGING_ENV: setup} if setup else {}) | {
        RAY_DATA_PROGRESS_ENV: os.environ.get(RAY_DATA_PROGRESS_ENV, "1")}


def quiet_ray_data_console() -> None:
    """Ray Data's INFO lines (every execution's plan, and a block of progress every few
    seconds when stdout is no terminal) to its ray-data.log only, in this process: they
    came between the phases' own progress lines. Its workers get the same through worker_env."""
    os.environ.update(ray_data_logging())
    from ray.data import DataContext
    from ray.data._internal.logging import configure_logging  # what `import ray.data` ran, before the variable
    configure_logging()
    DataContext.get_current().enable_progress_bars = os.environ[RAY_DATA_PROGRESS_ENV] != "1"  # made before the variable


def connect(cluster_cfg, runtime_env: dict | None = None) -> bool:
    """Make sure this process is connected to Ray. Returns True when it started Ray itself
    (the caller then owns the instance and may `ray.shutdown()` it)."""
    if ray.is_initialized():
        return False
    quiet_ray_data_console()
    address = cluster_cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        # A submitted job already carries its runtime env (cluster/runtime_env.yaml, with the
        # code as working_dir); Ray merges a driver's env into it and fails on any conflict,
        # so we add nothing of our own.
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return False
    # Ray Train's PlacementGroupCleaner asks the State API, which the dashboard serves, whether
    # the Train controller lives: without a dashboard every check failed with a warning (one a
    # second), and with several Ray instances on the host it could not tell which is ours.
    dashboard_port = free_loopback_port()
    runtime_env = dict(runtime_env or {})
    runtime_env["env_vars"] = (worker_env() | {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}
                               | runtime_env.get("env_vars", {}))
    runtime_env.setdefault("worker_process_setup_hook", WORKER_SETUP_HOOK)
    kwargs = dict(
        # "local": always a new instance. Without it ray.init joins whatever cluster a
        # `ray start` on this host last recorded in /tmp/ray/ray_current_cluster.
        address="local",
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        object_store_memory=int(cluster_cfg.object_store_memory_mb) * 1024 * 1024,
        runtime_env=runtime_env,
    )
    if cluster_cfg.num_cpus is not None:
        kwargs["num_cpus"] = cluster_cfg.num_cpus
    if cluster_cfg.num_gpus is not None:
        kwargs["num_gpus"] = cluster_cfg.num_gpus
    log.info("starting a local Ray instance on 127.0.0.1 (%s)", kwargs)
    ray.init(**kwargs)
    return True


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shutdown_if_owned(owned: bool) -> None:
    if owned and ray.is_initialized():
        ray.shutdown()


@contextmanager
def ray_session(cluster_cfg):
    """Connected for the block; a Ray instance this block started is shut down at its end."""
    owned = connect(cluster_cfg)
    try:
        yield
    finally:
        shutdown_if_owned(owned)


class PlacementTimeout(RuntimeError):
    """The cluster did not give a phase the resources it asks for in time."""


def node_capacities() -> list[Resources]:
    """The total resources of every live node."""
    return [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]


def placement_timeout(what: str, bundles: list[Resources], timeout_s: float) -> PlacementTimeout:
    """The error for ``bundles`` still unplaced after ``timeout_s``: what is missing."""
    message = capacity_error(what, bundles, node_capacities(), ray.available_resources())
    return PlacementTimeout(f"{message} (waited cluster.placement_timeout_s={timeout_s:g} s)")


def wait_for_capacity(what: str, bundles: list[Resources], timeout_s: float, poll_s: float = 2.0) -> None:
    """Wait until the cluster's nodes could hold ``bundles`` (an autoscaler may be adding
    nodes), else raise PlacementTimeout naming the missing resources. For work that Ray
    schedules itself (Ray Train workers), whose own wait has no end."""
    deadline = time.monotonic() + timeout_s
    while unplaceable(bundles, node_capacities()):
        if time.monotonic() >= deadline:
            raise placement_timeout(what, bundles, timeout_s)
        time.sleep(poll_s)


def serve_until_stopped(app_name: str) -> None:
    """Block until Ctrl-C or SIGTERM, then delete the application."""
    from ray import serve  # only the serving apps need it
    # `kill` or a container stop cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # Serve applications outlive their driver on a shared cluster: remove ours.
        serve.delete(app_name)
