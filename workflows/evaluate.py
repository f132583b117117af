"""Evaluation: does a held-out judge prefer the PPO policy to the SFT policy, and is the
win honest?

    python -m alignray.workflows.evaluate eval.policy_path=<ppo dir>/policy [ppo.sft_model_path=...]
    python -m alignray.workflows.evaluate ... data=files ... eval.judge.kind=pairs \
        eval.pairs_path=<held-out feedback parquet>

Output, ``<workdir>/eval-<hash>/`` (keyed as alignray.core.artifacts.EVALUATION declares: the
seed, the evaluation's own settings and sizes, its judge and the judge's settings, PPO's
sampling settings, the models judged): ``eval.json``, ``samples.jsonl``, ``summary.json``;
reused when complete.

Both policies answer the same held-out prompts (same sampling settings as PPO, same seed).
The judge (``eval.judge``, alignray.evaluation.eval_judge) gives the figure: the win-rate of PPO's
answers over SFT's by the held-out annotators 6-10 (embedded default), a reward endpoint or a
gold reward model, or, for ``pairs``, the implicit-reward accuracy on held-out preference
pairs (an accuracy, not a win-rate). Reported next to it with its bootstrap interval: KL to
the SFT (reference) model per response, constraint-violation rates before and after, and
the guards of ``alignray.evaluation.compare``: degenerate share, mean length against SFT's, fluency
(mean log-likelihood per token under the SFT model). A win-rate above 0.9 is a warning, not
success.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from alignray.config import AlignrayConfig
from alignray.core.artifacts import EVAL_FILE, EVALUATION, POLICY_DIR, PROMPTS_COPY_DIR, SAMPLES_FILE, SUMMARY_FILE
from alignray.data.prompts import fit_prompt, prepare_embedded_data, read_prompts
from alignray.evaluation.compare import WIN_RATE, GuardReport, bootstrap_ci
from alignray.feedback.simulated import TRAINING_RATERS, judge_scores
from alignray.models.generation import disable_dropout
from alignray.evaluation.eval_judge import PAIRS, describe, metric_of, resolve_judge
from alignray.evaluation.implicit_reward import implicit_reward_accuracy, read_preference_pairs
from alignray.models.modeling import load_causal_lm, load_tokenizer
from alignray.ppo import ConstraintPenalty
from alignray.core.tracking import log_summary, tracking_settings
from alignray.scoring import build_scorer, reward_scorer
from alignray.workflows.phases import run_phase
from alignray.workflows.common import (CONFIG_PATH, is_complete, mark_complete, phase_dir, run_app,
                                       start_app)
from alignray.evaluation.answers import answer, response_texts, kl_and_fluency, base_answers, mean_words

log = logging.getLogger("alignray.evaluate")
# "Done" for the embedded default (issue 6): the judge's preference must be clear, and the
# guards must pass.
MIN_CI_LOW = 0.55
PAIRS_NOTE = ("an accuracy, not a win-rate: the share of held-out preference pairs where log pi(chosen) - "
              "log pi_sft(chosen) > log pi(rejected) - log pi_sft(rejected), ties counting one half")


def evaluate_policies(cfg: AlignrayConfig, sft_path: str, ppo_path: str, reference_prompts_path: str | None,
                      out_dir: str | Path, base_path: str | None = None) -> dict:
    """Judge PPO against SFT on held-out prompts with the judge ``eval.judge`` names
    (alignray.evaluation.eval_judge); writes ``eval.json`` and ``samples.jsonl`` (responses side by side) in
    ``out_dir`` and returns what eval.json holds. ``reference_prompts_path`` None means the
    embedded default's held-out prompts. With ``base_path``, the pretrained model's answers
    join the side-by-side samples. PPO's reward (``ppo.reward`` with the policy's reward model)
    is refused as the judge."""
    settings, sampling = cfg.eval, cfg.ppo.rollout
    reward = reward_scorer(cfg.ppo.reward, trained_on_reward_model(cfg, ppo_path))
    kind = resolve_judge(settings, cfg.data.source, reward)  # before any model loads: a wrong choice fails at once
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if reference_prompts_path is None:
        reference_prompts_path = prepare_embedded_data(cfg.data, out / PROMPTS_COPY_DIR)["prompts_heldout"]
    table, _ = read_prompts(reference_prompts_path, cfg.data.max_text_chars)
    rows = table.to_pylist()[: settings.num_prompts]
    prompts = [row["prompt"] for row in rows]

    tokenizer = load_tokenizer(sft_path)
    formatted = [fit_prompt(tokenizer, r["prompt"], r.get("system"), r.get("conversation"), cfg.data.max_prompt_tokens)[0]
                 for r in rows]
    sft_model = disable_dropout(load_causal_lm(sft_path, torch.device("cpu"))).eval()
    ppo_model = disable_dropout(load_causal_lm(ppo_path, torch.device("cpu"))).eval()
    max_prompt_tokens = cfg.data.max_prompt_tokens
    sft_chunks = answer(sft_model, tokenizer, formatted, sampling, max_prompt_tokens, cfg.seed)
    ppo_chunks = answer(ppo_model, tokenizer, formatted, sampling, max_prompt_tokens, cfg.seed)

    sft_texts, ppo_texts = response_texts(tokenizer, sft_chunks), response_texts(tokenizer, ppo_chunks)
    kl_per_response, fluency_ppo, fluency_sft = kl_and_fluency(sft_model, sft_chunks, ppo_chunks, sampling.temperature)
    verdict_of = judge(kind, cfg, prompts, sft_texts, ppo_texts, (sft_model, ppo_model, tokenizer))
    report = GuardReport.with_figure(verdict_of.figure, metric_of(kind), ppo_texts, sft_texts,
                                     kl_per_response.mean().item(), fluency_ppo, fluency_sft)
    verdict = report.verdict(kl_budget=settings.kl_budget)
    constraints = ConstraintPenalty.from_rule_set(cfg.ppo.reward.constraints)
    violation_rate = {name: (constraints.penalties(t)[0] > 0).float().mean().item()
                      for name, t in (("sft", sft_texts), ("ppo", ppo_texts))}
    result = {
        "sft_model": str(sft_path), "ppo_policy": str(ppo_path), "prompts": str(reference_prompts_path),
        "num_prompts": len(prompts), "judge": kind, "judge_description": describe(kind, settings),
        "measure": report.metric, report.metric: report.figure, "ci_low": report.ci_low, "ci_high": report.ci_high,
        **{k: v for k, v in vars(report).items() if k not in ("figure", "metric", "ci_low", "ci_high")},
        **verdict_of.extra,
        "kl_median": kl_per_response.median().item(), "kl_budget": settings.kl_budget,
        "constraint_violation_rate": violation_rate, "constraints": cfg.ppo.reward.constraints,
        "mean_words": {"sft": mean_words(sft_texts), "ppo": mean_words(ppo_texts)},
        "verdict": verdict,
        "suspicious_win_rate": report.metric == WIN_RATE and report.figure > 0.9,
        "preferred_with_guards": (report.ci_low > MIN_CI_LOW and verdict.startswith("PASS")),
    }
    (out / EVAL_FILE).write_text(json.dumps(result, indent=2))
    log_summary(tracking_settings(cfg), out, out.name, result)
    write_samples(out / SAMPLES_FILE, cfg, prompts, formatted, tokenizer, base_path,
                  {"sft": sft_texts, "ppo": ppo_texts, "judge_sft": verdict_of.sft_scores,
                   "judge_ppo": verdict_of.ppo_scores, "kl": kl_per_response.tolist()})
    log.info("evaluation: %s", verdict)
    return result


@dataclass
class Judged:
    figure: tuple[float, float, float]  # (value, low, high)
    sft_scores: list[float] | None = None  # per answer, for the judges that score answers
    ppo_scores: list[float] | None = None
    extra: dict = field(default_factory=dict)  # what eval.json adds for this judge


def judge(kind: str, cfg: AlignrayConfig, prompts: list[str], sft_texts: list[str], ppo_texts: list[str], models) -> Judged:
    """The judge's figure: PPO's win-rate over SFT by a judge of answers, or for ``pairs``
    the implicit-reward accuracy of PPO (reference: SFT) on the held-out pairs."""
    if kind == PAIRS:
        sft_model, ppo_model, tokenizer = models
        pairs = read_preference_pairs(cfg.eval.pairs_path, cfg.eval.max_pairs)
        figure = implicit_reward_accuracy(ppo_model, sft_model, tokenizer, pairs, cfg.data.max_prompt_tokens,
                                          cfg.data.max_response_tokens, seed=cfg.seed)
        return Judged(figure, extra={"num_pairs": len(pairs.prompts), "measure_note": PAIRS_NOTE})
    scorer = build_scorer(cfg.eval.judge, kind)
    sft_scores, ppo_scores = scorer(prompts, sft_texts), scorer(prompts, ppo_texts)
    extra = {}
    if kind == "heldout_annotators":
        train_rate = bootstrap_ci(judge_scores(ppo_texts, TRAINING_RATERS), judge_scores(sft_texts, TRAINING_RATERS),
                                  seed=cfg.seed)
        extra["win_rate_training_annotators"] = dict(zip(("win_rate", "ci_low", "ci_high"), train_rate))
    return Judged(bootstrap_ci(ppo_scores, sft_scores, seed=cfg.seed), [float(x) for x in sft_scores],
                  [float(x) for x in ppo_scores], extra)


def write_samples(path: Path, cfg: AlignrayConfig, prompts: list[str], formatted: list[str], tokenizer, base_path: str | None,
                  columns: dict[str, list | None]) -> None:
    """The first ``eval.samples_to_write`` prompts with each model's answer (the base
    model's too, with ``base_path``), the judge's scores where it gives any, and the KL."""
    shown = min(cfg.eval.samples_to_write, len(prompts))
    base_texts = base_answers(base_path, tokenizer, formatted[:shown], cfg.ppo.rollout, cfg.data.max_prompt_tokens,
                              cfg.seed)
    columns = {"base": base_texts or None, **columns}
    with path.open("w") as f:
        for i in range(shown):
            row = {"prompt": prompts[i], **{name: values[i] for name, values in columns.items() if values}}
            f.write(json.dumps(row) + "\n")


def trained_on_reward_model(cfg: AlignrayConfig, policy_path: str) -> str | None:
    """The reward model the policy was trained against: ``ppo.reward_model_path``, else the one
    its PPO run recorded (``<ppo folder>/summary.json``, beside ``policy/``), else None."""
    if cfg.ppo.reward_model_path:
        return str(cfg.ppo.reward_model_path)
    summary = Path(policy_path).parent / SUMMARY_FILE
    if Path(policy_path).name != POLICY_DIR or not summary.exists():
        return None
    return json.loads(summary.read_text()).get("reward_model")


def run_evaluation(cfg: AlignrayConfig, sft_path: str, policy_path: str, base_path: str | None = None) -> Path:
    """Evaluate (or reuse) the policy against the SFT model on ``eval.prompts_path``
    (None: the embedded held-out prompts); returns the folder holding eval.json."""
    out = phase_dir(cfg, EVALUATION, sft_model=sft_path, policy=policy_path, base_model=base_path)
    if is_complete(out):
        log.info("evaluation for these settings exists: %s", out)
        return out
    result = evaluate_policies(cfg, sft_path, policy_path, cfg.eval.prompts_path, out, base_path=base_path)
    mark_complete(out, {key: result[key] for key in ("sft_model", "ppo_policy", "num_prompts", "judge", "measure",
                                                     result["measure"], "ci_low", "ci_high", "verdict")})
    return out


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> dict:
    config = start_app(cfg, "evaluate")
    out = run_phase(config, "eval")
    result = json.loads((out / EVAL_FILE).read_text())
    log.info("evaluation:\n%s", json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run_app(main)
