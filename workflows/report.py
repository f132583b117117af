"""The run report: reads every phase's artifacts and lays them out for a person.

Every number here is read from the files the phases wrote (summary.json, eval.json,
metrics.jsonl, samples.jsonl); nothing is a constant. A figure a phase did not produce is
left out of its section rather than invented.
"""
from __future__ import annotations

import json
from pathlib import Path

from alignray.config import AlignrayConfig
from alignray.core.artifacts import (AGREEMENT_FIGURE, CALIBRATION_FIGURE, CURVES_FIGURE, ELO_FIGURE, EVAL_FILE,
                                LOSS_FIGURE, METRICS_FILE, RATINGS_FIGURE, REPORT_FILE, SAMPLES_FILE,
                                MONITOR_FILE, OVEROPTIMISATION_FIGURE, STAGE_TIMES_FIGURE, SUMMARY_FILE)
from alignray.evaluation.compare import IMPLICIT_REWARD_ACCURACY, METRIC_LABELS, WIN_RATE
from alignray.core.metrics import read_metrics
from alignray.ppo.monitor import read_history
from alignray.core.report import Section, write_report

SAMPLES_IN_REPORT = 8


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _figures(folder: Path, names: list[str]) -> list[Path]:
    return [folder / name for name in names if (folder / name).exists()]


def _fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def judge_figure(evaluation: dict) -> tuple[str, str]:
    """The evaluation's figure in words ("PPO vs SFT win-rate, judged by ...") and its value
    with the interval; eval.json names the judge and the measure."""
    measure = evaluation.get("measure", WIN_RATE)
    label = METRIC_LABELS.get(measure, measure)
    judge = evaluation.get("judge_description", "n/a")
    name = (f"PPO (reference: SFT) {label} on {judge}" if measure == IMPLICIT_REWARD_ACCURACY
            else f"PPO vs SFT {label}, judged by {judge}")
    value = (f"{_fmt(evaluation.get(measure), 2)} [{_fmt(evaluation.get('ci_low'), 2)}, "
             f"{_fmt(evaluation.get('ci_high'), 2)}]")
    return f"{name} (95% CI)", value


def headline(evaluation: dict, reward_eval: dict, seconds: dict) -> Section:
    heldout = reward_eval.get("model", {}).get("heldout", {})
    rows = [["measure", "value"],
            list(judge_figure(evaluation)),
            ["verdict with the reward-hacking guards", evaluation.get("verdict", "n/a")],
            ["reward-model accuracy vs held-out annotators",
             _fmt(heldout.get("heldout_annotators", {}).get("accuracy"))],
            ["wall time of this invocation (s; reused phases count 0)", _fmt(sum(seconds.values()), 0)]]
    preferred = evaluation.get("preferred_with_guards")
    if evaluation.get("measure") == IMPLICIT_REWARD_ACCURACY:
        text = ("On the held-out pairs the PPO policy favours the chosen responses more than the SFT model does, "
                "and every guard holds." if preferred else
                "On the held-out pairs the PPO policy does not clearly favour the chosen responses more than the SFT "
                "model does with every guard holding: read the evaluation section before trusting this run.")
        text += f" The figure is {evaluation.get('measure_note')}."
    else:
        judge = f"The judge ({evaluation.get('judge', 'n/a')})"
        text = (f"{judge} prefers the PPO policy to the SFT model, and every guard holds." if preferred else
                f"{judge} does not clearly prefer the PPO policy with every guard holding: "
                "read the evaluation section before trusting this run.")
    return Section("Headline", [text], rows)


def pretrained_section(base: Path) -> Section:
    summary = _json(base.parent / SUMMARY_FILE)
    if not summary:
        return Section("1. Pretrained model", [f"Loaded from {base} (not built by this run)."])
    rows = [["parameters", "steps", "held-out loss untrained", "held-out loss", "seconds"],
            [summary["parameters"], summary["steps"], summary["heldout_loss_untrained"], summary["heldout_loss"],
             summary["seconds"]]]
    return Section("1. Pretrained model", [f"Embedded default: GPT-2 pretrained on {summary['train_tweets']} tweets "
                                           f"(loss in nats/token). Folder: {base}"],
                   rows, _figures(base.parent, [LOSS_FIGURE]))


def sft_section(sft: Path) -> Section:
    s = _json(sft / SUMMARY_FILE)
    counts = next((v for v in s.get("validation", []) if "train" in Path(v["file"]).name), {})
    rows = [["held-out loss base", "held-out loss SFT", "steps", "batch", "workers", "ZeRO", "seconds"],
            [s.get("heldout_loss_base"), s.get("heldout_loss_sft"), s.get("steps"), s.get("global_batch_size"),
             s.get("workers"), s.get("zero_stage"), s.get("wall_time_s")]]
    text = (f"Demonstrations: {counts.get('rows_in', 'n/a')} rows in, {counts.get('accepted', 'n/a')} accepted, "
            f"{counts.get('rejected', 'n/a')} rejected. Loss on response tokens only.")
    return Section("2. Supervised fine-tuning", [text], rows, _figures(sft, [LOSS_FIGURE]))


