"""A short report per feedback set: report.md plus PNG figures.

Figures are drawn on ``matplotlib.figure.Figure`` objects (the Agg canvas), never through
pyplot, so writing a report changes no global matplotlib state and needs no display.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure

from alignray.core.artifacts import AGREEMENT_FIGURE, ELO_FIGURE, RATINGS_FIGURE
from alignray.feedback.aggregate import TrainingTables, per_prompt_matchups
from alignray.feedback.elo import bradley_terry_fit, bradley_terry_to_elo_scale, elo_ratings
from alignray.feedback.quality import FAMILIES, AnnotatorQuality
from alignray.feedback.schema import AI_JUDGE_ID
from alignray.core.report import PAGE_CONTENT_PX
from alignray.data.validation import ValidationReport

FEEDBACK_DPI = 110


def elo_vs_bradley_terry(pairs: pa.Table, min_responses: int = 3, elo_passes: int = 10) -> tuple[pd.DataFrame, int]:
    """Per-prompt Elo ratings next to the exact Bradley-Terry fit on the Elo scale.

    Prompts whose win graph is not strongly connected have no finite Bradley-Terry maximum
    and are skipped; their number is returned with the table.
    """
    rows, skipped = [], 0
    for prompt, winners, losers, weights, _ in per_prompt_matchups(pairs, min_responses):
        try:
            strengths = bradley_terry_to_elo_scale(bradley_terry_fit(winners, losers, weights))
        except ValueError:
            skipped += 1
            continue
        elo = elo_ratings(winners, losers, weights, passes=elo_passes)
        rows += [{"prompt": prompt, "response": r, "elo": elo[r], "bradley_terry": strengths[r]} for r in elo]
    return pd.DataFrame(rows, columns=["prompt", "response", "elo", "bradley_terry"]), skipped


def _markdown_table(frame: pd.DataFrame, index_name: str) -> str:
    def cell(value):
        if isinstance(value, (float, np.floating)):
            return "" if math.isnan(value) else f"{value:.3g}"
        return str(value)

    header = [index_name] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([cell(index)] + [cell(v) for v in row]) + " |"
              for index, row in zip(frame.index, frame.itertuples(index=False))]
    return "\n".join(lines)


def _agreement_figure(quality: AnnotatorQuality, path: Path) -> None:
    table = quality.annotators
    families = [f for f in FAMILIES if f"{f}_score" in table]
    # One bar group per annotator, as wide as the report page allows (many annotators: thinner bars).
    figure = Figure(figsize=(min(max(6.0, 0.35 * len(table) + 2), (PAGE_CONTENT_PX - 10) / FEEDBACK_DPI), 4.0))
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(families))
    x = np.arange(len(table))
    for i, family in enumerate(families):
        axes.bar(x + i * width, table[f"{family}_score"].fillna(0.0), width, label=family)
    for position in x[table["flagged"].to_numpy()]:
        axes.axvspan(position - 0.1, position + 0.9, color="red", alpha=0.12)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xlim(-0.5, len(table))
    axes.set_xticks(x + 0.4 - width / 2, table.index, rotation=90, fontsize=7)
    axes.set_ylabel("chance-corrected agreement\nwith leave-one-out consensus")
    axes.set_title("Annotator agreement (flagged annotators shaded red)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=FEEDBACK_DPI)


def _ratings_figure(feedback: pa.Table, path: Path) -> bool:
    ratings = feedback.filter(pc.equal(feedback.column("kind"), "rating")).to_pandas()
    if ratings.empty:
        return False
    ratings["unit"] = (ratings["score"] - ratings["scale_min"]) / (ratings["scale_max"] - ratings["scale_min"])
    by_annotator = ratings.groupby("annotator_id")["unit"]
    figure = Figure(figsize=(6.5, 4.0))
    axes = figure.add_subplot()
    # Step histograms rather than boxes: ratings pile up on a few scale points (most texts
    # are neutral), and a box then collapses to a line that hides the tails.
    bins = np.linspace(0.0, 1.0, 8)
    for annotator, values in by_annotator:
        axes.hist(values.to_numpy(), bins=bins, histtype="step", density=True, label=str(annotator))
    if by_annotator.ngroups <= 12:
        axes.legend(fontsize=7)
    axes.set_xlabel("rating, scale mapped to [0, 1]")
    axes.set_ylabel("density")
    axes.set_title("Rating distribution per annotator (before normalisation)")
    figure.tight_layout()
    figure.savefig(path, dpi=FEEDBACK_DPI)
    return True


def _elo_figure(comparison: pd.DataFrame, path: Path) -> None:
    figure = Figure(figsize=(4.5, 4.5))
    axes = figure.add_subplot()
    axes.scatter(comparison["bradley_terry"], comparison["elo"], s=8, alpha=0.6)
    low = min(comparison["bradley_terry"].min(), comparison["elo"].min())
    high = max(comparison["bradley_terry"].max(), comparison["elo"].max())
    axes.plot([low, high], [low, high], color="grey", linewidth=0.8)
    axes.set_xlabel("Bradley-Terry MLE (Elo scale)")
    axes.set_ylabel("Elo")
    axes.set_title("Per-prompt response ratings")
    figure.tight_layout()
    figure.savefig(path, dpi=FEEDBACK_DPI)


def write_feedback_report(
    out_dir: str | Path,
    feedback: pa.Table,
    quality: AnnotatorQuality,
    tables: TrainingTables | None = None,
    validation: ValidationReport | None = None,
    title: str = "Feedback report",
    rlaif: dict | None = None,
    annotator_policy: str = "keep",
) -> Path:
    """Write ``report.md`` and its figures into ``out_dir``; return the path of report.md.
    ``rlaif``: the AI judge's statistics, when it gave a share of the feedback."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    if validation is not None:
        lines += ["## Validation", "", validation.summary(), ""]
    kinds = pd.Series(feedback.column("kind").to_pylist()).value_counts()
    sources = pd.Series(feedback.column("source").to_pylist()).value_counts()
    lines += ["## Feedback", "",
              f"{feedback.num_rows} rows from {len(quality.annotators)} annotators; by kind: "
              + ", ".join(f"{k} {n}" for k, n in kinds.items())
              + "; by source: " + ", ".join(f"{k} {n}" for k, n in sources.items()) + ".", ""]
    lines += ["## Inter-annotator agreement (Krippendorff's alpha)", "",
              "Nominal for preferences and thumbs; interval for ratings, on the [0, 1] scale and after "
              "per-annotator normalisation.", ""]
    lines += [f"- {family}: {alpha:.3f}" for family, alpha in quality.alpha.items()] + [""]
    if quality.warnings:
        lines += ["## Warnings", ""] + [f"- {warning}" for warning in quality.warnings] + [""]
    shown = ["verdict"] + [c for f in FAMILIES for c in (f"{f}_n", f"{f}_agreement", f"{f}_chance")
                           if c in quality.annotators] + ["reason"]
    lines += ["## Annotators", "",
              "Agreement with the leave-one-out consensus (share of matching labels; Pearson r for "
              "ratings) next to the agreement expected by chance.", "",
              _markdown_table(quality.annotators[shown], "annotator"), "",
              f"![agreement]({AGREEMENT_FIGURE})", ""]
    _agreement_figure(quality, out_dir / AGREEMENT_FIGURE)
    if _ratings_figure(feedback, out_dir / RATINGS_FIGURE):
        lines += [f"![ratings]({RATINGS_FIGURE})", ""]
    if not quality.groups.empty:
        lines += ["## Annotator groups", "", _markdown_table(quality.groups, "group"), ""]
    if tables is not None:
        lines += ["## Training tables", ""] + [f"- {name}: {count}" for name, count in tables.counts.items()] + [""]
        comparison, skipped = elo_vs_bradley_terry(tables.pairs)
        if not comparison.empty:
            _elo_figure(comparison, out_dir / ELO_FIGURE)
            correlation = comparison[["elo", "bradley_terry"]].corr().iloc[0, 1]
            lines += ["## Elo and Bradley-Terry", "",
                      f"{comparison['prompt'].nunique()} prompts compared ({skipped} skipped: some response "
                      f"never lost or never won, so the Bradley-Terry maximum is infinite); Pearson r = "
                      f"{correlation:.3f}.", "", f"![Elo vs Bradley-Terry]({ELO_FIGURE})", ""]
    if rlaif is not None:
        lines.append(rlaif_section(rlaif, quality.annotators["verdict"].get(AI_JUDGE_ID, ""), annotator_policy))
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def human_cost(feedback_file: str | Path) -> Path:
    """Where the collection server writes what people's labels in ``feedback_file`` cost."""
    return Path(str(feedback_file) + ".cost.json")


