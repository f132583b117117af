"""The report renders: markdown and HTML with figures, opened in headless Chromium."""
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from alignray.metrics import plot_curves
from alignray.report import Section, write_report

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
