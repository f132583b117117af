"""The Ray runtime environment of a submitted alignray job: the repository as the working
directory, the excludes and environment variables of `cluster/runtime_env.yaml`, and
optionally the pinned dependencies of pyproject.toml as a `pip` list."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUNTIME_ENV_FILE = Path(__file__).resolve().parent / "runtime_env.yaml"


def project_dependencies(pyproject: Path = REPO_ROOT / "pyproject.toml") -> list[str]:
    """`[project].dependencies` of pyproject.toml, as pip requirement strings."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(pyproject, "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def build_runtime_env(base_file: Path = DEFAULT_RUNTIME_ENV_FILE,
                      extra_env: dict[str, str] | None = None,
                      install_deps: bool = False,
                      working_dir: Path = REPO_ROOT) -> dict:
    """The runtime_env dict for `JobSubmissionClient.submit_job`.

    install_deps: add a `pip` list, for a cluster whose Python lacks alignray's
        dependencies. Ray then builds a virtualenv on every node (it sees the node's own
        packages, so a GPU node keeps its CUDA torch); that needs a package index, so an
        offline cluster must have the dependencies installed already and leaves this off.
    """
    runtime_env = copy.deepcopy(yaml.safe_load(Path(base_file).read_text()) or {})
    runtime_env["working_dir"] = str(working_dir)
    env_vars = {str(k): str(v) for k, v in (runtime_env.get("env_vars") or {}).items()}
    env_vars.update(extra_env or {})
    runtime_env["env_vars"] = env_vars
    if install_deps:
        runtime_env["pip"] = project_dependencies(working_dir / "pyproject.toml")
    return runtime_env
