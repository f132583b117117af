"""The over-optimisation monitor: its alarm rules on hand-made histories, and a PPO run that
over-optimises on purpose. The proxy pays for the word "the" (a known optimum the tiny model
reaches in a few steps); the held-out judge, served over HTTP on loopback, is the annotator
panel docked for every "the": the proxy rises while the judge falls, and the monitor must see
it, stop, and hand over the policy the judge preferred."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alignray.core.artifacts import MONITOR_FILE, OVEROPTIMISATION_FIGURE, SUMMARY_FILE
from alignray.config import typed_config
from alignray.config.ppo import MonitorConfig
from alignray.data.prompts import format_prompt, read_prompts
from alignray.evaluation.compare import bootstrap_ci
from alignray.feedback.simulated import HELD_OUT_JUDGE_RATERS, judge_scores
from alignray.models.generation import decode_responses, sample_responses
from alignray.core.metrics import read_metrics
from alignray.models.modeling import load_causal_lm, load_tokenizer
from alignray.scoring import target_word_share
from alignray.ppo.monitor import MonitorCheck, alarms, best_check, checkpoints_to_keep, plot_overoptimisation, read_history
from alignray.workflows.ppo import run_ppo
from tests.conftest import score_endpoint
from tests.test_ppo_run import run_config


def check(step, proxy, win, half_width=0.1, kl=1.0, length=1.0, degenerate=0.0) -> MonitorCheck:
    return MonitorCheck(step=step, proxy_reward=proxy, judge_win_rate=win, judge_ci_low=win - half_width,
                        judge_ci_high=win + half_width, kl=kl, length_ratio=length, degenerate_share=degenerate)


def rules(history, **settings) -> list[str]:
    return [alarm.rule for alarm in alarms(history, MonitorConfig(**settings))]


def test_proxy_up_judge_down_needs_a_rising_proxy_and_a_fall_beyond_the_intervals():
    rising_proxy_falling_judge = [check(0, 0.1, 0.5, 0.0), check(10, 0.3, 0.7), check(20, 0.5, 0.45)]
    assert rules(rising_proxy_falling_judge) == ["proxy_up_judge_down"]
    overlapping = [check(0, 0.1, 0.5, 0.0), check(10, 0.3, 0.7), check(20, 0.5, 0.55)]  # 0.65 > 0.6: noise
    assert rules(overlapping) == []
    falling_proxy = [check(0, 0.5, 0.5, 0.0), check(10, 0.3, 0.7), check(20, 0.1, 0.45)]
    assert rules(falling_proxy) == []
    # the fall is judged within the window: a peak four checks back no longer counts
    old_peak = [check(0, 0.0, 0.9), check(10, 0.1, 0.45), check(20, 0.2, 0.45), check(30, 0.3, 0.44)]
    assert rules(old_peak, window=3) == [] and rules(old_peak, window=4) == ["proxy_up_judge_down"]


def test_kl_length_and_degenerate_alarms_and_the_default_thresholds():
    assert rules([check(10, 0.1, 0.6, kl=9.0)]) == ["kl_budget"]
    assert rules([check(10, 0.1, 0.6, length=0.4)]) == ["length_drift"]
    assert rules([check(10, 0.1, 0.6, length=2.5)]) == ["length_drift"]
    assert rules([check(10, 0.1, 0.6, degenerate=0.3)]) == ["degenerate_share"]
    # the default run ends at KL 4.5 per response and 0.87 x SFT's length: no alarm
    assert rules([check(80, 0.1, 0.8, kl=4.5, length=0.87, degenerate=0.02)]) == []


def test_best_check_and_the_checkpoint_budget():
    history = [check(0, 0.0, 0.5, 0.0), check(10, 0.2, 0.8), check(20, 0.3, 0.8), check(30, 0.4, 0.6)]
    assert best_check(history).step == 10  # a tie goes to the earlier policy, nearer the reference
    assert checkpoints_to_keep(history, 2) == [10, 20]
    assert checkpoints_to_keep(history, 1) == [10]


def test_the_plot_marks_the_kept_policy(tmp_path):
    history = [check(0, 0.0, 0.5, 0.0, kl=0.0), check(10, 0.2, 0.7, kl=1.0), check(20, 0.5, 0.4, kl=3.0)]
    path = plot_overoptimisation(history, 10, alarms(history, MonitorConfig()), tmp_path / "plot.png")
    from PIL import Image
    image = np.asarray(Image.open(path).convert("L"))
    assert image.shape[1] <= 900 and image.std() > 10  # fits a page, not blank


def panel_disliking_the(prompts, responses):
    """The held-out panel's score minus 2 x the share of "the" in the answer."""
    return judge_scores(responses, HELD_OUT_JUDGE_RATERS) - 2.0 * target_word_share(responses, "the").numpy()


@pytest.fixture
def judge_url():
    with score_endpoint(panel_disliking_the) as (url, _):
        yield url


def test_an_over_optimising_run_is_caught_rolled_back_and_its_best_policy_kept(
        ray_cluster, tiny_base_model, prompts_path, tmp_path, judge_url):
    cfg = run_config(tiny_base_model, prompts_path, tmp_path)
    cfg.ppo.steps, cfg.ppo.checkpoint_every = 12, 0
    monitor = cfg.ppo.monitor
    monitor.every, monitor.judge.kind, monitor.judge.url = 2, "http", judge_url
    monitor.prompts_path, monitor.probe_prompts, monitor.on_alarm = str(prompts_path), 32, "rollback"
    out = run_ppo(typed_config(cfg), str(tiny_base_model), None)

    summary = json.loads((out / SUMMARY_FILE).read_text())
    history, fired, sft_answers, sft_scores = read_history(out / MONITOR_FILE)
    assert [a.rule for a in fired] == ["proxy_up_judge_down"], fired
    assert summary["steps_run"] == fired[0].step < cfg.ppo.steps  # stopped at the alarm
    assert history[-1].proxy_reward > history[0].proxy_reward  # the proxy did rise
    best = best_check(history)
    assert summary["policy_step"] == best.step < history[-1].step
    assert best.judge_win_rate > history[-1].judge_ci_high
    records = read_metrics(out / "metrics.jsonl")
    assert len(records) == summary["steps_run"] and all("time/monitor" in r for r in records)
    assert (out / OVEROPTIMISATION_FIGURE).stat().st_size > 10_000
    # The handed-over policy is the judge's choice: its own answers to the probe beat the last
    # checked policy's by the same judge.
    tokenizer = load_tokenizer(str(out / "policy"))
    tokenizer.padding_side = "left"
    kept = load_causal_lm(str(out / "policy")).eval()
    probe = [format_prompt(tokenizer, p) for p in read_prompts(prompts_path)[0].column("prompt").to_pylist()]
    encoded = tokenizer(probe[:len(sft_answers)], return_tensors="pt", padding=True)
    with torch.no_grad():
        sampled = sample_responses(kept, encoded["input_ids"], encoded["attention_mask"],
                                   max_new_tokens=cfg.ppo.rollout.max_new_tokens, end_token_ids=[tokenizer.eos_token_id],
                                   pad_token_id=tokenizer.pad_token_id, temperature=1.0, top_p=1.0,
                                   generator=torch.Generator().manual_seed(0))
    texts = decode_responses(tokenizer, sampled.response_ids, sampled.response_mask)
    scores = panel_disliking_the(probe, texts)
    kept_win_rate = bootstrap_ci(scores, np.asarray(sft_scores))[0]
    assert kept_win_rate > history[-1].judge_ci_high
