"""The README's commands: `scripts/run.sh` passes Hydra overrides through to the pipeline
(it once handed them to the installer as pip extras)."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_run_script_passes_overrides_to_the_pipeline():
    done = subprocess.run(["bash", "scripts/run.sh", "experiment=tiny", "ppo.steps=7", "--cfg", "job"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "name: tiny" in done.stdout
    assert "steps: 7" in done.stdout and "[setup] installing" not in done.stdout
