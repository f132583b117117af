"""Submit an alignray workflow to a Ray cluster as a Ray job, follow its logs, stop it.

    python -m alignray.cluster.submit WORKFLOW [HYDRA_OVERRIDE ...] [--address URL] [--no-wait]
                             [--install-deps] [--env KEY=VALUE ...] [--submission-id ID]
                             [-- RAW_WORKFLOW_ARGS ...]
    python -m alignray.cluster.submit --logs JOB_ID [--address URL]   # follow a job until it ends
    python -m alignray.cluster.submit --stop JOB_ID [--address URL]

The job runs `python -m alignray.workflows.WORKFLOW cluster.address=auto OVERRIDES...` with this
repository as its working directory, so the workflow joins the cluster it was submitted to
instead of starting its own Ray. Overrides go to Hydra unchanged; arguments after `--`
too, which is how Hydra's own flags (`--multirun`, `--cfg job`) get through.

Address: --address, else RAY_API_SERVER_ADDRESS or RAY_ADDRESS, else http://127.0.0.1:8265
(the dashboard of a local cluster, or a port-forward to a remote one).

Authentication: Ray 2.60 clusters started with `ray start` require a token when one
existed on the head (`~/.ray/auth_token`). The SDK sends it only when RAY_AUTH_MODE=token,
so when that variable is unset and a token is available (RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) we set it. A cluster without authentication
ignores the header.

Exit status: 0 when the job SUCCEEDED, 1 FAILED, 3 STOPPED, 130 interrupted and left
running, 2 a usage error; with --no-wait, 0 once the job is accepted.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

from alignray.cluster.runtime_env import DEFAULT_RUNTIME_ENV_FILE, REPO_ROOT, build_runtime_env

log = logging.getLogger("alignray.cluster.submit")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
EXIT_INTERRUPTED = 130


# ----------------------------------------------------------------------------- workflows

def available_workflows(workflows_dir: Path = REPO_ROOT / "workflows") -> list[str]:
    """Modules of workflows/ that are Hydra apps (helpers such as common.py are not)."""
    return sorted(path.stem for path in workflows_dir.glob("*.py")
                  if "@hydra.main" in path.read_text(errors="replace"))


def workflow_name(name: str) -> str:
    """`pretrain`, `alignray.workflows.pretrain` and `workflows/pretrain.py` all name one workflow."""
    name = name.removesuffix(".py").replace("/", ".").removeprefix("alignray.").removeprefix("workflows.")
    known = available_workflows()
    if name not in known:
        print(f"error: unknown workflow {name!r}; choose from: {', '.join(known)}", file=sys.stderr)
        raise SystemExit(2)
    return name


def workflow_entrypoint(workflow: str, overrides: list[str]) -> str:
    # cluster.address=auto comes first so that an explicit override from the user wins.
    return shlex.join(["python", "-m", f"alignray.workflows.{workflow}", "cluster.address=auto", *overrides])


# -------------------------------------------------------------------------------- client

def use_token_if_available() -> None:
    """Make the Ray SDK send the cluster token when the user has one (see module doc)."""
    if os.environ.get("RAY_AUTH_MODE"):
        return  # set explicitly: respect it
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def make_client(address: str | None):
    """A JobSubmissionClient for `address`. An explicit address wins: the Ray SDK would let
    RAY_ADDRESS in the environment override it, so we drop those variables here."""
    if address:
        for name in ADDRESS_ENV_VARS:
            os.environ.pop(name, None)
    elif not any(os.environ.get(name) for name in ADDRESS_ENV_VARS):
        address = DEFAULT_ADDRESS
    use_token_if_available()  # before Ray reads its config
    from ray.job_submission import JobSubmissionClient
    return JobSubmissionClient(address)


# ------------------------------------------------------------------------- job lifecycle

async def _print_logs(client, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def wait_for_end(client, job_id: str, poll_s: float = 1.0) -> str:
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return str(status.value)
        time.sleep(poll_s)


def follow(client, job_id: str) -> int:
    """Print the job's logs until it ends; exit status from its final state. Ctrl-C asks
    whether to stop the job, or leaves it running."""
    try:
        try:
            asyncio.run(_print_logs(client, job_id))
        except RuntimeError as err:  # the log stream broke; the job may still be running
            log.warning("log stream ended early (%s); waiting for the job", err)
        status = wait_for_end(client, job_id)
    except KeyboardInterrupt:
        if not ask_yes_no(f"\nStop job {job_id}? [y/N] "):
            log.info("%s keeps running. Follow it with --logs %s, stop it with --stop %s.", job_id, job_id, job_id)
            return EXIT_INTERRUPTED
        client.stop_job(job_id)
        status = wait_for_end(client, job_id)
    info = client.get_job_info(job_id)
    message = f": {info.message}" if info.message else ""
    log.info("job %s %s%s", job_id, status, message)
    return EXIT_CODES.get(status, 1)


def ask_yes_no(question: str) -> bool:
    if not sys.stdin.isatty():
        return False  # nobody to ask: never stop a job without a yes
    try:
        return input(question).strip().lower() in ("y", "yes")
    except (EOFError, KeyboardInterrupt):
        return False


def warn_if_outputs_are_temporary(overrides: list[str]) -> None:
    """A job runs in a copy of the repository that Ray unpacks on the head node and deletes
    with the session: a relative `workdir` (the default, runs/<name>) would vanish."""
    workdir = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("workdir=")), None)
    if workdir is None or not (workdir.startswith("/") or workdir.startswith("~")):
        log.warning("note: outputs go to a relative workdir inside the job's temporary copy of the "
                    "repository; pass workdir=/an/absolute/path (storage every node sees) to keep them")


# A head just started answers 500 with this until its job agent is up.
AGENT_NOT_READY = "No available agent to submit job"


def submit_when_ready(client, wait_s: float = 120.0, poll_s: float = 2.0, **job) -> str:
    """``client.submit_job(**job)``, retried while the cluster's job agent is still starting."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as error:
            if AGENT_NOT_READY not in str(error) or time.monotonic() > deadline:
                raise
            log.info("the cluster's job agent is not up yet; submitting again in %.0f s", poll_s)
            time.sleep(poll_s)


