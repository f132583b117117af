"""A seeded PPO run on `experiment=tiny` sizes pins every step metric, so a refactor that
should not change the algorithm is checked against numbers recorded before it.

The golden file holds the metrics of three steps against a reward model (an untrained head
on the tiny base model, saved with a mean and std so the reward model's own normalisation is
in play). Float results depend on the CPU's kernels (AVX2 vs AVX512 reduce in another
order) and a changed low bit can flip a sampled token, so the numbers are compared only on
the CPU capability they were recorded on; elsewhere the test skips and says why.

Regenerate (after a change that is meant to move the numbers, said in the commit):
    ALIGNRAY_WRITE_GOLDEN=1 python -m pytest tests/test_ppo_golden.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from alignray.core.metrics import read_metrics
from alignray.workflows.common import compose_app_config
from alignray.workflows.ppo import run_ppo

GOLDEN = Path(__file__).parent / "golden" / "ppo_tiny.json"
# What depends on the wall clock, not on the algorithm.
WALL_CLOCK = ("time/", "time_s", "step_s", "per_s", "sync/gb_per_s")


def cpu_capability() -> str:
    return f"{torch.backends.cpu.get_cpu_capability()} torch {torch.__version__.split('+')[0]}"


def deterministic(record: dict) -> dict:
    return {k: v for k, v in record.items() if not any(part in k for part in WALL_CLOCK)}


@pytest.fixture(scope="module")
def golden_run(ray_cluster, tiny_base_model, tmp_path_factory) -> list[dict]:
    # Checked before the run: on another CPU capability its numbers could not be compared
    if not os.environ.get("ALIGNRAY_WRITE_GOLDEN"):
        recorded_on = json.loads(GOLDEN.read_text())["recorded_on"]
        if recorded_on != cpu_capability():
            pytest.skip(f"golden metrics recorded on {recorded_on}, this is {cpu_capability()}")
    from alignray.reward.model import init_reward_model, save_reward_model
    workdir = tmp_path_factory.mktemp("golden")
    torch.manual_seed(0)
    model, tokenizer = init_reward_model(tiny_base_model)
    save_reward_model(model, tokenizer, workdir / "rm", mean=0.5, std=2.0)
    cfg = compose_app_config([
        "experiment=tiny", f"workdir={workdir}", f"cache_dir={workdir / 'cache'}", "cluster=cpu_test",
        "ppo.reward.kind=reward_model", "ppo.prompts_per_step=8", "ppo.rollout.max_new_tokens=10",
        # the PPO profile the numbers were recorded with (the default's before 2026-12-06)
        "ppo.epochs=4", "ppo.policy.lr=1e-5", "ppo.critic.lr=5e-5", "ppo.policy_lag=0", "ppo.kl.controller=fixed"])
    out = run_ppo(cfg, str(tiny_base_model), str(workdir / "rm"))
    return [deterministic(r) for r in read_metrics(out / "metrics.jsonl")]


def test_seeded_tiny_run_matches_the_recorded_metrics(golden_run):
    if os.environ.get("ALIGNRAY_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"recorded_on": cpu_capability(), "records": golden_run}, indent=1) + "\n")
        pytest.skip(f"wrote {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())
    assert len(golden_run) == len(golden["records"]) == 3
    differences = []
    for got, expected in zip(golden_run, golden["records"]):
        assert got.keys() == expected.keys()
        differences += [f"step {expected['step']} {key}: {got[key]!r} != {value!r}" for key, value in expected.items()
                        if got[key] != pytest.approx(value, rel=1e-6, abs=1e-6)]
    assert not differences, "\n".join(differences)
