"""The wheel a user installs with `pip install .`: built from the repository's files, installed
with --no-deps into a fresh venv outside the repository, and run from an empty directory.
The dependencies come from this test's own environment through a .pth file, so nothing is
downloaded."""
from __future__ import annotations

import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROLE_PACKAGES = ("actors", "workflows", "cluster", "conf")


def repository_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files: what a clone (plus local edits) holds."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    return [name for name in listed if (ROOT / name).is_file()]


def installed_name(repo_path: str) -> str:
    """Where a repository file lands in the wheel: role packages move inside `alignray/`."""
    top = repo_path.split("/", 1)[0]
    return f"alignray/{repo_path}" if top in ROLE_PACKAGES else repo_path


def run(command: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know the repository's files")
    source = tmp_path_factory.mktemp("source")
    for name in repository_files():
        if name.startswith("runs/"):
            continue
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((ROOT / name).read_bytes())
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
         str(source)], cwd=out)
    (built,) = out.glob("alignray-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed; a .pth file lends it this environment's packages."""
    path = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(path)], cwd=path)
    python = path / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
         str(wheel)], cwd=path)
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=path)
    # Appended after the venv's own site-packages, so the wheel's alignray wins over the editable one.
    Path(purelib.stdout.strip(), "lent-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return path


def test_the_wheel_installs_one_top_level_name_and_every_module_and_config(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    tops = {name.split("/", 1)[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"alignray"}
    shipped = [name for name in repository_files()
               if name.split("/", 1)[0] in ("alignray", *ROLE_PACKAGES) and "__pycache__" not in name
               and not name.endswith(".pyc")]
    missing = [name for name in shipped if installed_name(name) not in names]
    assert not missing, f"in the repository but not in the wheel (pyproject's package list?): {missing}"
    entry_points = archive_text(wheel, "entry_points.txt")
    assert "alignray = alignray.workflows.cli:main" in entry_points


def archive_text(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(suffix)]
        return archive.read(name).decode()


def test_the_installed_command_runs_from_an_empty_directory(venv, tiny_base_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    where = run([str(venv / "bin" / "python"), "-c",
                 "import alignray, alignray.actors.policy, importlib.util as u;"
                 "print(alignray.__file__, alignray.CONF_DIR, u.find_spec('actors'), u.find_spec('workflows'))"],
                cwd=empty).stdout.split()
    assert where[0].startswith(str(venv)) and where[1].startswith(str(venv)), where
    assert where[2:] == ["None", "None"]  # no generic top-level names installed
    command = str(venv / "bin" / "alignray")
    assert "reward-model" in run([command, "--help"], cwd=empty).stdout
    config = yaml.safe_load(run([command, "run", "experiment=tiny", "--cfg", "job"], cwd=empty).stdout)
    assert config["name"] == "tiny" and config["ppo"]["steps"] == 3
    # One phase, end to end, from the wheel's code and configs: the tiny base model the tests
    # share is resolved from its cache (experiment=tiny's recipe is the tests' recipe) and sampled.
    cache = tiny_base_model.parent.parent
    phase = run([command, "pretrain", "experiment=tiny", f"cache_dir={cache}", f"workdir={empty / 'runs'}"],
                cwd=empty)
    said = phase.stdout + phase.stderr  # the result goes through logging
    assert f"base model: {tiny_base_model}" in said and "I love the new ->" in said
    assert list((empty / "runs").rglob("pretrain-config.yaml")), "Hydra's outputs belong under workdir"
