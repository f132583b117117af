from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignray.feedback.schema import (FEEDBACK_SCHEMA, feedback_table, pairwise_feedback, ranking_feedback,
                                      rating_feedback, read_feedback, thumbs_feedback, validate_feedback,
                                      write_feedback)
from alignray.data.validation import DataValidationError

WHEN = datetime(2025, 1, 1, tzinfo=timezone.utc)


def one_of_each_kind():
    return [
        pairwise_feedback("p", "yes", "no", "a", "ann1", strength=0.5, timestamp=WHEN),
        pairwise_feedback("p", "yes", "no", "tie", "ann2", annotator_group="g1", source="ai", timestamp=WHEN),
        ranking_feedback("p", ["x", "y", "z"], [2, 0, 1], "ann1", timestamp=WHEN),
        thumbs_feedback("p", "yes", "up", "ann3", source="simulated", timestamp=WHEN),
        rating_feedback("p", "no", 2, "ann1", scale=(1, 7), flaws=["harmful", "off_topic"], timestamp=WHEN),
    ]


def test_every_kind_round_trips_through_parquet(tmp_path):
    path = tmp_path / "feedback.parquet"
    write_feedback(one_of_each_kind(), path)
    assert pq.read_schema(path).equals(FEEDBACK_SCHEMA)
    table, report = read_feedback(path)
    assert report.rows_in == report.accepted == 5
    rows = table.to_pylist()
    assert [r["kind"] for r in rows] == ["pairwise", "pairwise", "ranking", "thumbs", "rating"]
    assert rows[2]["order"] == [2, 0, 1] and rows[4]["flaws"] == ["harmful", "off_topic"]
    assert rows[0]["timestamp"] == WHEN and rows[1]["annotator_group"] == "g1"


def malformed_table() -> pa.Table:
    """Good rows at 0 and 7; every other row is broken in exactly one way."""
    good_pair = pairwise_feedback("p", "yes", "no", "b", "ann1", timestamp=WHEN)
    rows = [
        good_pair,
        good_pair | {"kind": "preference"},                                   # 1 wrong kind
        rating_feedback("p", "no", 3, "ann1", timestamp=WHEN) | {"score": None},  # 2 missing score
        rating_feedback("p", "no", 9, "ann1", scale=(1, 7), timestamp=WHEN),  # 3 score outside scale
        good_pair | {"winner": "c"},                                          # 4 unknown winner
        ranking_feedback("p", ["x", "y", "z"], [0, 0, 1], "ann1", timestamp=WHEN),  # 5 not a permutation
        thumbs_feedback("p", "yes", "maybe", "ann1", timestamp=WHEN),         # 6 unknown thumb
        thumbs_feedback("p", "yes", "down", "ann2", timestamp=WHEN),
        good_pair | {"score": 4.0},                                           # 8 another kind's field
        good_pair | {"annotator_id": None},                                   # 9 missing annotator
        rating_feedback("p", "no", 3, "ann1", flaws=["rude"], timestamp=WHEN),  # 10 unknown flaw
        good_pair | {"source": "crowd"},                                      # 11 unknown source
        good_pair | {"responses": ["only one"]},                              # 12 wrong count
    ]
    # As a file written by another tool would be: without the declared non-null constraints.
    relaxed = pa.schema([field.with_nullable(True) for field in FEEDBACK_SCHEMA])
    return pa.Table.from_pylist(rows, schema=relaxed)


EXPECTED_ERRORS = {(1, "kind"), (2, "score"), (3, "score"), (4, "winner"), (5, "order"), (6, "thumb"),
                   (8, "score"), (9, "annotator_id"), (10, "flaws"), (11, "source"), (12, "responses")}


def test_malformed_file_names_row_and_field_and_loses_nothing(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(malformed_table(), path)
    table, report = read_feedback(path, strict=False)
    assert {(e.row, e.field) for e in report.errors} == EXPECTED_ERRORS
    assert report.rows_in == 13 and report.accepted == 2 and report.rejected == 11
    assert report.rows_in == report.accepted + report.rejected
    assert table.column("thumb").to_pylist() == [None, "down"]
    assert all(e.file == str(path) for e in report.errors)
    with pytest.raises(DataValidationError) as raised:
        read_feedback(path)
    message = str(raised.value)
    assert "row 4, field 'winner': winner 'c'" in message
    assert "row 3, field 'score': score 9.0 is outside the scale [1.0, 7.0]" in message
    assert "row 1, field 'kind'" in message and "11 rejected" in message


def test_missing_column_and_wrong_type_are_reported(tmp_path):
    table = feedback_table([rating_feedback("p", "r", 3, "ann1", timestamp=WHEN)] * 2)
    with pytest.raises(DataValidationError, match="field 'annotator_id': required column is missing"):
        validate_feedback(table.drop_columns(["annotator_id"]), "f")
    as_text = table.set_column(table.schema.get_field_index("score"), "score", pa.array(["3", "high"]))
    accepted, report = validate_feedback(as_text, "f", strict=False)
    assert accepted.num_rows == 1 and [(e.row, e.field) for e in report.errors] == [(1, "score")]
    assert "'high'" in report.errors[0].message


def test_writer_refuses_malformed_rows(tmp_path):
    with pytest.raises(DataValidationError, match="row 1, field 'winner'"):
        write_feedback([pairwise_feedback("p", "a", "b", "a", "x", timestamp=WHEN),
                        pairwise_feedback("p", "a", "b", "left", "x", timestamp=WHEN)], tmp_path / "f.parquet")


def test_flaw_vocabulary_is_configurable():
    table = feedback_table([rating_feedback("p", "r", 3, "ann1", flaws=["rude"], timestamp=WHEN)])
    accepted, _ = validate_feedback(table, flaw_vocabulary=("rude", "harmful"))
    assert accepted.num_rows == 1
