"""Whole PPO runs through ``run_ppo`` on the session's Ray cluster (real actors, DeepSpeed on
CPU, the tiny model): the reward rises on a task with a known optimum, and a run
interrupted after a checkpoint resumes to exactly the uninterrupted run's result; each
critic-free preset (GRPO, RLOO, REINFORCE++) climbs too, without a critic; and the
evaluation's known answer for a policy judged against itself."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from alignray.config import typed_config
from alignray.config.ppo import RewardFunctionConfig
from alignray.core.metrics import read_metrics
from alignray.core.model_card import read_model_card
from tests.test_ppo_actors import small_config
from alignray.workflows.common import CONFIG_PATH
from alignray.workflows.evaluate import evaluate_policies
from alignray.workflows.ppo import PPOCoordinator, run_ppo

CONF = Path(CONFIG_PATH)
STEPS = 8
CRASH_AT = 5  # 0-based step; the last checkpoint before it is after step 4


def run_config(model_path, prompts_path, workdir):
    cfg = small_config(model_path, prompts_path)
    cfg.workdir = str(workdir)
    cfg.ppo.steps, cfg.ppo.checkpoint_every = STEPS, 2
    # reward: the share of "the" among a response's words, whose optimum is all "the";
    # a KL coefficient and learning rate that let a tiny model move within a few steps
    cfg.ppo.prompts_per_step, cfg.ppo.rollout.max_new_tokens = 32, 12
    cfg.ppo.epochs, cfg.ppo.minibatches, cfg.ppo.policy.lr, cfg.ppo.critic.lr = 2, 2, 2e-3, 1e-3
    cfg.ppo.kl.coef = 0.02
    return cfg


def with_length_term(cfg):
    """A user's reward function on the runs compared with the uninterrupted one: a length term
    small enough (at most 0.012 a response) to leave the task's optimum all "the"."""
    cfg.ppo.reward.functions = [RewardFunctionConfig("tests.test_ppo_algorithm:word_count", -0.001, name="length")]
    return cfg


class SimulatedCrash(Exception):
    pass


def without_times(record: dict) -> dict:
    """The record without what depends on the wall clock (stage times, rates)."""
    return {k: v for k, v in record.items() if not k.startswith("time") and k != "step_s" and "per_s" not in k}


def assert_same_record(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (expected["step"], key)
        else:
            assert got[key] == value, (expected["step"], key)


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, tiny_base_model, prompts_path, tmp_path_factory):
    cfg = with_length_term(run_config(tiny_base_model, prompts_path, tmp_path_factory.mktemp("whole")))
    return run_ppo(typed_config(cfg), str(tiny_base_model), None)


