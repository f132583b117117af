"""Phase 3a: feedback, generated (simulated annotators, an AI judge) or ingested (files),
validated, aggregated into reward-model training tables and reported, as a Hydra app.

    python -m workflows.feedback                                   # simulated, embedded default
    python -m workflows.feedback feedback=rlaif                    # half the comparisons by the AI judge
    python -m workflows.feedback feedback.policy_model_path=<SFT model folder>
    python -m workflows.feedback feedback=files feedback.path=/data/feedback/   # file or folder

``source=simulated``: ``num_prompts`` training prompts each get ``responses_per_prompt``
responses sampled from the policy model; annotators reading through VADER raters
1..``train_annotators`` (plus an injected bad-faith share) give every form of feedback. With
``ai_share > 0`` that share of the pairwise items is judged by the AI judge instead
(source ``ai``, annotator ``ai-judge``; actors/judge.py, alignray/rlaif.py). Pairs of
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
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from omegaconf import DictConfig

from actors import runtime
from actors.judge import judge_with_actor_pool
from alignray.data import format_prompt, prepare_embedded_data, read_prompts
from alignray.feedback import (annotator_quality, annotator_weights, build_training_tables, feedback_table,
                               read_feedback, validate_feedback, write_feedback, write_feedback_report)
from alignray.feedback.aggregate import PAIRS_SCHEMA, POINTWISE_SCHEMA
from alignray.feedback.files import (FEEDBACK_FILE, HELDOUT_FEEDBACK_FILE, HELDOUT_PAIRS_FILE, PAIRS_FILE,
                                     POINTWISE_FILE)
from alignray.feedback.simulated import (HELD_OUT_JUDGE_RATERS, TRAINING_RATERS, make_annotator_pool,
                                         simulate_feedback)
from alignray.generation import decode_responses, disable_dropout, sample_responses
from alignray.modeling import load_causal_lm, load_tokenizer, resolve_base_model
from alignray.reward.evaluation import accuracy_against_votes, panel_votes
from alignray.rlaif import AI_JUDGE_ID, ai_feedback_rows, model_position_limit
from alignray.validation import ValidationReport, write_parquet
from workflows.common import CONFIG_PATH, is_complete, mark_complete, phase_dir, start_app

log = logging.getLogger("alignray.feedback")

MAX_ERRORS_LOGGED = 50

HELDOUT_PAIRS_SCHEMA = pa.schema([
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("response_a", pa.string(), nullable=False),
    pa.field("response_b", pa.string(), nullable=False),
    pa.field("heldout_preference", pa.float64(), nullable=False),  # share of raters 6-10 preferring a
    pa.field("train_preference", pa.float64(), nullable=False),  # share of the training raters preferring a
    pa.field("heldout_votes", pa.int64(), nullable=False),
    pa.field("train_votes", pa.int64(), nullable=False),
])


# ----------------------------------------------------------------------------- prompts and responses
def prompt_files(cfg: DictConfig) -> dict[str, Path | None]:
    """Training and held-out prompt files; with ``data.source=files`` there is no held-out file."""
    if cfg.data.source == "embedded":
        data_dir = phase_dir(cfg, "data", cfg.data)
        if not is_complete(data_dir):
            paths = prepare_embedded_data(cfg.data, data_dir)
            mark_complete(data_dir, {name: str(path) for name, path in paths.items()})
        return {"train": data_dir / "prompts_train.parquet", "heldout": data_dir / "prompts_heldout.parquet"}
    if not cfg.data.prompts_path:
        raise ValueError("data.source=files needs data.prompts_path")
    return {"train": Path(cfg.data.prompts_path), "heldout": None}


def take_prompts(path: Path, count: int, seed: int) -> list[str]:
    """``count`` distinct prompts drawn at random (seeded) from a validated prompts file."""
    table, _ = read_prompts(path)
    distinct = sorted(set(table.column("prompt").to_pylist()))
    order = np.random.default_rng(seed).permutation(len(distinct))[:count]
    return [distinct[i] for i in order]


def load_policy(model_path: str):
    tokenizer = load_tokenizer(model_path)
    # Keep a long prompt's end: with a chat template the generation prompt is there.
    tokenizer.truncation_side = "left"
    return disable_dropout(load_causal_lm(model_path)).eval(), tokenizer


def sample_policy_responses(model, tokenizer, prompts: list[str], per_prompt: int, max_prompt_tokens: int,
                            max_new_tokens: int, batch_size: int, temperature: float, seed: int,
                            label: str) -> list[list[str]]:
    """``per_prompt`` sampled responses to each prompt (batched, KV cache, seeded), with progress."""
    limit = model_position_limit(model)
    if limit is not None and max_prompt_tokens + max_new_tokens > limit:
        raise ValueError(f"data.max_prompt_tokens {max_prompt_tokens} + {max_new_tokens} response tokens exceed "
                         f"the policy model's {limit} positions")
    texts = [format_prompt(tokenizer, prompt) for prompt in prompts for _ in range(per_prompt)]
    generator = torch.Generator(device=model.device).manual_seed(seed)
    responses, started = [], time.monotonic()
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_prompt_tokens, add_special_tokens=False).to(model.device)
        sampled = sample_responses(model, encoded.input_ids, encoded.attention_mask, max_new_tokens=max_new_tokens,
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                   temperature=temperature, generator=generator)
        responses += decode_responses(tokenizer, sampled.response_ids, sampled.response_mask)
        print(f"sampling {label} responses: {len(responses)}/{len(texts)} ({time.monotonic() - started:.0f} s)",
              flush=True)
    return [responses[i:i + per_prompt] for i in range(0, len(responses), per_prompt)]


# ----------------------------------------------------------------------------- validation counts
def validation_counts(report: ValidationReport) -> dict:
    return {"file": report.file, "rows_in": report.rows_in, "accepted": report.accepted,
            "rejected": report.rejected, "reasons": report.reasons,
            "errors": [str(error) for error in report.errors[:MAX_ERRORS_LOGGED]]}


def log_validation(report: ValidationReport) -> None:
    """Every count, and each bad row by file, row and field (the first MAX_ERRORS_LOGGED)."""
    print(report.summary(), flush=True)
    for error in report.errors[:MAX_ERRORS_LOGGED]:
        log.warning("rejected: %s", error)
    if len(report.errors) > MAX_ERRORS_LOGGED:
        log.warning("... and %d more errors in %s", len(report.errors) - MAX_ERRORS_LOGGED, report.file)


def read_feedback_files(path: str) -> tuple[pa.Table, list[ValidationReport]]:
    """The accepted rows of a feedback file, or of every ``*.parquet`` in a folder."""
    if not path:
        raise ValueError("feedback.source=files needs feedback.path (a parquet file or a folder of them)")
    root = Path(path)
    files = sorted(root.glob("*.parquet")) if root.is_dir() else [root]
    if not files:
        raise FileNotFoundError(f"no parquet files in {root}")
    tables, reports = [], []
    for file in files:
        table, report = read_feedback(file, strict=False)
        log_validation(report)
        tables.append(table)
        reports.append(report)
    return pa.concat_tables(tables), reports


def combined_report(reports: list[ValidationReport]) -> ValidationReport:
    """One report for the feedback report's validation section."""
    if len(reports) == 1:
        return reports[0]
    reasons: dict[str, int] = {}
    for report in reports:
        for reason, count in report.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
    return ValidationReport(f"{len(reports)} files", sum(r.rows_in for r in reports), sum(r.accepted for r in reports),
                            sum(r.rejected for r in reports), [e for r in reports for e in r.errors], reasons)


