"""`experiment=hh_tiny`: every phase on CPU on real HH-RLHF prompts and pairs (the excerpt in
tests/data, converted by alignray.workflows.convert), in a subprocess like a user's run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HH_EXCERPT = REPO / "tests" / "data" / "hh_rlhf_excerpt.jsonl"


@pytest.mark.slow
def test_hh_tiny_runs_every_phase_on_converted_hh_data(tmp_path, tiny_base_model):
    workdir = tmp_path / "runs"
    subprocess.run([sys.executable, "-m", "alignray.workflows.convert", "--format", "hh-rlhf", str(HH_EXCERPT),
                    str(workdir / "hh_data"), "--heldout-fraction", "0.3"], cwd=REPO, check=True, timeout=120)
    cache = tiny_base_model.parent.parent  # hh_tiny builds on experiment=tiny: the same base model
    result = subprocess.run([sys.executable, "-m", "alignray.workflows.pipeline", "experiment=hh_tiny", f"workdir={workdir}",
                             f"cache_dir={cache}", "cluster=cpu_test"], cwd=REPO, capture_output=True, text=True,
                            timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    evaluation = json.loads(next(workdir.glob("eval-*/eval.json")).read_text())
    assert evaluation["prompts"] == str(workdir / "hh_data" / "prompts_heldout.parquet")
    assert evaluation["constraints"] == "chat" and evaluation["num_prompts"] > 0
    assert evaluation["judge"] == "pairs" and evaluation["num_pairs"] > 0
    assert evaluation["measure"] == "implicit_reward_accuracy" and "win_rate" not in evaluation
    samples = [json.loads(line) for line in next(workdir.glob("eval-*/samples.jsonl")).read_text().splitlines()]
    assert any(sample["prompt"].startswith("Human: ") for sample in samples)  # multi-turn HH prompts
    report = (workdir / "report" / "report.md").read_text()
    assert "PPO (reference: SFT) implicit-reward accuracy on the held-out preference pairs in" in report
    assert "an accuracy, not a win-rate" in report