def feedback_section(feedback: Path) -> Section:
    s = _json(feedback / SUMMARY_FILE)
    flagged = ", ".join(s.get("flagged_annotators") or []) or "nobody"
    text = [f"{s.get('rows_in')} feedback rows in = {s.get('rows_accepted')} accepted + {s.get('rows_rejected')} "
            f"rejected, from {s.get('annotators')} annotators; flagged as bad faith: {flagged} "
            f"(policy: {s.get('annotator_policy')})."]
    tables = {"Accepted rows by source": _key_value_rows(["source", "rows"], s.get("rows_by_source", {})),
              "Krippendorff's alpha by form of feedback": _key_value_rows(["form", "alpha"], s.get("alpha", {})),
              "Training tables": _key_value_rows(["count of", "rows"], s.get("training_tables", {}))}
    if s.get("rlaif"):
        scalars = {k: v for k, v in s["rlaif"].items() if isinstance(v, (int, float, str))}
        tables["AI judge (RLAIF)"] = _key_value_rows(["measure", "value"], scalars)
    text.append(f"Full feedback report: {feedback / REPORT_FILE}")
    return Section("3a. Human feedback and annotator quality", text,
                   figures=_figures(feedback, [AGREEMENT_FIGURE, RATINGS_FIGURE, ELO_FIGURE]),
                   named_tables={caption: rows for caption, rows in tables.items() if len(rows) > 1})


def _key_value_rows(header: list[str], values: dict) -> list[list]:
    return [header, *([key, value] for key, value in values.items())]


def reward_section(reward: Path, reward_eval: dict) -> Section:
    rows = [["model", "panel", "held-out pairwise accuracy", "items"]]
    for run, result in reward_eval.items():
        if isinstance(result, dict):
            for panel, figures in result.get("heldout", {}).items():
                rows.append([run, panel, figures.get("accuracy"), figures.get("items", figures.get("n", ""))])
    text = ["Accuracy of the reward model on held-out pairs against each panel's majority (group:<name>: an "
            "annotator group's); 'with_flagged_annotators' is the same training with the flagged annotators kept, "
            "'trained_on:<group>' the same training on one group's feedback alone (reward_model.cross_group)."]
    return Section("3b. Reward model", text, rows if len(rows) > 1 else [],
                   _figures(reward, [LOSS_FIGURE, CALIBRATION_FIGURE]))


def ppo_section(ppo: Path) -> tuple[Section, Section]:
    s = _json(ppo / SUMMARY_FILE)
    records = read_metrics(ppo / METRICS_FILE) if (ppo / METRICS_FILE).exists() else []
    last = s.get("final_metrics", {})
    rows = [["steps", "wall s", "reward (raw)", "KL", "response length", "entropy", "clip fraction"],
            [s.get("steps"), s.get("wall_s"), last.get("reward_raw"), last.get("kl"), last.get("response_length"),
             last.get("entropy"), last.get("clip_fraction")]]
    stages = sorted({k for r in records for k in r if k.startswith("time/")})
    timing = [["stage", "mean s per step", "share of step"]]
    total = sum(r.get("step_s", 0.0) for r in records) or 1.0
    for key in stages:
        values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        timing.append([key[5:], sum(values) / max(len(values), 1), f"{100 * sum(values) / total:.0f}%"])
    said = ["Last step's metrics; curves over all steps below."]
    if s.get("reference"):
        said.append(f"Reference log-probs: {s['reference']}.")
    ppo_sec = Section("4. PPO", said, rows,
                      _figures(ppo, [CURVES_FIGURE]))
    timing_sec = Section("Stage timing of a PPO step",
                         ["The chart stacks, for each step, the stages that run one after another (weight sync, "
                          "its probe check, generation, experience, training) and the rest of the step; the table "
                          "also lists the work that runs in parallel inside experience and training, so its "
                          "shares add up to more than 100%."],
                         timing if len(timing) > 1 else [], _figures(ppo, [STAGE_TIMES_FIGURE]))
    return ppo_sec, timing_sec