# ----------------------------------------------------------------------------- simulated and AI feedback
def simulated_training_feedback(cfg: DictConfig, prompts: list[str], responses: list[list[str]]) -> pa.Table:
    fb = cfg.feedback
    if not 1 <= fb.train_annotators <= len(TRAINING_RATERS):
        raise ValueError(f"feedback.train_annotators must be in 1..{len(TRAINING_RATERS)}: raters "
                         f"{HELD_OUT_JUDGE_RATERS} are the held-out judge")
    pool = make_annotator_pool(TRAINING_RATERS[:fb.train_annotators], bad_faith_share=fb.bad_faith_share,
                               seed=cfg.seed)
    return simulate_feedback(pool, prompts, responses, annotators_per_item=fb.annotators_per_item,
                             pairs_per_prompt=fb.pairs_per_prompt, seed=cfg.seed)


def simulated_heldout_feedback(cfg: DictConfig, prompts: list[str], responses: list[list[str]]) -> pa.Table:
    """Every pair of each held-out prompt's responses, judged by every honest rater:
    the training raters (ids as in the training feedback) and the held-out ones."""
    raters = TRAINING_RATERS[:cfg.feedback.train_annotators] + HELD_OUT_JUDGE_RATERS
    return simulate_feedback(make_annotator_pool(raters), prompts, responses, forms=("pairwise",), seed=cfg.seed + 1)