def submit(args: argparse.Namespace) -> int:
    workflow = workflow_name(args.workflow)
    from alignray import CONF_DIR
    from alignray.config import MovedKeyError, check_overrides
    try:  # here, rather than on the cluster once the job starts
        check_overrides(args.overrides, CONF_DIR)
    except MovedKeyError as error:
        raise SystemExit(f"alignray submit: {error}") from None
    warn_if_outputs_are_temporary(args.overrides)
    entrypoint = workflow_entrypoint(workflow, args.overrides)
    runtime_env = build_runtime_env(args.runtime_env, dict(args.env), args.install_deps)
    client = make_client(args.address)
    submission_id = args.submission_id or f"alignray-{workflow}-{datetime.now():%Y%m%d-%H%M%S}"
    job_id = submit_when_ready(
        client, entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id,
        metadata={"alignray_workflow": workflow, "hydra_overrides": shlex.join(args.overrides)})
    log.info("submitted %s: %s", job_id, entrypoint)
    if args.no_wait:
        log.info("follow with --logs %s, stop with --stop %s", job_id, job_id)
        print(job_id)  # the result, alone on stdout for scripts
        return 0
    return follow(client, job_id)


def stop(args: argparse.Namespace) -> int:
    client = make_client(args.address)
    stopped = client.stop_job(args.stop)
    log.info("%s: %s", args.stop, "stop requested" if stopped else "already ended")
    return 0


# ------------------------------------------------------------------------------- command

def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv: list[str]) -> argparse.Namespace:
    # Everything after `--` goes to the workflow untouched (Hydra's own flags).
    raw = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="python -m alignray.cluster.submit", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", nargs="?", help="one of: " + ", ".join(available_workflows()))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. ppo.steps=10")
    parser.add_argument("--address", help=f"job server URL (default {DEFAULT_ADDRESS})")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    parser.add_argument("--install-deps", action="store_true",
                        help="pip-install pyproject's dependencies on the cluster (needs an index)")
    parser.add_argument("--env", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                        help="extra environment variable for the job (repeatable)")
    parser.add_argument("--runtime-env", type=Path, default=DEFAULT_RUNTIME_ENV_FILE,
                        help="base runtime_env YAML (default cluster/runtime_env.yaml)")
    parser.add_argument("--submission-id", help="job id to use (default alignray-WORKFLOW-TIME)")
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument("--logs", metavar="JOB_ID", help="follow a submitted job until it ends")
    actions.add_argument("--stop", metavar="JOB_ID", help="stop a submitted job")
    args = parser.parse_intermixed_args(argv)
    args.overrides = [*args.overrides, *raw]
    if (args.logs or args.stop) and args.workflow:
        parser.error("--logs and --stop take a job id, not a workflow")
    if not (args.logs or args.stop or args.workflow):
        parser.error("name a workflow to submit, or use --logs / --stop JOB_ID")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")  # stderr, as before
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.stop:
            return stop(args)
        if args.logs:
            return follow(make_client(args.address), args.logs)
        return submit(args)
    except (RuntimeError, ConnectionError) as err:  # how the Ray SDK reports refusals
        log.error("error: %s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