def monitor_section(ppo: Path) -> list[Section]:
    """The over-optimisation monitor's checks, alarms and the policy it kept (none when it did not run)."""
    if not (ppo / MONITOR_FILE).exists():
        return []
    history, fired, _, _ = read_history(ppo / MONITOR_FILE)
    kept = _json(ppo / SUMMARY_FILE).get("policy_step")
    rows = [["step", "proxy reward", "judge win-rate vs SFT", "95% interval", "KL", "length vs SFT", "degenerate",
             "RM members' disagreement"]]
    rows += [[c.step, c.proxy_reward, c.judge_win_rate, f"[{_fmt(c.judge_ci_low)}, {_fmt(c.judge_ci_high)}]", c.kl,
              c.length_ratio, c.degenerate_share, c.reward_disagreement] for c in history]
    said = [f"The policy handed to evaluation is the one after {kept} updates: the held-out judge preferred it "
            "on the probe prompts (disjoint from the evaluation's)."]
    said += [f"Alarm {a.rule} at step {a.step}: {a.evidence}." for a in fired] or ["No alarm was raised."]
    return [Section("4b. Over-optimisation monitor", said, rows, _figures(ppo, [OVEROPTIMISATION_FIGURE]))]


def evaluation_section(evaluation: dict) -> Section:
    violations = evaluation.get("constraint_violation_rate", {})
    rows = [["measure", "SFT", "PPO"],
            ["degenerate share", evaluation.get("degenerate_share_reference"),
             evaluation.get("degenerate_share_policy")],
            ["mean words per response", evaluation.get("mean_words", {}).get("sft"),
             evaluation.get("mean_words", {}).get("ppo")],
            ["fluency (log-likelihood under SFT, nats/token)", evaluation.get("fluency_reference"),
             evaluation.get("fluency_policy")],
            ["constraint-violation rate", violations.get("sft"), violations.get("ppo")]]
    name, value = judge_figure(evaluation)
    prompts = f"on {evaluation.get('num_prompts')} held-out prompts"
    if evaluation.get("measure") == IMPLICIT_REWARD_ACCURACY:
        text = [f"{name}: {value}, on {evaluation.get('num_pairs')} held-out pairs; the guards compare both models' "
                f"answers {prompts}.", f"The figure is {evaluation.get('measure_note')}."]
    else:
        text = [f"{name}: {value}, {prompts}."]
    if "win_rate_training_annotators" in evaluation:
        training = evaluation["win_rate_training_annotators"]
        text.append(f"By the training annotators 1-5: {_fmt(training.get('win_rate'))}.")
    text += [f"KL(PPO || SFT) per response: mean {_fmt(evaluation.get('mean_kl'))}, median "
             f"{_fmt(evaluation.get('kl_median'))} nats (budget {evaluation.get('kl_budget')}); length ratio "
             f"{_fmt(evaluation.get('length_ratio'))}.",
             f"Verdict: {evaluation.get('verdict')}."]
    if evaluation.get("measure", WIN_RATE) == WIN_RATE:
        text[-1] += " A win-rate above 0.9 is a warning sign of reward hacking."
    return Section("Evaluation: does the held-out judge prefer PPO, and did anything get gamed?", text, rows)


def samples_section(eval_dir: Path) -> Section:
    path = eval_dir / SAMPLES_FILE
    if not path.exists():
        return Section("Sample responses", ["No samples were written."])
    samples = [json.loads(line) for line in path.read_text().splitlines()[:SAMPLES_IN_REPORT]]
    columns = [c for c in ("base", "sft", "ppo") if c in samples[0]]
    rows = [["prompt", *columns]] + [[s["prompt"], *(s[c] for c in columns)] for s in samples]
    return Section("Sample responses, same prompts", ["Sampled from each model for the same held-out prompts."],
                   rows)


def write_run_report(cfg: AlignrayConfig, phases: dict[str, Path], seconds: dict[str, float], out_dir: Path,
                     job: str = "") -> dict:
    """``job``: which job of a sweep this is and its overrides, shown under the title."""
    evaluation = _json(phases["eval"] / EVAL_FILE)
    reward_eval = _json(phases["reward"] / EVAL_FILE)
    ppo_sec, timing_sec = ppo_section(phases["ppo"])
    phase_times = Section("Time per phase", ["A phase whose output existed for the same settings was reused "
                                             "and shows about 0 s; its own summary.json holds the time it took."],
                          [["phase", "seconds"], *[[k, v] for k, v in seconds.items()]])
    sections = [headline(evaluation, reward_eval, seconds), pretrained_section(phases["base"]),
                sft_section(phases["sft"]), feedback_section(phases["feedback"]),
                reward_section(phases["reward"], reward_eval), ppo_sec, *monitor_section(phases["ppo"]),
                evaluation_section(evaluation),
                samples_section(phases["eval"]), timing_sec, phase_times]
    if job:
        sections[0].paragraphs.insert(0, f"This run is {job}.")
    return write_report(out_dir, f"alignray run '{cfg.name}'", sections)
