"""The feedback app end to end: simulated and AI feedback on responses of the tiny model
(30 prompts x 3 responses), and feedback files with malformed rows."""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignray.feedback.schema import FEEDBACK_SCHEMA
from alignray.feedback.aggregate import PAIRS_SCHEMA, POINTWISE_SCHEMA
from alignray.feedback.heldout import HELDOUT_PAIRS_SCHEMA
from alignray.feedback.simulated import annotator_id, leniency_group, make_annotator_pool, simulate_feedback
from alignray.workflows.common import compose_app_config
from alignray.workflows.feedback import run_feedback


def _config(tmp_path, overrides):
    return compose_app_config([f"workdir={tmp_path}"] + overrides)


@pytest.fixture(scope="module")
def simulated_run(ray_cluster, tiny_base_model, tmp_path_factory):
    cfg = _config(tmp_path_factory.mktemp("feedback"), [
        "feedback=rlaif", "feedback.num_prompts=30", "feedback.responses_per_prompt=3",
        "feedback.heldout_prompts=10", "feedback.bad_faith_share=0.2", "feedback.ai_judge.actors=2",
        "feedback.ai_judge.calibration.on_fail=zero_weight",
        "data.max_response_tokens=16"])
    return cfg, tiny_base_model, run_feedback(cfg, str(tiny_base_model))


def test_simulated_run_writes_every_table_with_its_schema(simulated_run):
    _, _, out = simulated_run
    for name, schema in [("feedback.parquet", FEEDBACK_SCHEMA), ("heldout_feedback.parquet", FEEDBACK_SCHEMA),
                         ("pairs.parquet", PAIRS_SCHEMA), ("pointwise.parquet", POINTWISE_SCHEMA),
                         ("heldout_pairs.parquet", HELDOUT_PAIRS_SCHEMA)]:
        table = pq.read_table(out / name)
        assert table.schema.names == schema.names and table.num_rows > 0, name
    feedback = pq.read_table(out / "feedback.parquet").to_pylist()
    assert {row["kind"] for row in feedback} == {"pairwise", "ranking", "thumbs", "rating"}
    assert {row["source"] for row in feedback} == {"simulated", "ai"}
    prompts = {row["prompt"] for row in feedback}
    assert len(prompts) == 30
    heldout = pq.read_table(out / "heldout_pairs.parquet").to_pandas()
    assert not set(heldout["prompt"]) & prompts  # held-out prompts never enter training
    # five held-out and five training raters judge each pair (twice where two samples coincide)
    assert heldout["heldout_votes"].isin([5, 10]).all() and heldout["heldout_votes"].eq(heldout["train_votes"]).all()
    assert heldout[["heldout_preference", "train_preference"]].stack().between(0, 1).all()


def test_ai_judge_replaces_its_share_of_the_pairwise_items(simulated_run):
    _, _, out = simulated_run
    rlaif = json.loads((out / "summary.json").read_text())["rlaif"]
    # three pairs of three responses per prompt, fewer where two sampled responses coincide
    assert 80 <= rlaif["pairwise_items"] <= 30 * 3
    assert rlaif["items_replaced"] == round(rlaif["pairwise_items"] / 2)
    rows = pq.read_table(out / "feedback.parquet").to_pylist()
    ai = [row for row in rows if row["source"] == "ai"]
    assert len(ai) == rlaif["items_replaced"] and {row["annotator_id"] for row in ai} == {"ai-judge"}
    ai_items = {(row["prompt"], *row["responses"]) for row in ai}
    human_pairwise = {(row["prompt"], *row["responses"]) for row in rows
                      if row["kind"] == "pairwise" and row["source"] != "ai"}
    assert not ai_items & human_pairwise and len(ai_items | human_pairwise) == rlaif["pairwise_items"]
    heldout_pairs = pq.read_metadata(out / "heldout_pairs.parquet").num_rows
    assert rlaif["items"] + rlaif["items_without_majority"] == heldout_pairs
    # The agreement figures are those of the held-out pairs file: pairs with a held-out majority,
    # the training raters' majority right or wrong, half where they split.
    pairs = pq.read_table(out / "heldout_pairs.parquet").to_pandas()
    decided = pairs[pairs["heldout_preference"] != 0.5]
    training_right = np.where(decided["train_preference"] == 0.5, 0.5,
                              (decided["train_preference"] > 0.5) == (decided["heldout_preference"] > 0.5))
    assert rlaif["items"] == len(decided)
    assert rlaif["training_raters_agreement_with_heldout_raters"] == pytest.approx(training_right.mean())


def test_summary_counts_and_report(simulated_run):
    _, _, out = simulated_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_in"] == summary["rows_accepted"] + summary["rows_rejected"]
    assert summary["rows_rejected"] == 0
    assert summary["rows_accepted"] == pq.read_metadata(out / "feedback.parquet").num_rows
    assert "badfaith1-flipper" in summary["verdicts"] and "preference" in summary["alpha"]
    report = (out / "report.md").read_text()
    assert "## RLAIF judge" in report and "held-out raters" in report
    if summary["verdicts"]["ai-judge"] in ("adversarial", "uninformative"):
        assert "flags the AI judge" in report
    assert (out / "agreement.png").stat().st_size > 0 and (out / "DONE").exists()