def share_text(value) -> str:
    """A share or a log-odds to three decimals; "n/a" where it was not measured (None or NaN)."""
    return "n/a" if value is None or value != value else f"{value:.3f}"


def _judge_lines(stats: dict) -> list[str]:
    counts, cost, bias = stats["counts"], stats["cost"], stats["position_bias"]
    failed = ", ".join(f"{reason} {n}" for reason, n in counts["failed_by_reason"].items()) or "none"
    money = (f", {cost['money_per_label']:.6f} per label ({cost['money']:.4f} in all)" if "money" in cost else "")
    people = stats.get("human_cost")
    if people and people.get("seconds_per_label") is not None:
        money += (f"; people on the collection server: {people['seconds_per_label']:.1f} s and "
                  f"{people['cost_per_label']:.4f} {people['currency']} per label")
    lines = [f"Judge `{stats['judge_model']}` ({stats['kind']}, rubric `{stats['rubric']}` {stats['rubric_digest']}): "
             f"{stats['items_replaced']} of {stats['pairwise_items']} pairwise items judged by the AI (share "
             f"{stats['ai_share']}; {stats['items_for_ai']} drawn, the rest kept their people's labels).", "",
             f"Pairs in = judged + unparsed + failed: {counts['in']} = {counts['judged']} + {counts['unparsed']} + "
             f"{counts['failed']} (failed by reason: {failed}); {counts['answers_from_cache']} answers from the "
             "verdict cache.", "",
             f"Cost: {cost['seconds_per_label']} s, {cost['tokens_per_label']} tokens per label{money}.", "",
             f"Position bias: the first-shown reply chosen in {share_text(bias['first_reply_chosen_share'])} of the "
             f"orders judged (mean {share_text(bias['mean_position_bias_log_odds'])} log-odds toward it; cancelled by "
             "judging both orders)."]
    for form, given in stats.get("forms", {}).items():
        if form != "counts":
            lines += ["", f"{form}: {given['items_replaced']} of the {given['items_for_ai']} items drawn for the AI "
                          "rated by it (the rest kept their people's labels)."]
    length = stats["length_bias"]
    heldout = length.get("heldout_annotators", {}).get("longer_preferred_share")
    lines += ["", f"Length bias: the longer reply preferred in {share_text(length['judge']['longer_preferred_share'])} of "
                  f"{length['judge']['pairs']} pairs of unequal length (held-out annotators: {share_text(heldout)})."]
    if stats["group_agreement"]:
        lines += ["", "Agreement with each annotator group's majority: " + ", ".join(
            f"{group} {share_text(g['agreement'])} ({g['items']} pairs)" for group, g in stats["group_agreement"].items())
            + "."]
    return lines


