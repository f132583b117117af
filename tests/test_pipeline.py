"""The main job's Hydra surface: a multirun sweep gives each setting its own run."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_multirun_of_two_ppo_settings_gives_two_runs_with_their_own_metrics(tmp_path, tiny_base_model):
    cache = tiny_base_model.parent.parent  # experiment=tiny uses the same recipe: no rebuild
    command = [sys.executable, "-m", "workflows.ppo", "-m", "experiment=tiny", "ppo.reward.kind=annotators",
               "ppo.steps=2", "ppo.kl.coef=0.1,0.3", f"cache_dir={cache}", f"workdir={tmp_path}/runs",
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