def test_reward_rises_towards_the_known_optimum(uninterrupted):
    records = read_metrics(uninterrupted / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    first, last = records[:2], records[-2:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(last, "reward_raw") > mean(first, "reward_raw") + 0.05
    assert all(r["probe_max_abs_diff"] <= 1e-5 for r in records)
    # the sampler's log-probs are the policy's own (fp32 on CPU; the static decoder matches a full forward)
    assert all(r["rollout_logprob_gap_max"] < 1e-4 for r in records)
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert len(summary["stage_times_per_step"]) == STEPS
    assert {"generation", "reference", "critic_values", "scoring", "training", "sync"} <= set(
        summary["stage_times_per_step"][0])
    # the start timed in parts: the slowest actor's own __init__ lies within the wait for all of them
    startup = summary["startup_s"]
    assert set(startup) == {"ray_init", "placement_groups", "actors_ready", "slowest_actor_init",
                            "deepspeed_worlds", "coordinator_total"}
    assert 0 < startup["slowest_actor_init"] <= startup["actors_ready"] < startup["coordinator_total"]
    assert (uninterrupted / "curves.png").stat().st_size > 0
    assert (uninterrupted / "policy" / "model.safetensors").exists()
    matter, body = read_model_card(uninterrupted / "policy")
    assert matter["pipeline_tag"] == "text-generation" and "Starts from `" in body
    assert "## Metrics" in body and "kl_last_step" in body and "`ppo.reward.kind=target_word`" in body


def test_an_interrupted_run_resumes_exactly(ray_cluster, tiny_base_model, prompts_path, tmp_path, uninterrupted,
                                            monkeypatch):
    cfg = with_length_term(run_config(tiny_base_model, prompts_path, tmp_path))
    original_step = PPOCoordinator.step

    def crash_at(self, step):
        if step == CRASH_AT:
            raise SimulatedCrash(f"interrupted before step {step}")
        return original_step(self, step)

    monkeypatch.setattr(PPOCoordinator, "step", crash_at)
    with pytest.raises(SimulatedCrash):
        run_ppo(typed_config(cfg), str(tiny_base_model), None)
    monkeypatch.setattr(PPOCoordinator, "step", original_step)
    resumed = run_ppo(typed_config(cfg), str(tiny_base_model), None)

    assert resumed.name == uninterrupted.name  # same settings, same phase folder name
    got = [without_times(r) for r in read_metrics(resumed / "metrics.jsonl")]
    expected = [without_times(r) for r in read_metrics(uninterrupted / "metrics.jsonl")]
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # nothing logged twice
    for a, b in zip(got, expected):
        assert_same_record(a, b)
    weights, expected_weights = (load_file(d / "policy" / "model.safetensors") for d in (resumed, uninterrupted))
    for name, tensor in expected_weights.items():
        assert torch.allclose(weights[name], tensor, atol=1e-6), name


def test_policy_lag_overlaps_generation_and_still_climbs_under_the_rollout_correction(
        ray_cluster, tiny_base_model, prompts_path, tmp_path, uninterrupted):
    cfg = with_length_term(run_config(tiny_base_model, prompts_path, tmp_path))
    cfg.ppo.policy_lag = 1
    # the sampler one update behind is the mismatch the rollout correction weighs
    cfg.ppo.rollout_correction.mode = "token_tis"
    records = read_metrics(run_ppo(typed_config(cfg), str(tiny_base_model), None) / "metrics.jsonl")
    assert [r["policy_lag"] for r in records] == [0] + [1] * (STEPS - 1)  # batch t sampled by update t-1
    assert records[0]["rollout_logprob_gap_max"] < 1e-4 < records[-1]["rollout_logprob_gap_max"]  # one update apart
    assert records[0]["rollout_correction/weight_mean"] == pytest.approx(1.0, abs=1e-4)
    assert records[-1]["rollout_correction/weight_mean"] != pytest.approx(1.0, abs=1e-4)
    assert records[-1]["prompts_taken"] == STEPS * cfg.ppo.prompts_per_step  # none drawn for a step 9
    assert all(r["probe_max_abs_diff"] <= 1e-5 for r in records)
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(records[-2:], "reward_raw") > mean(records[:2], "reward_raw") + 0.05
    lock_step = read_metrics(uninterrupted / "metrics.jsonl")
    assert records[0]["reward_raw"] == pytest.approx(lock_step[0]["reward_raw"])  # the same first batch
    assert records[1]["reward_raw"] != pytest.approx(lock_step[1]["reward_raw"])  # sampled before the update


@pytest.mark.parametrize("method", ["grpo", "rloo", "reinforce_pp"])
def test_each_critic_free_preset_climbs_towards_the_known_optimum(ray_cluster, tiny_base_model, prompts_path, tmp_path,
                                                                   method):
    """The preset's algorithm keys (conf/experiment/<method>.yaml) on the PPO run's task,
    with as many responses per step (8 prompts x 4 for the group methods): the reward rises,
    and no critic ran."""
    cfg = run_config(tiny_base_model, prompts_path, tmp_path)
    cfg.ppo = OmegaConf.merge(cfg.ppo, OmegaConf.load(CONF / "experiment" / f"{method}.yaml").ppo)
    cfg.ppo.prompts_per_step = 32 // cfg.ppo.samples_per_prompt
    out = run_ppo(typed_config(cfg), str(tiny_base_model), None)
    records = read_metrics(out / "metrics.jsonl")
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(records[-2:], "reward_raw") > mean(records[:2], "reward_raw") + 0.05
    assert records[-1]["prompts_taken"] == STEPS * cfg.ppo.prompts_per_step
    assert ("kl_loss" in records[-1]) == (cfg.ppo.kl.placement == "loss")
    summary = json.loads((out / "summary.json").read_text())
    assert "critic_values" not in summary["stage_times_per_step"][0] and "value_loss" not in records[-1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["coordinator.pt", "policy"]


def test_a_users_reward_function_is_added_to_the_scorer_and_its_part_logged(uninterrupted):
    for record in read_metrics(uninterrupted / "metrics.jsonl"):  # the run's length term (with_length_term)
        assert record["reward_raw"] == pytest.approx(record["reward_parts/target_word"] + record["reward_parts/length"])
        assert record["reward_parts/length"] < 0  # every response has words: -0.001 x their count


def test_evaluating_a_policy_against_itself_is_a_tie_with_zero_kl(tiny_base_model, prompts_path, tmp_path):
    cfg = run_config(tiny_base_model, prompts_path, tmp_path)
    cfg.data.source = "embedded"  # the held-out annotators judge the embedded default's tweet openings only
    cfg.eval.num_prompts, cfg.eval.samples_to_write = 24, 5
    result = evaluate_policies(typed_config(cfg), str(tiny_base_model), str(tiny_base_model), str(prompts_path),
                               tmp_path / "eval")
    assert result["num_prompts"] == 24
    assert (result["win_rate"], result["ci_low"], result["ci_high"]) == (0.5, 0.5, 0.5)
    assert abs(result["mean_kl"]) < 1e-4 and result["length_ratio"] == 1.0
    assert result["fluency_policy"] == pytest.approx(result["fluency_reference"])
    assert not result["preferred_with_guards"]  # a tie is no preference
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["verdict"] == result["verdict"]
    samples = (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 5 and json.loads(samples[0])["sft"] == json.loads(samples[0])["ppo"]