def heldout_pairs(heldout: pa.Table, train_ids: list[str], heldout_ids: list[str]) -> pd.DataFrame:
    """One row per held-out pair (responses in sorted order, as in alignray.reward.evaluation)."""
    keys = ["prompt", "response_a", "response_b"]
    held, train = panel_votes(heldout, heldout_ids), panel_votes(heldout, train_ids)
    pairs = held.merge(train, on=keys, suffixes=("_heldout", "_train"))
    return pd.DataFrame({
        **{key: pairs[key] for key in keys},
        "heldout_preference": pairs["wins_a_heldout"] / pairs["votes_heldout"],
        "train_preference": pairs["wins_a_train"] / pairs["votes_train"],
        "heldout_votes": pairs["votes_heldout"].astype("int64"), "train_votes": pairs["votes_train"].astype("int64"),
    })


def pairwise_items(feedback: pa.Table) -> list[tuple[str, str, str]]:
    """Distinct (prompt, response_a, response_b) of the pairwise rows, in first-seen order."""
    rows = feedback.filter(pc.equal(feedback.column("kind"), "pairwise")).select(["prompt", "responses"])
    return list(dict.fromkeys((r["prompt"], *r["responses"]) for r in rows.to_pylist()))


def replace_share_by_ai(feedback: pa.Table, judged: dict[tuple[str, str, str], float], items: list) -> pa.Table:
    """Drop every annotator's rows on ``items`` and put the AI judge's one row per item in."""
    replaced = set(items)
    keep = [not (row["kind"] == "pairwise" and (row["prompt"], *row["responses"]) in replaced)
            for row in feedback.select(["kind", "prompt", "responses"]).to_pylist()]
    ai_rows = ai_feedback_rows([p for p, _, _ in items], [a for _, a, _ in items], [b for _, _, b in items],
                               [judged[item] for item in items])
    return pa.concat_tables([feedback.filter(pa.array(keep)), feedback_table(ai_rows)])


def judge_agreement(pairs: pd.DataFrame, judged: dict[tuple[str, str, str], float]) -> dict:
    """The AI judge against the held-out raters' majority, next to the training raters' own
    agreement with that majority (what a perfect stand-in for the training raters would reach)."""
    p_a = np.array([judged[item] for item in zip(pairs["prompt"], pairs["response_a"], pairs["response_b"])])
    held_wins, held_votes = pairs["heldout_preference"] * pairs["heldout_votes"], pairs["heldout_votes"]
    judge = accuracy_against_votes(p_a, 1 - p_a, held_wins, held_votes)
    train = accuracy_against_votes(pairs["train_preference"], 1 - pairs["train_preference"], held_wins, held_votes)
    return {"agreement_with_heldout_raters": judge["accuracy"], "items": judge["items"],
            "items_without_majority": judge["items_without_majority"],
            "training_raters_agreement_with_heldout_raters": train["accuracy"]}


def run_judge(cfg: DictConfig, judge_path: str, items: list[tuple[str, str, str]]) -> tuple[dict, dict]:
    """P(a better) per item from the actor pool, and statistics of the judging."""
    started = time.monotonic()
    rows = judge_with_actor_pool(
        [{"item": i, "prompt": p, "response_a": a, "response_b": b} for i, (p, a, b) in enumerate(items)],
        judge_path, actors=cfg.feedback.judge_actors, batch_size=cfg.feedback.judge_batch_size,
        max_reply_tokens=cfg.feedback.judge_max_reply_tokens, use_gpu=bool(cfg.cluster.use_gpu))
    judged = {item: float(row["preference_a"]) for item, row in zip(items, rows)}
    bias = np.array([float(row["position_bias"]) for row in rows])
    stats = {"judge_model": judge_path, "pairs_judged": len(items), "actors": cfg.feedback.judge_actors,
             "mean_position_bias_log_odds": float(bias.mean()) if len(bias) else None,
             "texts_clipped": int(sum(int(row["clipped_texts"]) for row in rows)),
             "wall_time_s": round(time.monotonic() - started, 1)}
    print(f"AI judge: {len(items)} pairs in {stats['wall_time_s']} s, mean position bias "
          f"{stats['mean_position_bias_log_odds']} log-odds toward the first reply", flush=True)
    return judged, stats


