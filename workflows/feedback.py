"""Phase 3a: feedback, generated (simulated annotators, an AI judge) or ingested (files),
validated, aggregated into reward-model training tables and reported, as a Hydra app.

    python -m alignray.workflows.feedback                                   # simulated, embedded default
    python -m alignray.workflows.feedback feedback=rlaif                    # half the comparisons by the AI judge
    python -m alignray.workflows.feedback feedback.sft_model_path=<SFT model folder>
    python -m alignray.workflows.feedback feedback=files feedback.path=/data/feedback/   # file or folder

``source=simulated``: ``num_prompts`` training prompts each get ``responses_per_prompt``
responses sampled from the policy model; annotators reading through VADER raters
1..``train_annotators`` (plus an injected bad-faith share) give every form of feedback. With
``ai_share > 0`` that share of the pairwise items is judged by the AI judge instead
(source ``ai``, annotator ``ai-judge``; ``feedback.ai_judge``: a local model on the actor pool
of actors/ai_labeller.py, or an OpenAI-compatible endpoint, alignray/judges/), after it is
calibrated on a human gold set (alignray/feedback/ai_judge.py). Pairs of
responses to held-out prompts are judged by the training raters and by the held-out raters
6-10; the AI judge, when it runs, judges them too, and its agreement with the held-out
raters is reported. ``source=files``: every file is validated row by row; bad rows are
named in the log and counted, never dropped silently (rows in = accepted + rejected).

Output, ``<workdir>/feedback-<hash>/``: ``feedback.parquet`` (FEEDBACK_SCHEMA, the accepted
rows), ``pairs.parquet`` and ``pointwise.parquet`` (the training tables), and with simulated
feedback ``heldout_feedback.parquet`` (raw pairwise rows on held-out prompts) and
``heldout_pairs.parquet`` (one row per held-out pair: prompt, response_a, response_b,
heldout_preference and train_preference = share of each panel's votes for response_a, and
the vote counts); ``report.md`` with PNG figures; ``summary.json``.

The domain logic is in alignray/feedback/ (sampling, simulated, heldout, ai_share, schema,
quality, aggregate, report); this app wires it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import pandas as pd
import pyarrow as pa
from omegaconf import DictConfig

from alignray.config import AlignrayConfig
from alignray.actors import runtime
from alignray.actors.ai_labeller import local_pair_asker
from alignray.core.artifacts import (FEEDBACK, FEEDBACK_FILE, HELDOUT_FEEDBACK_FILE, HELDOUT_PAIRS_FILE, PAIRS_FILE, POINTWISE_FILE,
                                PROMPTS_FILE)
from alignray.feedback.aggregate import PAIRS_SCHEMA, POINTWISE_SCHEMA, build_training_tables
from alignray.feedback.ai_judge import AIJudgeRun, judged_share
from alignray.feedback.heldout import HELDOUT_PAIRS_SCHEMA, heldout_pairs
from alignray.feedback.quality import annotator_quality, annotator_weights
from alignray.feedback.report import human_cost, write_feedback_report
from alignray.feedback.sampling import load_policy, prompt_conversations, sample_policy_responses, take_prompts
from alignray.feedback.schema import AI_JUDGE_ID, read_feedback_files, validate_feedback, write_feedback
from alignray.feedback.simulated import (HELD_OUT_JUDGE_RATERS, TRAINING_RATERS, annotator_id, heldout_feedback,
                                         training_feedback)
from alignray.core.tracking import log_summary, tracking_settings
from alignray.judges.build import (check_judge, describe_judge, endpoint_judge, local_identity, local_rating_asker,
                                   open_cache)
from alignray.judges.forms import endpoint_asker
from alignray.judges.rubric import load_rubric
from alignray.data.validation import ValidationReport, write_parquet
from alignray.workflows.phases import run_phase
from alignray.workflows.common import (CONFIG_PATH, embedded_data_dir, is_complete, mark_complete, phase_dir, run_app,
                                       start_app)

log = logging.getLogger("alignray.feedback")

MAX_ERRORS_LOGGED = 50


def prompt_files(cfg: AlignrayConfig) -> dict[str, Path | None]:
    """Training and held-out prompt files; with ``data.source=files`` there is no held-out file."""
    if cfg.data.source == "embedded":
        data_dir = embedded_data_dir(cfg)
        return {split: data_dir / PROMPTS_FILE.format(split=split) for split in ("train", "heldout")}
    if not cfg.data.prompts_path:
        raise ValueError("data.source=files needs data.prompts_path")
    return {"train": Path(cfg.data.prompts_path), "heldout": None}


def log_validation(report: ValidationReport) -> None:
    """Every count, and each bad row by file, row and field (the first MAX_ERRORS_LOGGED)."""
    log.info(report.summary())
    for error in report.errors[:MAX_ERRORS_LOGGED]:
        log.warning("rejected: %s", error)
    if len(report.errors) > MAX_ERRORS_LOGGED:
        log.warning("... and %d more errors in %s", len(report.errors) - MAX_ERRORS_LOGGED, report.file)


# ----------------------------------------------------------------------------- simulated and AI feedback
def simulated_feedback(cfg: AlignrayConfig, sft_model_path: str, out: Path) -> tuple[pa.Table, dict, dict | None]:
    """Training feedback (with the AI judge's share) and the held-out files; returns the
    feedback, the counts of its generation and the AI judge's statistics (None: no judge)."""
    fb = cfg.feedback
    files = prompt_files(cfg)
    max_new_tokens = fb.max_response_tokens or cfg.data.max_response_tokens
    model, tokenizer = load_policy(sft_model_path)
    conversations = {prompt: turns for path in files.values() if path
                     for prompt, turns in prompt_conversations(path, cfg.data.max_text_chars).items()}

    def respond(prompts, label, seed):
        return sample_policy_responses(model, tokenizer, prompts, fb.responses_per_prompt, cfg.data.max_prompt_tokens,
                                       max_new_tokens, fb.generation_batch_size, fb.temperature, seed, label,
                                       conversations)

    prompts = take_prompts(files["train"], fb.num_prompts, cfg.seed, cfg.data.max_text_chars)
    feedback = training_feedback(prompts, respond(prompts, "training", cfg.seed),
                                 train_annotators=fb.train_annotators, bad_faith_share=fb.bad_faith_share,
                                 annotators_per_item=fb.annotators_per_item, pairs_per_prompt=fb.pairs_per_prompt,
                                 seed=cfg.seed)
    summary = {"prompts": len(prompts), "responses_per_prompt": fb.responses_per_prompt}
    pairs = None
    if files["heldout"] is not None and fb.heldout_prompts > 0:
        heldout_prompts = take_prompts(files["heldout"], fb.heldout_prompts, cfg.seed, cfg.data.max_text_chars)
        heldout = heldout_feedback(heldout_prompts, respond(heldout_prompts, "held-out", cfg.seed + 1),
                                   train_annotators=fb.train_annotators, seed=cfg.seed + 1)
        write_feedback(heldout, out / HELDOUT_FEEDBACK_FILE)
        pairs = heldout_pairs(heldout, [annotator_id(r) for r in TRAINING_RATERS[:fb.train_annotators]],
                              [annotator_id(r) for r in HELD_OUT_JUDGE_RATERS])
        write_parquet(pa.Table.from_pandas(pairs, schema=HELDOUT_PAIRS_SCHEMA, preserve_index=False),
                      out / HELDOUT_PAIRS_FILE, HELDOUT_PAIRS_SCHEMA)
        summary["heldout"] = {"prompts": len(heldout_prompts), "pairs": len(pairs), "rows": heldout.num_rows}
    if fb.ai_share > 0:
        feedback, rlaif = mix_in_ai_judge(cfg, feedback, sft_model_path, pairs)
        return feedback, summary, rlaif
    return feedback, summary, None


def mix_in_ai_judge(cfg: AlignrayConfig, feedback: pa.Table, policy_model: str,
                    pairs: pd.DataFrame | None) -> tuple[pa.Table, dict]:
    """Replace ``ai_share`` of the pairwise items by the AI judge's verdicts (the policy model
    judges when ``feedback.ai_judge`` names no model); the held-out pairs are judged in the same
    pass, to measure the judge against the held-out raters."""
    fb, judge_cfg = cfg.feedback, cfg.feedback.ai_judge
    check_judge(judge_cfg, "feedback.ai_judge", policy_model)
    rubric, cache = load_rubric(judge_cfg.rubric), open_cache(judge_cfg, cfg.workdir)
    endpoint = endpoint_judge(judge_cfg) if judge_cfg.kind == "openai" else None
    try:
        if endpoint is not None:
            judge = AIJudgeRun(endpoint_asker(endpoint, rubric, "pairwise"), endpoint.identity(), rubric, cache,
                               describe_judge(judge_cfg), endpoint_asker(endpoint, rubric, "rating"))
        else:
            judge = local_judge(cfg, policy_model, rubric, cache)
        prices = (judge_cfg.openai.price_per_million_input_tokens, judge_cfg.openai.price_per_million_output_tokens)
        feedback, stats = judged_share(feedback, judge_cfg, judge, fb.ai_share, cfg.seed, pairs,
                                       prices if endpoint is not None else (None, None))
    finally:
        cache.close()
        if endpoint is not None:
            endpoint.close()
    counts = stats["counts"]
    log.info("AI judge %s: %d pairs in = %d judged + %d unparsed + %d failed %s; %d from the cache; %s s",
             judge.name, counts["in"], counts["judged"], counts["unparsed"], counts["failed"],
             counts["failed_by_reason"], counts["answers_from_cache"], stats["wall_time_s"])
    if "agreement_with_heldout_raters" in stats:
        log.info("AI judge agrees with the held-out raters on %.3f of %s held-out pairs (training raters: %.3f)",
                 stats["agreement_with_heldout_raters"], stats["items"],
                 stats["training_raters_agreement_with_heldout_raters"])
    return feedback, stats


def local_judge(cfg: AlignrayConfig, policy_model: str, rubric, cache) -> AIJudgeRun:
    """A local judge: pairs on the actor pool; ratings, when its forms ask for them, in this process."""
    judge_cfg = cfg.feedback.ai_judge
    model = judge_cfg.model_path or policy_model
    ask = local_pair_asker(model, actors=judge_cfg.actors, batch_size=judge_cfg.batch_size,
                           max_reply_tokens=judge_cfg.max_reply_tokens, use_gpu=bool(cfg.cluster.use_gpu),
                           rubric=judge_cfg.rubric, placement_timeout_s=float(cfg.cluster.placement_timeout_s))
    rates = {"rating", "thumbs"} & set(judge_cfg.forms)
    ask_rating = local_rating_asker(dataclasses.replace(judge_cfg, model_path=model), rubric) if rates else None
    return AIJudgeRun(ask, local_identity(judge_cfg, model), rubric, cache, model, ask_rating)


def training_weights(cfg: AlignrayConfig, quality, rlaif: dict | None) -> dict[str, float]:
    """Annotator weights (alignray.feedback.quality.annotator_weights); the AI judge's measured
    agreement is its gold-set one, and a judge calibration weighted zero stays at zero."""
    calibration = (rlaif or {}).get("calibration") or {}
    measured = {AI_JUDGE_ID: calibration["agreement"]} if calibration.get("items") else None
    weights = annotator_weights(quality, cfg.feedback.annotator_policy, measured=measured)
    if calibration.get("weight") == 0.0 and AI_JUDGE_ID in weights:
        weights[AI_JUDGE_ID] = 0.0
    return weights


# ----------------------------------------------------------------------------- the phase
def gather_feedback(cfg: AlignrayConfig, sft_model_path: str, out: Path):
    """The accepted feedback rows, one validation report per input, the generation counts
    (simulated only) and the AI judge's statistics (None: no judge)."""
    if cfg.feedback.source == "simulated":
        generated, generation, rlaif = simulated_feedback(cfg, sft_model_path, out)
        feedback, report = validate_feedback(generated, "simulated feedback", strict=False)
        log_validation(report)
        return feedback, [report], generation, rlaif
    if cfg.feedback.source == "files":
        feedback, reports = read_feedback_files(cfg.feedback.path)
        for report in reports:
            log_validation(report)
        rlaif = None
        if cfg.feedback.ai_share > 0:
            feedback, rlaif = mix_in_ai_judge(cfg, feedback, sft_model_path, None)
            if human_cost(cfg.feedback.path).is_file():  # written by the collection server's compact
                rlaif["human_cost"] = json.loads(human_cost(cfg.feedback.path).read_text())
        return feedback, reports, None, rlaif
    raise ValueError(f"feedback.source must be simulated or files, not {cfg.feedback.source!r}")


def run_feedback(cfg: AlignrayConfig, sft_model_path: str) -> Path:
    """Generate or ingest feedback, validate, aggregate and report it; returns the phase
    folder (reused when complete)."""
    sft_model_path = str(sft_model_path)
    out = phase_dir(cfg, FEEDBACK, policy=sft_model_path)
    if is_complete(out):
        log.info("feedback output for these settings exists: %s", out)
        return out
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    # Only a local AI judge runs on Ray (its actor pool); people, simulated annotators and an
    # endpoint judge do not need it.
    local_judge = cfg.feedback.ai_share > 0 and cfg.feedback.ai_judge.kind == "local"
    with runtime.ray_session(cfg.cluster) if local_judge else nullcontext():
        feedback, reports, generation, rlaif = gather_feedback(cfg, sft_model_path, out)
    if feedback.num_rows == 0:
        raise ValueError(f"no feedback rows accepted: {[r.summary() for r in reports]}")

    quality = annotator_quality(feedback)
    weights = training_weights(cfg, quality, rlaif)
    tables = build_training_tables(feedback, weights)
    write_feedback(feedback, out / FEEDBACK_FILE)
    write_parquet(tables.pairs, out / PAIRS_FILE, PAIRS_SCHEMA)
    write_parquet(tables.pointwise, out / POINTWISE_FILE, POINTWISE_SCHEMA)
    report_path = write_feedback_report(out, feedback, quality, tables, ValidationReport.combined(reports),
                                        rlaif=rlaif, annotator_policy=cfg.feedback.annotator_policy)
    summary = {
        "source": cfg.feedback.source, "policy_model": sft_model_path,
        **({"generation": generation} if generation is not None else {}),
        "validation": [r.counts(MAX_ERRORS_LOGGED) for r in reports],
        "rows_in": sum(r.rows_in for r in reports), "rows_accepted": sum(r.accepted for r in reports),
        "rows_rejected": sum(r.rejected for r in reports),
        "rows_by_source": {source: int(n) for source, n
                           in pd.Series(feedback.column("source").to_pylist()).value_counts().items()},
        "annotators": len(quality.annotators), "flagged_annotators": quality.flagged,
        "verdicts": quality.annotators["verdict"].to_dict(), "alpha": quality.alpha,
        "annotator_policy": cfg.feedback.annotator_policy, "annotator_weights": weights,
        "training_tables": tables.counts, "rlaif": rlaif,
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    mark_complete(out, summary)
    log_summary(tracking_settings(cfg), out, out.name, summary)
    log.info("feedback: %d rows in = %d accepted + %d rejected; %d pairs, %d pointwise targets; flagged %s; "
             "alpha %s; report %s", summary["rows_in"], summary["rows_accepted"], summary["rows_rejected"],
             tables.counts["pairs"], tables.counts["pointwise"], quality.flagged or "nobody",
             ", ".join(f"{k} {v:.3f}" for k, v in quality.alpha.items()), report_path)
    return out


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> str:
    config = start_app(cfg, "feedback")
    return str(run_phase(config, "feedback"))


if __name__ == "__main__":
    run_app(main)
