"""`experiment=hh_tiny`: every phase on CPU on real HH-RLHF prompts and pairs (the excerpt in
tests/data, converted by alignray.workflows.convert), in a subprocess like a user's run: the
run submitted as a job to a private cluster by tests/cluster_job.py (whose submission
tests/test_cluster_submit.py checks)."""
import json

import pytest

from tests.cluster_job import job_failure


@pytest.mark.slow
def test_hh_tiny_runs_every_phase_on_converted_hh_data(cluster_job):
    assert cluster_job.converted.returncode == 0, cluster_job.converted.stdout[-3000:]
    assert cluster_job.submitted is not None and cluster_job.submitted.returncode == 0, job_failure(cluster_job)
    workdir = cluster_job.out / "runs"
    config = next(workdir.glob("hydra/*/pipeline-config.yaml")).read_text()
    assert "name: hh_tiny" in config
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