def simulated_feedback(cfg: DictConfig, policy_model_path: str, out: Path) -> tuple[pa.Table, dict, dict | None]:
    """Training feedback (with the AI judge's share) and the held-out files; returns the
    feedback, the counts of its generation and the AI judge's statistics (None: no judge)."""
    fb = cfg.feedback
    files = prompt_files(cfg)
    max_new_tokens = fb.max_response_tokens or cfg.data.max_response_tokens
    model, tokenizer = load_policy(policy_model_path)

    def respond(prompts, label, seed):
        return sample_policy_responses(model, tokenizer, prompts, fb.responses_per_prompt, cfg.data.max_prompt_tokens,
                                       max_new_tokens, fb.generation_batch_size, fb.temperature, seed, label)

    prompts = take_prompts(files["train"], fb.num_prompts, cfg.seed)
    feedback = simulated_training_feedback(cfg, prompts, respond(prompts, "training", cfg.seed))
    summary = {"prompts": len(prompts), "responses_per_prompt": fb.responses_per_prompt}
    pairs = None
    if files["heldout"] is not None and fb.heldout_prompts > 0:
        heldout_prompts = take_prompts(files["heldout"], fb.heldout_prompts, cfg.seed)
        heldout = simulated_heldout_feedback(cfg, heldout_prompts, respond(heldout_prompts, "held-out", cfg.seed + 1))
        write_feedback(heldout, out / HELDOUT_FEEDBACK_FILE)
        train_ids = [f"rater{r}" for r in TRAINING_RATERS[:fb.train_annotators]]
        pairs = heldout_pairs(heldout, train_ids, [f"rater{r}" for r in HELD_OUT_JUDGE_RATERS])
        write_parquet(pa.Table.from_pandas(pairs, schema=HELDOUT_PAIRS_SCHEMA, preserve_index=False),
                      out / HELDOUT_PAIRS_FILE, HELDOUT_PAIRS_SCHEMA)
        summary["heldout"] = {"prompts": len(heldout_prompts), "pairs": len(pairs), "rows": heldout.num_rows}
    if fb.ai_share > 0:
        feedback, rlaif = mix_in_ai_judge(cfg, feedback, fb.ai_judge_path or policy_model_path, pairs)
        return feedback, summary, rlaif
    return feedback, summary, None


def mix_in_ai_judge(cfg: DictConfig, feedback: pa.Table, judge_path: str,
                    pairs: pd.DataFrame | None) -> tuple[pa.Table, dict]:
    """Replace ``ai_share`` of the pairwise items by the AI judge's verdicts; the held-out
    pairs are judged in the same pass, to measure the judge against the held-out raters."""
    if not 0.0 < cfg.feedback.ai_share <= 1.0:
        raise ValueError(f"feedback.ai_share {cfg.feedback.ai_share} is not in [0, 1]")
    items = pairwise_items(feedback)
    chosen = np.random.default_rng(cfg.seed + 2).permutation(len(items))[:round(cfg.feedback.ai_share * len(items))]
    replaced = [items[i] for i in sorted(chosen)]
    heldout_items = [] if pairs is None else list(zip(pairs["prompt"], pairs["response_a"], pairs["response_b"]))
    judged, stats = run_judge(cfg, judge_path, list(dict.fromkeys(replaced + heldout_items)))
    stats |= {"ai_share": cfg.feedback.ai_share, "pairwise_items": len(items), "items_replaced": len(replaced)}
    if pairs is not None:
        stats |= judge_agreement(pairs, judged)
        print(f"AI judge agrees with the held-out raters on {stats['agreement_with_heldout_raters']:.3f} of "
              f"{stats['items']} held-out pairs (training raters: "
              f"{stats['training_raters_agreement_with_heldout_raters']:.3f})", flush=True)
    return replace_share_by_ai(feedback, judged, replaced), stats


# ----------------------------------------------------------------------------- the phase
def rlaif_report_section(stats: dict, verdict: str, policy: str) -> str:
    lines = ["## RLAIF judge", "",
             f"Judge model `{stats['judge_model']}`: {stats['items_replaced']} of {stats['pairwise_items']} pairwise "
             f"items judged by the AI (share {stats['ai_share']}); {stats['pairs_judged']} pairs judged in both orders "
             f"on {stats['actors']} Ray Data actor(s) in {stats['wall_time_s']} s; mean position bias "
             f"{stats['mean_position_bias_log_odds']:.3f} log-odds toward the first reply (cancelled by the swap); "
             f"{stats['texts_clipped']} texts clipped to fit the judge's positions."]
    if "agreement_with_heldout_raters" in stats:
        lines += ["", f"Agreement with the majority of the held-out raters on {stats['items']} held-out pairs: "
                      f"**{stats['agreement_with_heldout_raters']:.3f}** (the training raters' consensus: "
                      f"{stats['training_raters_agreement_with_heldout_raters']:.3f}; chance: 0.5)."]
    if verdict in ("adversarial", "uninformative"):
        # The quality check treats the judge like any annotator: a judge at chance is flagged.
        lines += ["", f"Annotator quality flags the AI judge as **{verdict}**; with annotator_policy={policy} "
                      f"its rows are weighted accordingly in the training tables."]
    return "\n".join(lines) + "\n"


