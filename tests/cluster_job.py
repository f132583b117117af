"""One whole pipeline submitted as a job to a private `ray start` cluster on 127.0.0.1 (token
authentication on), through `python -m alignray.cluster.submit` as a user would; then a second,
long job left running (--no-wait) and stopped (--stop); then the cluster stopped by its own
handle, never `ray stop`. The submitted run is `experiment=hh_tiny` on the HH-RLHF excerpt
converted by alignray.workflows.convert, so one run serves two test files: what the
submission and the cluster did (tests/test_cluster_submit.py) and what every phase made of the
HH data (tests/test_hh_tiny.py). Everything the tests check is recorded here; the files stay
under `root` until the session ends (tests/conftest.py: the `cluster_job` fixture)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

from alignray.cluster import submit
from alignray.cluster.local_cluster import LocalRayCluster
from alignray.cluster.runtime_env import REPO_ROOT

# The run submitted end to end. To submit another workflow, change WORKFLOW, run_overrides
# and expected_artifacts.
WORKFLOW = "pipeline"
HH_EXCERPT = REPO_ROOT / "tests" / "data" / "hh_rlhf_excerpt.jsonl"


def run_overrides(out: Path) -> list[str]:
    """Hydra overrides that make WORKFLOW finish in a few minutes and write under `out`: every
    phase at experiment=hh_tiny's size; the base model pretrained in the job (its own cache)
    for 30 steps: the job's phases and their logs are the point, not what they learn."""
    return ["experiment=hh_tiny", f"cache_dir={out}/cache", f"workdir={out}/runs", "model.embedded.max_steps=30"]


def expected_artifacts(out: Path) -> list[str]:
    """Glob patterns (relative to `out`) that a successful run must have written: every
    phase's output and the report."""
    return ["cache/base-*/DONE", "cache/base-*/model/model.safetensors",
            *(f"runs/{phase}-*/DONE" for phase in ("sft", "feedback", "reward", "ppo")),
            "runs/ppo-*/policy/model.safetensors", "runs/eval-*/eval.json",
            "runs/report/report.html", "runs/report/report.md", f"runs/hydra/*/{WORKFLOW}-config.yaml"]


def run_submit(cluster: LocalRayCluster, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m alignray.cluster.submit ... --address <cluster>` in a subprocess, like a user."""
    command = [sys.executable, "-m", "alignray.cluster.submit", *args, "--address", cluster.dashboard_url]
    result = subprocess.run(command, cwd=REPO_ROOT, env=cluster.client_environ(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    print(result.stdout[-3000:])
    return result


@dataclasses.dataclass
class ClusterJob:
    cluster: LocalRayCluster  # stopped; its temp dir (logs) stays
    out: Path  # the submitted run's cache and runs
    job_id: str
    converted: subprocess.CompletedProcess | None = None
    private_token: str = ""
    unauthenticated_status: int | None = None
    submitted: subprocess.CompletedProcess | None = None
    long_submitted: subprocess.CompletedProcess | None = None
    long_job_id: str = ""
    stop_exit: int | None = None
    logs_exit: int | None = None
    leftovers: list[int] | None = None  # processes of the cluster still alive after its stop
    still_running: list[int] | None = None


def run_cluster_job(root: Path) -> ClusterJob:
    """Convert the HH excerpt, start the cluster, submit the run and wait for it, submit the
    long one and stop it, stop the cluster: each outcome recorded, whatever fails first."""
    started = time.monotonic()
    out = root / "out"
    converted = subprocess.run(
        [sys.executable, "-m", "alignray.workflows.convert", "--format", "hh-rlhf", str(HH_EXCERPT),
         str(out / "runs" / "hh_data"), "--heldout-fraction", "0.3"], cwd=REPO_ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    # Made just before its start: it picks its free ports now, and other Ray clusters on this host may take them.
    cluster = LocalRayCluster(root / "ray", num_cpus=2)
    job = ClusterJob(cluster, out, "alignray-test-run", converted)
    try:
        cluster.start()
        job.private_token = cluster.token_path.read_text().strip()
        print(f"cluster up: {time.monotonic() - started:.0f} s")
        job.unauthenticated_status = cluster.http_status("/api/jobs/", authenticated=False)
        if job.converted.returncode == 0:
            job.submitted = run_submit(cluster, WORKFLOW, *run_overrides(job.out), "--submission-id", job.job_id)
        print(f"first job done: {time.monotonic() - started:.0f} s")
        # Long: the tiny run with a pretraining step count it never reaches.
        long_run = ["experiment=tiny", f"cache_dir={root}/long/cache", f"workdir={root}/long/runs",
                    "model.embedded.max_steps=100000", "model.embedded.max_seconds=600"]
        job.long_submitted = run_submit(cluster, WORKFLOW, *long_run, "--no-wait")
        if job.long_submitted.returncode == 0:
            job.long_job_id = job.long_submitted.stdout.strip().splitlines()[-1]
            wait_until_running(cluster, job.long_job_id)
            job.stop_exit = run_submit(cluster, "--stop", job.long_job_id).returncode
            job.logs_exit = run_submit(cluster, "--logs", job.long_job_id).returncode
        print(f"second job stopped: {time.monotonic() - started:.0f} s")
    finally:
        job.leftovers = cluster.stop()
        job.still_running = cluster.session_processes()
    print(f"end to end: {time.monotonic() - started:.0f} s")
    return job


def wait_until_running(cluster: LocalRayCluster, job_id: str, timeout_s: float = 180.0) -> None:
    """Poll the job until its entrypoint runs. A stop sent while the job is still pending
    (a loaded machine) can leave its driver starting after the stop, retrying the stopped
    cluster's GCS past the cluster's end: the stop of a running job is what is tested."""
    poll = ("import sys, time\n"
            "from alignray.cluster.submit import make_client\n"
            "client, deadline = make_client(sys.argv[1]), time.monotonic() + float(sys.argv[3])\n"
            "while getattr(client.get_job_status(sys.argv[2]), 'value', '') == 'PENDING' "
            "and time.monotonic() < deadline:\n"
            "    time.sleep(1)\n")
    subprocess.run([sys.executable, "-c", poll, cluster.dashboard_url, job_id, str(timeout_s)], cwd=REPO_ROOT,
                   env=cluster.client_environ(), timeout=timeout_s + 60, check=True)


def job_failure(job: ClusterJob) -> str:
    """What the submitted run printed, for an assertion's message."""
    return "".join(p.stdout[-3000:] for p in (job.converted, job.submitted) if p is not None)


STOPPED = submit.EXIT_CODES["STOPPED"]
