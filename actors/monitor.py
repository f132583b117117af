"""The over-optimisation monitor's Ray side (the rules are in alignray/ppo/monitor.py): between PPO
steps, the rollout pool answers a fixed probe set of held-out prompts with the policy's
current weights, the reference (actor, or LoRA policy) gives the answers' KL and the reward actor their proxy
score, and a held-out judge compares them with the SFT model's answers, recorded before the
first update. Driver-side, like WeightSync: it holds handles, no model.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from alignray.actors.base import wait_named
from alignray.core.artifacts import MONITOR_FILE, PROMPTS_COPY_DIR
from alignray.config.ppo import MonitorConfig
from alignray.data.prompts import prepare_embedded_data, read_prompts
from alignray.evaluation.compare import bootstrap_ci, degenerate_share, mean_length_ratio
from alignray.ppo.experience import PromptBatch
from alignray.models.generation import decode_responses
from alignray.ppo.monitor import (Alarm, MonitorCheck, alarms, best_check, checkpoints_to_keep, read_history,
                              write_history)
from alignray.ppo import masked_sum
from alignray.scoring import MONITOR_JUDGE, DataAtHand, build_scorer, resolve_scorer

log = logging.getLogger("alignray.ppo.monitor")
# Probe batches draw their sampling seeds from steps no training batch uses, so a check leaves
# the training rollouts exactly as they would be without it.
PROBE_SEED_STEP = 500_000
Judge = Callable[[Sequence[str], Sequence[str]], np.ndarray]  # (prompts, answers) -> scores


class OverOptimisationMonitor:
    def __init__(self, cfg: MonitorConfig, actors, weights, probe: PromptBatch, probe_prompts: list[str],
                 tokenizer, judge: Judge, out: Path, seed: int):
        self.cfg, self.actors, self.weights, self.probe = cfg, actors, weights, probe
        self.probe_prompts, self.tokenizer, self.judge = probe_prompts, tokenizer, judge
        self.path, self.seed = out / MONITOR_FILE, seed
        self.history: list[MonitorCheck] = []
        self.fired: list[Alarm] = []
        self.sft_texts: list[str] | None = None
        self.sft_scores: np.ndarray | None = None

    def due(self, step: int, last_step: int) -> bool:
        """Before the first update, every ``cfg.every`` updates, and after the last."""
        return step == 0 or step % self.cfg.every == 0 or step == last_step

    def check(self, step: int) -> list[Alarm]:
        """Measure the policy after ``step`` updates; returns the alarms this check raised."""
        started = time.monotonic()
        self.weights.sync(version=step)  # the pool samples with the policy's current weights
        pool = self.actors.pool
        rollout = pool.collect(pool.submit(self.probe, PROBE_SEED_STEP + step), self.weights.restore)
        texts = decode_responses(self.tokenizer, rollout.response_ids, rollout.response_mask)
        parts, _ = wait_named({
            "reference": self.actors.reference_logprobs(rollout.prompt_ids, rollout.prompt_mask,
                                                        rollout.response_ids),
            "proxy": self.actors.reward.score_with_disagreement.remote(self.probe_prompts, texts)})
        proxy, disagreement = parts["proxy"]
        kl = masked_sum(rollout.logprobs - parts["reference"], rollout.response_mask, dim=1).mean().item()
        scores = np.asarray(self.judge(self.probe_prompts, texts), dtype=float)
        if self.sft_texts is None:  # the first check: the SFT model's answers are the baseline
            self.sft_texts, self.sft_scores = texts, scores
        win_rate, low, high = bootstrap_ci(scores, self.sft_scores, seed=self.seed)
        check = MonitorCheck(step=step, proxy_reward=float(proxy.mean()),
                             judge_win_rate=win_rate, judge_ci_low=low, judge_ci_high=high, kl=kl,
                             length_ratio=mean_length_ratio(texts, self.sft_texts),
                             degenerate_share=degenerate_share(texts), reward_disagreement=float(disagreement.mean()),
                             seconds=round(time.monotonic() - started, 3))
        self.history.append(check)
        raised = alarms(self.history, self.cfg)
        self.fired += raised
        write_history(self.history, self.fired, self.path, self.sft_texts, self.sft_scores.tolist())
        log.info("monitor after %d updates: proxy %.3f, judge win-rate %.3f [%.3f, %.3f], KL %.2f, length %.2f x SFT",
                 step, check.proxy_reward, win_rate, low, high, kl, check.length_ratio)
        for alarm in raised:
            log.warning("monitor alarm %s at step %d: %s", alarm.rule, alarm.step, alarm.evidence)
        return raised

    def resume(self, step: int) -> None:
        """Take back the checks of an interrupted run up to ``step`` (its last checkpoint)."""
        if self.path.exists():
            history, fired, self.sft_texts, sft_scores = read_history(self.path)
            self.sft_scores = np.asarray(sft_scores, dtype=float)
            self.history = [c for c in history if c.step <= step]
            self.fired = [a for a in fired if a.step <= step]

    def steps_to_keep(self) -> list[int]:
        return checkpoints_to_keep(self.history, self.cfg.keep_checkpoints)

    def seconds(self) -> float:
        return sum(c.seconds for c in self.history)


def monitor_judge_kind(monitor: MonitorConfig, data_source: str) -> str | None:
    """The monitor's judge, checked through the scorer registry; None when ``auto`` finds no
    judge for this data. Probe prompts the user names (``ppo.monitor.prompts_path``) are taken
    as fit for the judge chosen with them, the panel included."""
    data = DataAtHand(data_source, tweets=data_source == "embedded" or bool(monitor.prompts_path))
    return resolve_scorer(monitor.judge, MONITOR_JUDGE, data)


def monitor_probe_prompts(monitor: MonitorConfig, eval_prompts: int, data_cfg, out: Path) -> list[str] | None:
    """The monitor's probe prompts (raw), or None when it does not run. On the embedded
    default they are the last held-out prompts; the evaluation takes the first
    ``eval_prompts`` (eval.num_prompts), and the two must not meet: choosing a checkpoint on
    the prompts that then report its win-rate would inflate the figure."""
    if not monitor.every:
        return None
    if monitor_judge_kind(monitor, data_cfg.source) is None:  # the monitor is optional: off, and said so
        log.warning("ppo.monitor is off: the held-out annotators judge only the embedded default; set "
                    f"{MONITOR_JUDGE.key}.kind=heldout_annotators and ppo.monitor.prompts_path to watch this run")
        return None
    if monitor.prompts_path:
        table, _ = read_prompts(monitor.prompts_path)
        return table.column("prompt").to_pylist()[: monitor.probe_prompts]
    if data_cfg.source != "embedded":
        raise ValueError(f"{MONITOR_JUDGE.key}.kind={monitor.judge.kind} on your own data needs "
                         "ppo.monitor.prompts_path (held-out prompts, not the evaluation's)")
    table, _ = read_prompts(prepare_embedded_data(data_cfg, out / PROMPTS_COPY_DIR)["prompts_heldout"])
    if table.num_rows < eval_prompts + monitor.probe_prompts:
        raise ValueError(f"{table.num_rows} held-out prompts cannot give eval.num_prompts="
                         f"{eval_prompts} and ppo.monitor.probe_prompts={monitor.probe_prompts} apart")
    return table.column("prompt").to_pylist()[-monitor.probe_prompts:]


def make_judge(monitor: MonitorConfig, data_source: str) -> Judge:
    """The monitor's judge, built by the scorer registry as the evaluation's is: scores per
    (prompt, answer), higher is preferred."""
    return build_scorer(monitor.judge, monitor_judge_kind(monitor, data_source))


def monitor_summary(monitor: OverOptimisationMonitor | None) -> dict | None:
    if not monitor:
        return None
    return {"checks": len(monitor.history), "seconds": round(monitor.seconds(), 2),
            "alarms": [dataclasses.asdict(a) for a in monitor.fired],
            "best_step": best_check(monitor.history).step}