def test_simulated_annotators_carry_their_leniency_group_into_the_files_and_the_report(simulated_run):
    _, _, out = simulated_run
    for name in ("feedback.parquet", "heldout_feedback.parquet"):
        rows = pq.read_table(out / name, columns=["annotator_id", "annotator_group"]).to_pylist()
        honest = {(row["annotator_id"], row["annotator_group"]) for row in rows
                  if row["annotator_id"].startswith("rater")}
        assert honest == {(annotator_id(r), leniency_group(r)) for r in
                          (range(1, 6) if name == "feedback.parquet" else range(1, 11))}, name
    report = (out / "report.md").read_text()
    assert "## Annotator groups" in report and "| lenient |" in report and "| strict |" in report


def test_finished_run_is_reused(simulated_run):
    cfg, model, out = simulated_run
    stamp = (out / "summary.json").stat().st_mtime_ns
    assert run_feedback(cfg, str(model)) == out
    assert (out / "summary.json").stat().st_mtime_ns == stamp


def test_malformed_feedback_file_surfaces_row_errors_and_loses_nothing(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="alignray")  # the counts are an INFO line of the job log
    texts = [f"reply {i} is {'great' if i % 2 else 'awful'}" for i in range(12)]
    feedback = simulate_feedback(make_annotator_pool(), [f"prompt {i}" for i in range(4)],
                                 [texts[3 * i:3 * i + 3] for i in range(4)])
    rows = feedback.to_pylist()
    bad_winner = next(i for i, row in enumerate(rows) if row["kind"] == "pairwise")
    rows[bad_winner]["winner"] = "both"
    bad_thumb = next(i for i, row in enumerate(rows) if row["kind"] == "thumbs")
    rows[bad_thumb]["thumb"] = "sideways"
    folder = tmp_path / "incoming"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=FEEDBACK_SCHEMA), folder / "batch1.parquet")
    pq.write_table(feedback.slice(0, 10), folder / "batch2.parquet")

    cfg = _config(tmp_path, ["feedback=files", f"feedback.path={folder}"])
    out = run_feedback(cfg, "unused-policy")
    summary = json.loads((out / "summary.json").read_text())
    first, second = summary["validation"]
    assert (first["rows_in"], first["accepted"], first["rejected"]) == (len(rows), len(rows) - 2, 2)
    assert (second["rows_in"], second["accepted"], second["rejected"]) == (10, 10, 0)
    assert summary["rows_in"] == summary["rows_accepted"] + summary["rows_rejected"] == len(rows) + 10
    assert any(f"row {bad_winner}, field 'winner'" in error for error in first["errors"])
    assert any(f"row {bad_thumb}, field 'thumb'" in error for error in first["errors"])
    logged = capsys.readouterr().out + caplog.text
    assert f"{len(rows)} rows in, {len(rows) - 2} accepted, 2 rejected" in logged
    assert f"row {bad_winner}, field 'winner'" in logged
    assert pq.read_metadata(out / "feedback.parquet").num_rows == len(rows) + 8
    assert "2 rejected" in (out / "report.md").read_text()


def test_quality_control_flags_an_ai_judge_at_chance(ray_cluster, tiny_base_model, tmp_path):
    """Annotators who read the lexicon agree on glad vs glum replies; the tiny test model (a few
    seconds of pretraining) agrees with them on 0.56 of all 120 pairs, not significantly more
    than chance. Judging half the pairs, it must be flagged like any annotator at chance, and
    the report must say so."""
    glad, glum = ["love this", "great fun", "so happy", "best day"], ["hate this", "awful mess", "so sad", "worst day"]
    prompts = [f"tweet number {i}" for i in range(40)]
    responses = [[f"{glad[i % 4]} {i}", f"{glum[i % 4]} {i}", f"{glad[(i + 1) % 4]} and {glum[i % 4]} {i}"]
                 for i in range(40)]
    feedback = simulate_feedback(make_annotator_pool(), prompts, responses, forms=("pairwise", "ranking"))
    pq.write_table(feedback, tmp_path / "feedback.parquet")
    cfg = _config(tmp_path, ["feedback=files", f"feedback.path={tmp_path / 'feedback.parquet'}",
                             "feedback.ai_share=0.5", "feedback.ai_judge.actors=2",
                             "feedback.ai_judge.calibration.on_fail=zero_weight"])
    out = run_feedback(cfg, str(tiny_base_model))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rlaif"]["items_replaced"] == 60
    verdicts = summary["verdicts"]
    assert verdicts["ai-judge"] in ("adversarial", "uninformative")
    assert all(verdicts[f"rater{r}"] == "ok" for r in range(1, 6))  # the check does pass annotators who can judge
    assert f"flags the AI judge as **{verdicts['ai-judge']}**" in (out / "report.md").read_text()
