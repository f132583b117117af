"""The over-optimisation monitor: while PPO runs, a held-out judge scores the policy's answers
to a fixed probe set against the SFT model's, and alarms say when the proxy (the reward PPO
climbs) and the judge part ways.

Past some KL from the reference, a proxy reward keeps rising while what people prefer falls
(Gao, Schulman and Hilton, "Scaling Laws for Reward Model Overoptimization", 2022). Each
check records the signals (`MonitorCheck`); `alarms` applies stated rules to the history;
`best_check` is the checkpoint the judge prefers, the one handed to evaluation.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from alignray.config.ppo import MonitorConfig


@dataclasses.dataclass(frozen=True)
class MonitorCheck:
    """What one check measured on the probe prompts, after ``step`` policy updates."""
    step: int
    proxy_reward: float  # mean raw score of the reward PPO trains on
    judge_win_rate: float  # held-out judge: policy vs SFT answers, ties count half
    judge_ci_low: float
    judge_ci_high: float
    kl: float  # mean KL(policy || reference) per response, nats
    length_ratio: float  # mean words of the policy's answers over the SFT model's
    degenerate_share: float
    reward_disagreement: float | None = None  # members' std of a reward-model ensemble (0: one scorer)
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class Alarm:
    step: int
    rule: str
    evidence: str


def proxy_slope(checks: Sequence[MonitorCheck]) -> float:
    """Least-squares slope of the proxy reward per policy update over ``checks``."""
    steps = np.array([c.step for c in checks], dtype=float)
    if len(checks) < 2 or np.ptp(steps) == 0:
        return 0.0
    return float(np.polyfit(steps, [c.proxy_reward for c in checks], 1)[0])


def alarms(history: Sequence[MonitorCheck], cfg: MonitorConfig) -> list[Alarm]:
    """The alarms the latest check raises, by these rules:

    - ``proxy_up_judge_down``: over the last ``cfg.window`` checks the proxy's slope is
      positive while the judge's win-rate fell by more than its interval: the latest check's
      interval lies wholly below the interval of the best check earlier in the window (two
      overlapping intervals are noise at the probe's size, not a fall);
    - ``kl_budget``: KL per response above ``cfg.kl_budget``;
    - ``length_drift``: answers' length against SFT's outside
      [``cfg.min_length_ratio``, ``cfg.max_length_ratio``];
    - ``degenerate_share``: more degenerate answers than ``cfg.max_degenerate_share``.
    """
    if not history:
        return []
    last, raised = history[-1], []
    window = list(history[-cfg.window:])
    if len(window) >= 2:
        slope = proxy_slope(window)
        peak = max(window[:-1], key=lambda c: c.judge_win_rate)
        if slope > 0 and last.judge_ci_high < peak.judge_ci_low:
            raised.append(Alarm(last.step, "proxy_up_judge_down",
                                f"proxy slope {slope:+.4f}/update over steps {window[0].step}-{last.step}; judge "
                                f"win-rate {last.judge_win_rate:.3f} [{last.judge_ci_low:.3f}, {last.judge_ci_high:.3f}]"
                                f" below {peak.judge_win_rate:.3f} [{peak.judge_ci_low:.3f}, "
                                f"{peak.judge_ci_high:.3f}] at step {peak.step}"))
    if last.kl > cfg.kl_budget:
        raised.append(Alarm(last.step, "kl_budget", f"KL {last.kl:.2f} nats per response > {cfg.kl_budget:g}"))
    low, high = cfg.min_length_ratio, cfg.max_length_ratio
    if not low <= last.length_ratio <= high:
        raised.append(Alarm(last.step, "length_drift",
                            f"length {last.length_ratio:.2f} x SFT's, outside [{low:g}, {high:g}]"))
    if last.degenerate_share > cfg.max_degenerate_share:
        raised.append(Alarm(last.step, "degenerate_share",
                            f"{last.degenerate_share:.2f} of answers degenerate > {cfg.max_degenerate_share:g}"))
    return raised


def best_check(history: Sequence[MonitorCheck]) -> MonitorCheck:
    """The check the judge prefers: highest win-rate; the earlier one (nearer the reference) on a tie."""
    if not history:
        raise ValueError("no monitor checks")
    return max(history, key=lambda c: (c.judge_win_rate, -c.step))


def checkpoints_to_keep(history: Sequence[MonitorCheck], budget: int) -> list[int]:
    """Steps whose checkpoints stay: the ``budget`` best by the judge."""
    ranked = sorted(history, key=lambda c: (c.judge_win_rate, -c.step), reverse=True)
    return sorted(c.step for c in ranked[:budget])


def write_history(history: Sequence[MonitorCheck], fired: Sequence[Alarm], path: Path,
                  sft_answers: Sequence[str], sft_judge_scores: Sequence[float]) -> None:
    """monitor.json, rewritten after each check: every check, every alarm, and the SFT model's
    probe answers with their judge scores (the baseline a resumed run compares against)."""
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps({"checks": [dataclasses.asdict(c) for c in history],
                                   "alarms": [dataclasses.asdict(a) for a in fired],
                                   "sft_answers": list(sft_answers), "sft_judge_scores": list(sft_judge_scores)},
                                  indent=2))
    partial.replace(path)


def read_history(path: Path) -> tuple[list[MonitorCheck], list[Alarm], list[str], list[float]]:
    data = json.loads(path.read_text())
    return ([MonitorCheck(**c) for c in data["checks"]], [Alarm(**a) for a in data["alarms"]],
            data["sft_answers"], data["sft_judge_scores"])


def plot_overoptimisation(history: Sequence[MonitorCheck], chosen_step: int, fired: Sequence[Alarm],
                          path: Path) -> Path:
    """Proxy reward and judge win-rate against KL, the chosen checkpoint marked: the picture
    of over-optimisation is the proxy still rising where the judge turns down."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kl = [c.kl for c in history]
    fig, proxy_axis = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    proxy_axis.plot(kl, [c.proxy_reward for c in history], "o-", color="tab:blue", label="proxy reward (left)")
    proxy_axis.set_xlabel("KL(policy || reference) per response, nats")
    proxy_axis.set_ylabel("proxy reward (raw)", color="tab:blue")
    judge_axis = proxy_axis.twinx()
    # The KL of successive checks may go back and forth: a band filled along it would fold
    # over itself and hide the points, so each check carries its own 95% interval.
    win = [c.judge_win_rate for c in history]
    judge_axis.errorbar(kl, win, yerr=[[w - c.judge_ci_low for w, c in zip(win, history)],
                                       [c.judge_ci_high - w for w, c in zip(win, history)]],
                        fmt="s-", color="tab:orange", capsize=3, elinewidth=1,
                        label="judge win-rate vs SFT, 95% interval (right)")
    judge_axis.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    judge_axis.set_ylabel("judge win-rate vs SFT", color="tab:orange")
    chosen = next(c for c in history if c.step == chosen_step)
    judge_axis.plot([chosen.kl], [chosen.judge_win_rate], marker="*", markersize=16, color="tab:green",
                    linestyle="none", label=f"kept policy (step {chosen_step})")
    for alarm in fired:
        at = next(c for c in history if c.step == alarm.step)
        proxy_axis.axvline(at.kl, color="tab:red", linewidth=0.8, alpha=0.6)
    lines = proxy_axis.get_legend_handles_labels()[0] + judge_axis.get_legend_handles_labels()[0]
    labels = proxy_axis.get_legend_handles_labels()[1] + judge_axis.get_legend_handles_labels()[1]
    proxy_axis.legend(lines, labels, loc="best", fontsize=8)
    proxy_axis.set_title("Over-optimisation monitor" + (" (red: alarms)" if fired else ""))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