def run_feedback(cfg: DictConfig, policy_model_path: str) -> Path:
    """Generate or ingest feedback, validate, aggregate and report it; returns the phase
    folder (reused when complete). Needs a connected Ray when the AI judge runs."""
    policy_model_path = str(policy_model_path)
    out = phase_dir(cfg, "feedback", cfg.feedback, cfg.data, policy_model_path, cfg.seed)
    if is_complete(out):
        log.info("feedback output for these settings exists: %s", out)
        return out
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"source": cfg.feedback.source, "policy_model": policy_model_path}
    if cfg.feedback.source == "simulated":
        generated, summary["generation"], rlaif = simulated_feedback(cfg, policy_model_path, out)
        feedback, report = validate_feedback(generated, "simulated feedback", strict=False)
        log_validation(report)
        reports = [report]
    elif cfg.feedback.source == "files":
        feedback, reports = read_feedback_files(cfg.feedback.path)
        rlaif = None
        if cfg.feedback.ai_share > 0:
            feedback, rlaif = mix_in_ai_judge(cfg, feedback, cfg.feedback.ai_judge_path or policy_model_path, None)
    else:
        raise ValueError(f"feedback.source must be simulated or files, not {cfg.feedback.source!r}")
    if feedback.num_rows == 0:
        raise ValueError(f"no feedback rows accepted: {[r.summary() for r in reports]}")

    quality = annotator_quality(feedback)
    tables = build_training_tables(feedback, annotator_weights(quality, cfg.feedback.annotator_policy))
    write_feedback(feedback, out / FEEDBACK_FILE)
    write_parquet(tables.pairs, out / PAIRS_FILE, PAIRS_SCHEMA)
    write_parquet(tables.pointwise, out / POINTWISE_FILE, POINTWISE_SCHEMA)
    report_path = write_feedback_report(out, feedback, quality, tables, combined_report(reports))
    if rlaif is not None:
        verdict = quality.annotators["verdict"].get(AI_JUDGE_ID, "")
        section = rlaif_report_section(rlaif, verdict, cfg.feedback.annotator_policy)
        report_path.write_text(report_path.read_text() + "\n" + section)

    summary |= {
        "validation": [validation_counts(r) for r in reports],
        "rows_in": sum(r.rows_in for r in reports), "rows_accepted": sum(r.accepted for r in reports),
        "rows_rejected": sum(r.rejected for r in reports),
        "rows_by_source": {source: int(n) for source, n
                           in pd.Series(feedback.column("source").to_pylist()).value_counts().items()},
        "annotators": len(quality.annotators), "flagged_annotators": quality.flagged,
        "verdicts": quality.annotators["verdict"].to_dict(), "alpha": quality.alpha,
        "annotator_policy": cfg.feedback.annotator_policy, "training_tables": tables.counts, "rlaif": rlaif,
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    mark_complete(out, summary)
    print(f"feedback: {summary['rows_in']} rows in = {summary['rows_accepted']} accepted + "
          f"{summary['rows_rejected']} rejected; {tables.counts['pairs']} pairs, {tables.counts['pointwise']} "
          f"pointwise targets; flagged {quality.flagged or 'nobody'}; alpha "
          + ", ".join(f"{k} {v:.3f}" for k, v in quality.alpha.items()) + f"; report {report_path}", flush=True)
    return out


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> str:
    start_app(cfg, "feedback")
    # Only the AI judge runs on Ray (its actor pool); human and simulated feedback do not need it.
    owned = cfg.feedback.ai_share > 0 and runtime.connect(cfg.cluster)
    try:
        policy = cfg.feedback.policy_model_path or resolve_base_model(cfg.model, cfg.cache_dir, cfg.seed)
        return str(run_feedback(cfg, policy))
    finally:
        runtime.shutdown_if_owned(owned)


if __name__ == "__main__":
    main()
