"""The report renders: markdown and HTML with figures and tables, opened in headless
Chromium; every figure fits the page's width, so its text is shown at the size it was drawn."""
import json
import logging
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alignray.feedback.report import _agreement_figure
from alignray.core.metrics import plot_curves, plot_stage_times, stage_stack
from alignray.core.report import PAGE_CONTENT_PX, Section, png_size, write_report
from alignray.workflows.ppo import SEQUENTIAL_STAGES
from alignray.workflows.report import feedback_section

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture
def report(tmp_path):
    records = [{"step": i, "reward": i / 10, "kl": (i / 10) ** 2} for i in range(20)]
    figure = plot_curves(records, ["reward", "kl"], tmp_path / "curves.png", title="PPO")
    sections = [Section("Headline", ["Win-rate 0.6 | with a pipe"], [["metric", "value"], ["win-rate", 0.61]],
                        [figure])]
    return write_report(tmp_path / "report", "alignray run", sections)


def test_report_has_markdown_html_and_copied_figures(report):
    md = report["markdown"].read_text()
    assert "| win-rate | 0.61 |" in md and "Win-rate 0.6 | with a pipe" in md
    assert "![curves](figures/00-curves.png)" in md
    assert (report["html"].parent / "figures" / "00-curves.png").exists()
    assert '<img src="figures/00-curves.png"' in report["html"].read_text()


def test_missing_figure_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        write_report(tmp_path, "t", [Section("s", figures=[tmp_path / "nothing.png"])])


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does)")
def test_report_opens_in_headless_chromium_and_figures_render(report, tmp_path):
    url = report["html"].resolve().as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert 'data-images="1"' in dom and 'data-broken-images="0"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,900", url],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    # The figure's lines and axes make the page far from uniform white.
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005


def ppo_records(steps: int = 6) -> list[dict]:
    """PPO metrics as the coordinator logs them: every stage timed, the parallel ones too."""
    stages = ["sync", "sync_probe", "generation", "experience", "training", "monitor", "reference",
              "policy_logprobs", "critic_values", "scoring", "policy_train", "critic_train"]
    return [{"step": i + 1, "step_s": 10.0 + i, "reward_raw": 0.1 * i, "kl": 0.01 * i, "response_length": 20 - i,
             "value_loss": 1 / (i + 1), "reward_normalized": 0.2 * i,
             **{f"time/{stage}": 0.5 + 0.1 * k for k, stage in enumerate(stages)}} for i in range(steps)]


def test_a_step_is_stacked_by_its_sequential_stages_and_the_rest():
    steps, stack = stage_stack(ppo_records(), SEQUENTIAL_STAGES)
    assert steps == [1, 2, 3, 4, 5, 6] and list(stack) == [*SEQUENTIAL_STAGES, "other"]
    sequential = 0.5 + 0.6 + 0.7 + 0.8 + 0.9 + 1.0
    assert stack["other"] == pytest.approx([10.0 + i - sequential for i in range(6)])
    # a record whose stages outlast its step (clock skew) gets no negative "other"
    assert stage_stack([{"step": 1, "step_s": 1.0, "time/generation": 2.0}], ["generation"])[1]["other"] == [0.0]


def test_every_ppo_figure_fits_the_page_width(tmp_path):
    records = ppo_records(80)
    curves = plot_curves(records, ["reward_raw", "reward_normalized", "kl", "response_length", "value_loss"],
                         tmp_path / "curves.png", title="PPO")
    stages = plot_stage_times(records, SEQUENTIAL_STAGES, tmp_path / "stages.png", title="PPO step")
    wide = plot_curves(records, [k for k in records[0] if k.startswith("time/")], tmp_path / "eleven.png")
    for figure in (curves, stages, wide):
        width, height = png_size(figure)
        assert width <= PAGE_CONTENT_PX and height < 1600, (figure.name, width, height)
    assert png_size(wide)[1] > png_size(curves)[1]  # more panels: more rows, not a wider row
    with pytest.raises(ValueError, match="none of the stages"):
        plot_stage_times(records, ["nothing"], tmp_path / "none.png")


def test_the_agreement_figure_of_many_annotators_fits_the_page_width(tmp_path):
    annotators = pd.DataFrame({"preference_score": np.linspace(-0.2, 0.9, 120), "flagged": [False] * 119 + [True]},
                              index=[f"annotator-{i}" for i in range(120)])
    _agreement_figure(SimpleNamespace(annotators=annotators), tmp_path / "agreement.png")
    assert png_size(tmp_path / "agreement.png")[0] <= PAGE_CONTENT_PX


def test_feedback_counts_are_tables_not_python_literals(tmp_path):
    summary = {"rows_in": 45000, "rows_accepted": 45000, "rows_rejected": 0, "annotators": 5,
               "rows_by_source": {"simulated": 45000}, "alpha": {"pairwise": 0.61, "rating": 0.55},
               "flagged_annotators": ["annotator-4"], "annotator_policy": "exclude",
               "training_tables": {"rows_pairwise": 18000, "pairs": 9000, "pointwise": 27000},
               "rlaif": {"judge_model": "/models/judge", "pairs_judged": 12, "mean_position_bias_log_odds": 0.3}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    section = feedback_section(tmp_path)
    assert not any("{" in text or "[" in text for text in section.paragraphs), section.paragraphs
    assert "flagged as bad faith: annotator-4" in section.paragraphs[0]
    tables = section.named_tables
    assert tables["Accepted rows by source"] == [["source", "rows"], ["simulated", 45000]]
    assert tables["Training tables"][1:] == [["rows_pairwise", 18000], ["pairs", 9000], ["pointwise", 27000]]
    assert ["pairs_judged", 12] in tables["AI judge (RLAIF)"]
    report = write_report(tmp_path / "report", "t", [section])
    assert "**Training tables**\n\n| count of | rows |\n|---|---|\n| rows_pairwise | 18000 |" in report["markdown"].read_text()
    page = report["html"].read_text()
    assert "<h3>Accepted rows by source</h3><table>" in page and "<td>simulated</td><td>45000</td>" in page


def test_a_figure_wider_than_the_page_is_logged(tmp_path, caplog):
    figure = tmp_path / "wide.png"
    Image.new("RGB", (PAGE_CONTENT_PX + 1, 50), "white").save(figure)
    with caplog.at_level(logging.WARNING, logger="alignray.core.report"):
        write_report(tmp_path / "report", "t", [Section("s", figures=[figure])])
    assert f"{PAGE_CONTENT_PX + 1} px wide" in caplog.text


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does)")
def test_chromium_shows_the_ppo_figures_at_their_own_size_and_shrinks_a_wide_one(tmp_path):
    records = ppo_records(20)
    fitting = [plot_curves(records, ["reward_raw", "reward_normalized", "kl", "response_length", "value_loss"],
                           tmp_path / "curves.png"), plot_stage_times(records, SEQUENTIAL_STAGES, tmp_path / "s.png")]
    too_wide = tmp_path / "wide.png"
    Image.new("RGB", (4000, 300), "white").save(too_wide)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900", "--dump-dom"]
    for figures, shrunk in ((fitting, "0"), ([*fitting, too_wide], "1")):
        report = write_report(tmp_path / f"report{shrunk}", "t", [Section("s", figures=figures)])
        dom = subprocess.run(flags + [report["html"].resolve().as_uri()], capture_output=True, text=True,
                             timeout=120, check=False).stdout
        assert f'data-images="{len(figures)}"' in dom and f'data-shrunk-images="{shrunk}"' in dom
