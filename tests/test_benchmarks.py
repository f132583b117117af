"""The GPU benchmark must stay runnable between the rare sessions that have a GPU: its
``--cpu-smoke`` path runs every part (generation paths, the policy actor's update, a short
PPO run through Ray) at a tiny shape on CPU and writes its JSON. Numbers are not checked
here: performance is measured in benchmarks/, not asserted by tests."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ppo_gpu_benchmark_cpu_smoke_runs_every_part():
    result_file = REPO / "runs" / "ppo_gpu_cpu_smoke.json"
    result_file.unlink(missing_ok=True)
    run = subprocess.run([sys.executable, "benchmarks/ppo_gpu.py", "--cpu-smoke", "--ppo-steps", "3"], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert {row["path"] for row in result["generation"]} == {"plain generate", "alignray static, eager"}
    assert all(row["tokens_per_s"] > 0 for row in result["generation"])
    assert [t["zero_stage"] for t in result["training"]] == [0, 2]
    assert result["ppo"]["steps_measured"] == 2 and result["ppo"]["sync_bytes_per_worker"] > 0
    assert {"generation", "training", "sync"} <= set(result["ppo"]["stage_seconds"])
    assert "PPO step" in run.stdout
