"""Cluster job submission (cluster/): a private `ray start` cluster on 127.0.0.1 with token
authentication, a short workflow submitted through `python -m alignray.cluster.submit` as a user
would, its artifacts checked, then the cluster stopped by its own handle, never `ray stop`
(the run: tests/cluster_job.py, shared with tests/test_hh_tiny.py).
Plus quick checks of the wrapper's pieces and of the cluster manifests."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

# `cluster/` is run from the repository root (`python -m alignray.cluster.submit`) and is not part of
# the installed package, so a bare `pytest` (which does not put the root on sys.path) needs this.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alignray.cluster import submit  # noqa: E402
from alignray.cluster.runtime_env import REPO_ROOT, build_runtime_env, project_dependencies  # noqa: E402
from tests.cluster_job import STOPPED, WORKFLOW, expected_artifacts, job_failure  # noqa: E402

CLUSTER_DIR = REPO_ROOT / "cluster"


def user_token() -> str | None:
    path = Path.home() / ".ray" / "auth_token"
    return path.read_text().strip() if path.exists() else None


# ------------------------------------------------------------------------- end to end

def test_submit_runs_workflow_on_a_local_cluster_and_stops_it_cleanly(cluster_job):
    cluster, out, job_id = cluster_job.cluster, cluster_job.out, cluster_job.job_id
    # Token authentication is on: the job API refused a request without the token.
    assert cluster_job.unauthenticated_status == 401
    result = cluster_job.submitted
    assert result is not None and result.returncode == 0, job_failure(cluster_job)
    assert f"job {job_id} SUCCEEDED" in result.stdout
    for pattern in expected_artifacts(out):
        assert list(out.glob(pattern)), f"missing {pattern} under {out}"
    # It ran as a job of this cluster and was told to join it rather than start a Ray.
    assert (cluster.temp_dir / "session_latest" / "logs" / f"job-driver-{job_id}.log").exists()
    config = next(out.glob(f"runs/hydra/*/{WORKFLOW}-config.yaml")).read_text()
    assert "address: auto" in config
    # Hydra's job log holds every phase's progress lines (the Ray Train workers' relayed by
    # the driver) and results; every phase's metrics reached the default tracker too.
    job_log = next(out.glob(f"runs/hydra/*/{WORKFLOW}.log")).read_text()
    for phase in ("pretrain", "sft", "reward", "ppo"):
        assert f"[{phase}] step " in job_log, f"no {phase} progress in the job log"
    assert "feedback: " in job_log and "=== evaluation done in" in job_log and "report: " in job_log
    for pattern in ("cache/base-*", *(f"runs/{p}-*" for p in ("sft", "feedback", "reward", "ppo", "eval"))):
        assert list(out.glob(f"{pattern}/events.out.tfevents.*")), f"no TensorBoard events in {pattern}"

    # A job left running (--no-wait) is stopped with --stop; --logs reports STOPPED.
    assert cluster_job.long_submitted.returncode == 0, cluster_job.long_submitted.stdout[-3000:]
    assert cluster_job.long_job_id.startswith(f"alignray-{WORKFLOW}-")
    assert cluster_job.stop_exit == 0
    assert cluster_job.logs_exit == STOPPED
    # SIGTERM to the `ray start --block` process ended every process of this cluster.
    assert cluster.process.returncode is not None
    assert cluster_job.leftovers == [], f"processes of the cluster outlived it: {cluster_job.leftovers}"
    assert cluster_job.still_running == []
    # The cluster's token is its own: it was never written to the user's ~/.ray/auth_token.
    # (Compared by value: other people's Ray processes may create that file meanwhile.)
    assert cluster_job.private_token and user_token() != cluster_job.private_token


# --------------------------------------------------------------------- wrapper pieces

def test_workflow_names_are_validated_against_workflows_dir(capsys):
    assert "pretrain" in submit.available_workflows()
    assert "common" not in submit.available_workflows()  # a helper, not a Hydra app
    assert submit.workflow_name("alignray.workflows.pretrain") == "pretrain"
    with pytest.raises(SystemExit) as exit_:
        submit.main(["no_such_workflow", "--address", "http://127.0.0.1:1"])
    assert exit_.value.code == 2
    assert "choose from" in capsys.readouterr().err


def test_overrides_pass_through_and_the_workflow_joins_its_cluster():
    args = submit.parse_args(["pretrain", "ppo.steps=3", "--no-wait", "name=a b",
                              "--env", "K=V", "--", "--cfg", "job"])
    assert args.overrides == ["ppo.steps=3", "name=a b", "--cfg", "job"]
    assert args.no_wait and args.env == [("K", "V")]
    entrypoint = submit.workflow_entrypoint("pretrain", args.overrides)
    # address=auto first, so an explicit cluster.address from the user still wins
    assert entrypoint == "python -m alignray.workflows.pretrain cluster.address=auto ppo.steps=3 'name=a b' --cfg job"


def test_runtime_env_uploads_the_repo_without_local_state():
    env = build_runtime_env(extra_env={"K": "V"})
    assert env["working_dir"] == str(REPO_ROOT)
    for local_state in (".venv/", ".git/", "runs/", "outputs/", ".alignray-cache/"):
        assert local_state in env["excludes"]
    assert env["env_vars"]["K"] == "V" and env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert "pip" not in env  # only with --install-deps
    from alignray.actors.worker_setup import HOOK
    assert env["worker_process_setup_hook"] == HOOK  # a submitted job's workers skip mlflow too
    pinned = build_runtime_env(install_deps=True)["pip"]
    assert pinned == project_dependencies() and any(d.startswith("ray[") for d in pinned)


def test_token_is_sent_when_the_user_has_one(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    submit.use_token_if_available()
    assert "RAY_AUTH_MODE" not in submit.os.environ  # no token anywhere: leave auth off
    (tmp_path / "token").write_text("t" * 64)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    submit.use_token_if_available()
    assert submit.os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # an explicit choice is respected
    submit.use_token_if_available()
    assert submit.os.environ["RAY_AUTH_MODE"] == "disabled"


# -------------------------------------------------------------------------- manifests

def _gpus(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def test_rayjob_runs_the_pipeline_with_one_gpu_per_worker_pod():
    import ray
    job = yaml.safe_load((CLUSTER_DIR / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    assert "python -m alignray.workflows.pipeline" in job["spec"]["entrypoint"]
    assert "experiment=multi_gpu" in job["spec"]["entrypoint"]
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"].rsplit(".", 1)[0] == ray.__version__.rsplit(".", 1)[0]
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert str(head["rayStartParams"]["num-gpus"]) == "0"  # no model role lands on the head
    assert all(_gpus(c) == 0 for c in head["template"]["spec"]["containers"])
    # whether the pods hold what the entrypoint asks for: tests/test_layout.py
    for group in spec["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert _gpus(container) == 1  # one GPU per worker pod


def test_cluster_launcher_has_a_cpu_head_and_gpu_workers():
    launcher = yaml.safe_load((CLUSTER_DIR / "ray-cluster.yaml").read_text())
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != launcher["head_node_type"]]
    # a fixed size (what the presets need is checked in tests/test_layout.py)
    assert all(t["min_workers"] == t["max_workers"] and t["resources"].get("GPU") == 1 for t in workers)
    setup = "\n".join(launcher["setup_commands"])
    assert "pip install" in setup and "alignray" in setup


class HeadStartingUp:
    """A job client whose head answers as Ray's does until its job agent is up."""

    def __init__(self, refusals: int, message: str = submit.AGENT_NOT_READY):
        self.refusals, self.message, self.calls = refusals, message, 0

    def submit_job(self, **job):
        self.calls += 1
        if self.calls <= self.refusals:
            raise RuntimeError(f"Request failed with status code 500: {self.message}, please try again later..")
        return job["submission_id"]


def test_a_submission_waits_for_the_job_agent_and_other_refusals_raise_at_once():
    client = HeadStartingUp(refusals=2)
    assert submit.submit_when_ready(client, poll_s=0.01, submission_id="job-1") == "job-1" and client.calls == 3
    with pytest.raises(RuntimeError, match=submit.AGENT_NOT_READY):
        submit.submit_when_ready(HeadStartingUp(refusals=100), wait_s=0.05, poll_s=0.01, submission_id="job-2")
    other = HeadStartingUp(refusals=1, message="Job with submission_id job-3 already exists")
    with pytest.raises(RuntimeError, match="already exists"):
        submit.submit_when_ready(other, poll_s=0.01, submission_id="job-3")
    assert other.calls == 1