def rlaif_section(stats: dict, verdict: str, policy: str) -> str:
    """The AI judge's share, counts, cost, calibration, biases, and agreement with the held-out raters."""
    lines = ["## RLAIF judge", ""] + _judge_lines(stats)
    calibration = stats["calibration"]
    if calibration.get("gold_pairs"):
        lines += ["", f"Calibration on {calibration['gold_pairs']} human gold pairs: agreement "
                      f"**{share_text(calibration['agreement'])}** on {calibration['items']} judged (one-sided binomial "
                      f"p = {calibration['p_value']:.3g}); weight {calibration['weight']}."
                  + (f" {calibration['message']}." if "message" in calibration else "")]
    else:
        lines += ["", "The judge was not calibrated: no human gold pairs."]
    if "agreement_with_heldout_raters" in stats:
        lines += ["", f"Agreement with the majority of the held-out raters on {stats['items']} held-out pairs: "
                      f"**{stats['agreement_with_heldout_raters']:.3f}** (the training raters' consensus: "
                      f"{stats['training_raters_agreement_with_heldout_raters']:.3f}; chance: 0.5)."]
    if verdict in ("adversarial", "uninformative"):
        # The quality check treats the judge like any annotator: a judge at chance is flagged.
        lines += ["", f"Annotator quality flags the AI judge as **{verdict}**; with annotator_policy={policy} "
                      f"its rows are weighted accordingly in the training tables."]
    return "\n".join(lines) + "\n"
