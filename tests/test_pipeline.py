"""The main job's Hydra surface: a multirun sweep gives each setting its own run."""
import fnmatch
import json
import subprocess
import sys
from pathlib import Path

import pytest

from alignray.core import artifacts
from alignray.core.report import PAGE_CONTENT_PX, png_size

REPO = Path(__file__).resolve().parent.parent


def test_multirun_of_two_ppo_settings_gives_two_runs_with_their_own_metrics(tmp_path, tiny_base_model):
    cache = tiny_base_model.parent.parent  # experiment=tiny uses the same recipe: no rebuild
    command = [sys.executable, "-m", "alignray.workflows.ppo", "-m", "experiment=tiny", "ppo.reward.kind=training_annotators",
               f"ppo.sft_model_path={tiny_base_model}", "ppo.steps=2", "ppo.kl.coef=0.1,0.3", f"cache_dir={cache}", f"workdir={tmp_path}/runs",
               f"hydra.sweep.dir={tmp_path}/multirun"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    jobs = sorted(p for p in (tmp_path / "multirun").iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    assert all((job / "ppo-config.yaml").exists() for job in jobs)
    for job in jobs:  # Hydra's job log holds the phase's progress lines and its result
        job_log = (job / "ppo.log").read_text()
        assert "[ppo] step 1/2 | reward_raw" in job_log and "[ppo] step 2/2 | reward_raw" in job_log
        assert "PPO policy: " in job_log
    runs = sorted((tmp_path / "runs").glob("ppo-*"))
    assert len(runs) == 2
    coefs = set()
    for run in runs:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2]
        coefs.add(records[0]["kl_coef"])
        assert (run / "DONE").exists() and (run / "policy" / "config.json").exists()
        assert list(run.glob("events.out.tfevents.*"))  # logger=tensorboard, the default
    assert coefs == {0.1, 0.3}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_base_model) -> tuple[Path, list[str]]:
    """The whole pipeline once at experiment=tiny, every phase trained: its folder and the
    overrides that reuse it."""
    root = tmp_path_factory.mktemp("tiny_run")
    overrides = ["experiment=tiny", f"cache_dir={tiny_base_model.parent.parent}", f"workdir={root}/runs"]
    result = subprocess.run([sys.executable, "-m", "alignray.workflows.pipeline", *overrides, f"hydra.run.dir={root}/hydra"],
                            cwd=REPO, capture_output=True, text=True, timeout=1200, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, overrides


def trained_folders(runs: Path) -> set[str]:
    return {p.name for prefix in ("sft", "feedback", "reward", "ppo") for p in runs.glob(f"{prefix}-*")}


def test_multirun_of_the_pipeline_gives_each_job_its_own_report(tiny_run):
    """A sweep of the evaluation's size reuses every trained phase; each job evaluates with
    its own setting and writes its own report beside its config."""
    root, overrides = tiny_run
    trained = trained_folders(root / "runs")
    assert len(trained) == 4
    command = [sys.executable, "-m", "alignray.workflows.pipeline", "-m", *overrides, "eval.num_prompts=8,12",
               f"hydra.sweep.dir={root}/multirun"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert trained_folders(root / "runs") == trained  # nothing trained again
    ppo_dirs = set()
    for job, num_prompts in (("0", 8), ("1", 12)):
        report = root / "multirun" / job / "report"
        assert (root / "multirun" / job / "pipeline-config.yaml").exists()
        markdown = report.joinpath("report.md").read_text()
        assert f"This run is multirun job {job}: experiment=tiny " in markdown
        assert f" eval.num_prompts={num_prompts}." in markdown
        assert f"on {num_prompts} held-out prompts" in markdown
        assert "<img" in report.joinpath("report.html").read_text()
        phases = json.loads(report.joinpath("phases.json").read_text())
        assert json.loads(Path(phases["eval"], "eval.json").read_text())["num_prompts"] == num_prompts
        ppo_dirs.add(phases["ppo"])
    assert len(ppo_dirs) == 1 and Path(ppo_dirs.pop()).name in trained


def test_a_run_report_has_readable_figures_and_tables(tiny_run):
    """Every figure of a real run's report fits the page's width (shown at its own size), and
    counts are tables, not Python literals."""
    report = tiny_run[0] / "runs" / "report"
    figures = sorted((report / "figures").glob("*.png"))
    drawn = {figure.name.split("-", 1)[1] for figure in figures}
    assert {artifacts.AGREEMENT_FIGURE, artifacts.CALIBRATION_FIGURE, artifacts.CURVES_FIGURE,
            artifacts.STAGE_TIMES_FIGURE} <= drawn
    assert all(png_size(figure)[0] <= PAGE_CONTENT_PX for figure in figures), [
        (figure.name, png_size(figure)) for figure in figures]
    markdown = report.joinpath("report.md").read_text()
    assert "**Accepted rows by source**" in markdown and "**Training tables**" in markdown
    assert "{'" not in markdown and "': " not in markdown


def test_each_phase_folder_holds_only_what_its_declaration_lists(tiny_run):
    """alignray.core.artifacts.PHASE_OUTPUTS names what each phase writes: a run's folders hold
    nothing else, and every phase of the pipeline left its folder."""
    folders = [p for p in (tiny_run[0] / "runs").iterdir() if p.name != "report"]
    # the per-split names (PROMPTS_FILE, ...) stand for one file per split
    declared = {phase.prefix: {name.format(split=split) for name in phase.writes for split in ("train", "heldout")}
                for phase in artifacts.PHASE_OUTPUTS}
    assert {p.name.split("-")[0] for p in folders} == set(declared) - {artifacts.DPO.prefix}  # DPO: beside the pipeline
    for folder in folders:
        written = {p.name for p in folder.iterdir()
                   if not any(fnmatch.fnmatch(p.name, pattern) for pattern in artifacts.TRACKING_PATTERNS)}
        assert written <= declared[folder.name.split("-")[0]], folder.name


def test_each_phase_command_run_alone_reuses_the_pipelines_folders(tiny_run):
    """After a whole run, the README's one-by-one commands find every upstream output through
    the one resolver (alignray.workflows.phases): each reuses the pipeline's folders, its own
    included, and trains nothing (no Ray starts: nothing is built)."""
    root, overrides = tiny_run
    before = {p.name for p in (root / "runs").iterdir()}
    folder = json.loads((root / "runs" / "report" / "phases.json").read_text())  # the pipeline's own folders
    for command, phase in (("sft", "sft"), ("feedback", "feedback"), ("reward-model", "reward"), ("ppo", "ppo"),
                           ("evaluate", "eval")):
        done = subprocess.run([sys.executable, "-m", "alignray.workflows.cli", command, *overrides,
                               f"hydra.run.dir={root}/hydra-{command}"], cwd=REPO, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"phase {phase}: reusing {folder[phase]}" in done.stderr + done.stdout, (command, done.stderr[-3000:])
        assert "starting a local Ray instance" not in done.stderr + done.stdout, command
    assert {p.name for p in (root / "runs").iterdir()} == before

