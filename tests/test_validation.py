import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignray.data.validation import (
    DataValidationError,
    RowError,
    ValidationReport,
    read_parquet_validated,
    validate_table,
    write_parquet,
)

SCHEMA = pa.schema([
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("score", pa.float64(), nullable=False),
    pa.field("note", pa.string()),
])


def score_in_unit_interval(row):
    return [] if 0.0 <= row["score"] <= 1.0 else [("score", f"{row['score']} outside [0, 1]")]


def test_valid_table_is_cast_and_kept_whole():
    table = pa.table({"score": pa.array([0.5, 1], pa.float32()), "prompt": ["a", "b"]})
    accepted, report = validate_table(table, SCHEMA, "f.parquet", [score_in_unit_interval])
    assert accepted.schema == SCHEMA
    assert accepted.column("note").null_count == 2  # missing nullable column filled
    assert (report.rows_in, report.accepted, report.rejected, report.errors) == (2, 2, 0, [])
    assert report.ok


def test_missing_required_column_names_the_column():
    table = pa.table({"prompt": ["a", "b"]})
    with pytest.raises(DataValidationError, match="field 'score'.*missing"):
        validate_table(table, SCHEMA, "f.parquet")
    accepted, report = validate_table(table, SCHEMA, "f.parquet", strict=False)
    assert accepted.num_rows == 0 and report.rejected == 2
    assert report.reasons == {"missing column": 1}


def test_type_null_and_row_check_errors_name_row_and_field():
    table = pa.table({
        "prompt": ["ok", None, "typo", "range", "fine"],
        "score": ["0.1", "0.2", "zero", "7", "1"],
    })
    accepted, report = validate_table(table, SCHEMA, "f.parquet", [score_in_unit_interval], strict=False)
    assert accepted.column("prompt").to_pylist() == ["ok", "fine"]
    assert report.rows_in == 5 and report.accepted == 2 and report.rejected == 3
    by_row = {(e.row, e.field) for e in report.errors}
    assert by_row == {(1, "prompt"), (2, "score"), (3, "score")}
    assert report.reasons == {"null in required field": 1, "wrong type": 1, "invalid score": 1}
    assert "3 rejected" in report.summary()
    with pytest.raises(DataValidationError) as raised:
        validate_table(table, SCHEMA, "f.parquet", [score_in_unit_interval])
    message = str(raised.value)
    assert "f.parquet, row 2, field 'score'" in message and "'zero'" in message
    assert raised.value.report.rejected == 3


def test_error_message_lists_at_most_twenty():
    table = pa.table({"prompt": ["p"] * 25, "score": [5.0] * 25})
    with pytest.raises(DataValidationError) as raised:
        validate_table(table, SCHEMA, "f.parquet", [score_in_unit_interval])
    message = str(raised.value)
    assert "row 19," in message and "row 20," not in message
    assert "... and 5 more" in message


def test_impossible_cast_rejects_every_non_null_row():
    table = pa.table({"prompt": ["a", "b"], "score": pa.array([[1.0], None], pa.list_(pa.float64()))})
    _, report = validate_table(table, SCHEMA, "f.parquet", strict=False)
    assert {(e.row, e.field) for e in report.errors} == {(0, "score"), (1, "score")}
    assert report.rejected == 2


def test_extra_columns_are_reported_not_silently_dropped():
    table = pa.table({"prompt": ["a"], "score": [0.5], "surprise": [1]})
    _, report = validate_table(table, SCHEMA, "f.parquet")
    assert report.ignored_columns == ["surprise"]
    assert "surprise" in report.summary()


def test_report_invariant_is_enforced():
    with pytest.raises(AssertionError):
        ValidationReport("f", rows_in=3, accepted=1, rejected=1)
    assert "row 4, field 'x'" in str(RowError("f", 4, "x", "bad"))


def test_write_then_read_round_trip(tmp_path):
    path = tmp_path / "sub" / "t.parquet"
    write_parquet([{"prompt": "a", "score": 0.25}, {"prompt": "b", "score": 1}], path, SCHEMA)
    assert pq.read_schema(path).equals(SCHEMA)
    table, report = read_parquet_validated(path, SCHEMA, [score_in_unit_interval])
    assert table.column("score").to_pylist() == [0.25, 1.0] and report.accepted == 2


def test_write_refuses_invalid_rows_and_unknown_keys(tmp_path):
    with pytest.raises(DataValidationError, match="row 1, field 'score'"):
        write_parquet([{"prompt": "a", "score": 0.1}, {"prompt": "b"}], tmp_path / "t.parquet", SCHEMA)
    with pytest.raises(ValueError, match="typo"):
        write_parquet([{"prompt": "a", "score": 0.1, "typo": 1}], tmp_path / "t.parquet", SCHEMA)
    assert not (tmp_path / "t.parquet").exists()


def test_reports_of_several_files_combine_into_one_and_count_as_plain_data():
    bad = pa.table({"prompt": ["a", None, "c"], "score": [0.5, 0.5, 2.0]})
    _, first = validate_table(bad, SCHEMA, "one.parquet", [score_in_unit_interval], strict=False)
    _, second = validate_table(pa.table({"prompt": ["d"], "score": [0.1]}), SCHEMA, "two.parquet", strict=False)
    both = ValidationReport.combined([first, second])
    assert (both.file, both.rows_in, both.accepted, both.rejected) == ("2 files", 4, 2, 2)
    assert both.reasons == {"null in required field": 1, "invalid score": 1} and len(both.errors) == 2
    assert ValidationReport.combined([second]) is second
    counts = first.counts(max_errors=1)
    assert counts == {"file": "one.parquet", "rows_in": 3, "accepted": 1, "rejected": 2, "reasons": first.reasons,
                      "errors": [str(first.errors[0])]}
    assert "errors" not in second.counts()
