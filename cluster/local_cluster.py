"""A one-node Ray cluster on 127.0.0.1, started with `ray start --head --block` and stopped
through its own handle.

Why not `ray stop`: it ends every Ray process on the host, other people's clusters too.
Why `--block`: the `ray start` process then stays in the foreground and owns the cluster.
On SIGTERM (Ray 2.60, `Node._register_shutdown_hooks`) it first drains the node for up to
RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S (30 s by default; 0 here, a private cluster has no
traffic to hand over), then kills the processes it started and exits with status 1. The
kernel also kills its direct children when it dies (Ray's PR_SET_PDEATHSIG fate sharing).

Every process of the cluster (GCS, raylet, dashboard, workers, job drivers) inherits a
marker variable that names this cluster's temp dir, so `session_processes()` finds exactly
this cluster's processes and never another cluster's on the same host.

    with LocalRayCluster(tmp_dir) as cluster:
        print(cluster.dashboard_url)       # http://127.0.0.1:<port>, for `alignray.cluster.submit`
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"
MARKER_VAR = "ALIGNRAY_LOCAL_CLUSTER"
# Inherited values of these would aim a process at some other cluster or token (RAY_AUTH_TOKEN
# takes precedence over RAY_AUTH_TOKEN_PATH).
_FOREIGN_CLUSTER_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class LocalRayCluster:
    """A loopback-only Ray head node owned by this object.

    temp_dir: Ray's root temp dir for this cluster (sessions, logs, sockets). Keep the path
        short: Ray puts Unix sockets under it and those are limited to 107 characters.
    private_token: True makes a fresh token in temp_dir and turns token authentication on
        for the cluster and for the clients that use `client_env()`, without reading or
        writing the user's ~/.ray/auth_token. False leaves authentication to Ray's default
        (Ray 2.60 `ray start` turns it on when ~/.ray/auth_token exists).
    """

    def __init__(self, temp_dir: str | os.PathLike, num_cpus: int = 2, num_gpus: int = 0,
                 object_store_mb: int = 256, private_token: bool = True):
        self.temp_dir = Path(temp_dir).resolve()
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.object_store_mb = object_store_mb
        self.private_token = private_token
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = self.temp_dir / "ray-start.log"
        self.token_path = self.temp_dir / "auth_token"

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"{LOOPBACK}:{self.gcs_port}"

    def client_env(self) -> dict[str, str]:
        """The variables a client (the submit wrapper, `ray job`, the SDK) needs to
        authenticate to this cluster."""
        if not self.private_token:
            return {}
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def client_environ(self) -> dict[str, str]:
        """A whole environment for a client subprocess: this process's, without variables
        that would point it at another cluster or another token, plus `client_env()`."""
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_CLUSTER_VARS}
        env.update(self.client_env())
        return env

    def _server_env(self) -> dict[str, str]:
        # A caller's RAY_ADDRESS would make `ray start --head` try to join that cluster.
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_CLUSTER_VARS}
        env.update({
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every listener on 127.0.0.1
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            MARKER_VAR: str(self.temp_dir),
            # Job entrypoints run `python ...`: make that this interpreter, whose
            # environment has Ray and alignray.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        })
        env.update(self.client_env())
        return env

    def _start_command(self) -> list[str]:
        # Every port that has a fixed default gets a free one, so this cluster can run
        # beside others on the host. The rest are chosen by Ray.
        return [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            "--node-ip-address", LOOPBACK, "--port", str(self.gcs_port),
            "--include-dashboard", "true", "--dashboard-host", LOOPBACK,
            "--dashboard-port", str(self.dashboard_port),
            "--dashboard-agent-listen-port", str(free_port()),
            "--ray-client-server-port", str(free_port()),
            "--num-cpus", str(self.num_cpus), "--num-gpus", str(self.num_gpus),
            "--object-store-memory", str(self.object_store_mb * 1024 * 1024),
            "--temp-dir", str(self.temp_dir), "--disable-usage-stats",
        ]

    def start(self, timeout_s: float = 120.0) -> "LocalRayCluster":
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        if self.private_token:
            self.token_path.write_text(secrets.token_hex(32))
            self.token_path.chmod(0o600)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self._start_command(), env=self._server_env(),
                                            stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_for_job_server(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def http_status(self, path: str, authenticated: bool = True) -> int | None:
        """Status of a GET on the dashboard (None when nothing answers). Proxies are
        bypassed: this is loopback."""
        headers = {}
        if authenticated and self.private_token:
            headers["Authorization"] = f"Bearer {self.token_path.read_text().strip()}"
        request = urllib.request.Request(f"{self.dashboard_url}{path}", headers=headers)
        try:
            with _DIRECT.open(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def _wait_for_job_server(self, timeout_s: float) -> None:
        """The job API answers once the dashboard is up (with authentication on, only an
        authenticated request gets a 200)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"`ray start` exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            if self.http_status("/api/jobs/") == 200:
                return
            time.sleep(1.0)
        raise TimeoutError(f"the job server at {self.dashboard_url} did not answer within "
                           f"{timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def session_processes(self) -> list[int]:
        """PIDs of the live processes that belong to this cluster (found by the marker
        variable in their environment; other clusters' processes do not carry it)."""
        return marked_processes(str(self.temp_dir))

    def stop(self, timeout_s: float = 60.0) -> list[int]:
        """SIGTERM the `ray start --block` process and wait until every process of this
        cluster has exited. Returns the PIDs that outlived the wait and had to be killed
        (an empty list is a clean shutdown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return kill_marked_leftovers(str(self.temp_dir))

    def __enter__(self) -> "LocalRayCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def marked_processes(value: str) -> list[int]:
    """PIDs of the live processes whose environment has MARKER_VAR=value: every process a
    cluster started with that variable set (Ray passes its environment down)."""
    marker = f"{MARKER_VAR}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if marker in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def kill_marked_leftovers(value: str, grace_s: float = 20.0) -> list[int]:
    """Give the processes marked with ``value`` ``grace_s`` to exit, then SIGKILL (by PID) any
    still alive; returns those (an empty list is a clean shutdown)."""
    deadline = time.monotonic() + grace_s
    while marked_processes(value) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftovers = marked_processes(value)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leftovers
