"""The main job's Hydra surface: a multirun sweep gives each setting its own run."""
import fnmatch
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignray.core import artifacts
from alignray.core.report import PAGE_CONTENT_PX, png_size

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_base_model) -> tuple[Path, list[str]]:
    """The whole pipeline once at experiment=tiny, every phase trained: its folder and the
    overrides that reuse it."""
    root = tmp_path_factory.mktemp("tiny_run")
    # SFT reads only the rows its 20 steps of 32 take, and evaluates on the first 128 held-out
    # rows: the tokenising of the whole embedded set and its full evaluations are not the point here
    overrides = ["experiment=tiny", f"cache_dir={tiny_base_model.parent.parent}", f"workdir={root}/runs",
                 "sft.max_examples=640", "sft.eval_rows=128"]
    result = subprocess.run([sys.executable, "-m", "alignray.workflows.pipeline", *overrides, f"hydra.run.dir={root}/hydra"],
                            cwd=REPO, capture_output=True, text=True, timeout=1200, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, overrides


def trained_folders(runs: Path) -> set[str]:
    return {p.name for prefix in ("sft", "feedback", "reward", "ppo") for p in runs.glob(f"{prefix}-*")}


def test_multirun_of_two_ppo_settings_gives_each_its_own_run_and_report(tiny_run):
    """A sweep of the KL coefficient: the job at the whole run's setting reuses every phase, the
    other reuses SFT, feedback and the reward model and trains its own PPO run, with its own
    metrics; each job evaluates its own policy and writes its own report beside its config."""
    root, overrides = tiny_run
    trained = trained_folders(root / "runs")
    assert len(trained) == 4
    default_coef = yaml.safe_load((root / "hydra" / "pipeline-config.yaml").read_text())["ppo"]["kl"]["coef"]
    coefs = (default_coef, 0.3)
    assert coefs[0] != coefs[1]
    command = [sys.executable, "-m", "alignray.workflows.pipeline", "-m", *overrides, f"ppo.kl.coef={coefs[0]},{coefs[1]}",
               f"hydra.sweep.dir={root}/multirun"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    new = trained_folders(root / "runs") - trained
    assert trained <= trained_folders(root / "runs") and len(new) == 1 and new.pop().startswith("ppo-")
    phases = {}
    for job, coef in (("0", coefs[0]), ("1", coefs[1])):
        report = root / "multirun" / job / "report"
        assert (root / "multirun" / job / "pipeline-config.yaml").exists()
        markdown = report.joinpath("report.md").read_text()
        assert f"This run is multirun job {job}: experiment=tiny " in markdown
        assert f" ppo.kl.coef={coef}." in markdown and "on 32 held-out prompts" in markdown
        assert "<img" in report.joinpath("report.html").read_text()
        phases[job] = json.loads(report.joinpath("phases.json").read_text())
        evaluation = json.loads(Path(phases[job]["eval"], "eval.json").read_text())
        assert evaluation["ppo_policy"] == str(Path(phases[job]["ppo"]) / "policy")  # its own policy
    assert phases["0"]["ppo"] == json.loads((root / "runs" / "report" / "phases.json").read_text())["ppo"]
    assert {k: v for k, v in phases["0"].items() if k not in ("ppo", "eval", "seconds")} == {
        k: v for k, v in phases["1"].items() if k not in ("ppo", "eval", "seconds")}  # nothing else trained again
    assert phases["0"]["ppo"] != phases["1"]["ppo"] and phases["0"]["eval"] != phases["1"]["eval"]
    # Hydra's job log holds the phase's progress lines and its result: trained in job 1, reused in job 0
    logs = {job: (root / "multirun" / job / "pipeline.log").read_text() for job in ("0", "1")}
    assert "[ppo] step 1/3 | reward_raw" in logs["1"] and "[ppo] step 3/3 | reward_raw" in logs["1"]
    assert "[ppo] step" not in logs["0"] and f"phase ppo: reusing {phases['0']['ppo']}" in logs["0"]
    for job, coef in (("0", coefs[0]), ("1", coefs[1])):  # each run its own metrics
        run = Path(phases[job]["ppo"])
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        # the adaptive controller moves the coefficient by at most 0.2 x 16/640 of itself a step
        assert [r["step"] for r in records] == [1, 2, 3] and records[0]["kl_coef"] == pytest.approx(coef, rel=0.01)
        assert (run / "DONE").exists() and (run / "policy" / "config.json").exists()
        assert list(run.glob("events.out.tfevents.*"))  # logger=tensorboard, the default


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
    beside = {artifacts.DPO.prefix, artifacts.JUDGE.prefix}  # phases beside the pipeline
    assert {p.name.split("-")[0] for p in folders} == set(declared) - beside
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

