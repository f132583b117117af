"""Validation of tables against a declared pyarrow schema, with row-level errors.

Every data file in alignray (prompts, demonstrations, feedback, rollouts) is parquet with a
declared schema. Loading one goes through :func:`validate_table`, which

1. checks that every non-nullable column of the schema exists (a missing nullable column is
   filled with nulls: it carries no information that could be lost),
2. casts each column to its declared type; a value that cannot be cast is an error naming
   its row and field,
3. rejects nulls in non-nullable fields,
4. runs per-row checks (callables ``row_dict -> [(field, message), ...]``) on the rows that
   passed steps 2-3, so a check may rely on non-nullable fields being present and typed.

Nothing disappears silently: the :class:`ValidationReport` always satisfies
``rows_in == accepted + rejected`` and lists every error; columns not in the schema are
named in the report as ignored. Row numbers are 0-based positions in the input table.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

RowCheck = Callable[[dict], Sequence[tuple[str, str]]]

MAX_ERRORS_IN_MESSAGE = 20


@dataclass(frozen=True)
class RowError:
    """One problem in one row (``row is None`` for a problem with the whole table)."""

    file: str
    row: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = "table" if self.row is None else f"row {self.row}"
        return f"{self.file}, {where}, field '{self.field}': {self.message}"


@dataclass
class ValidationReport:
    """Counts and errors of one validation. ``reasons`` counts errors (not rows) by kind."""

    file: str
    rows_in: int
    accepted: int
    rejected: int
    errors: list[RowError] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rows_in != self.accepted + self.rejected:
            raise AssertionError(
                f"{self.file}: rows_in {self.rows_in} != accepted {self.accepted}"
                f" + rejected {self.rejected}"
            )

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        text = (
            f"{self.file}: {self.rows_in} rows in, {self.accepted} accepted,"
            f" {self.rejected} rejected"
        )
        if self.reasons:
            text += " (" + ", ".join(f"{r}: {n}" for r, n in sorted(self.reasons.items())) + ")"
        if self.ignored_columns:
            text += f"; ignored columns not in the schema: {', '.join(self.ignored_columns)}"
        return text

    def counts(self, max_errors: int = 0) -> dict:
        """The counts as plain data (for a summary.json), with the first ``max_errors`` errors."""
        counts = {"file": self.file, "rows_in": self.rows_in, "accepted": self.accepted,
                  "rejected": self.rejected, "reasons": self.reasons}
        return counts | ({"errors": [str(error) for error in self.errors[:max_errors]]} if max_errors else {})

    @classmethod
    def combined(cls, reports: Sequence[ValidationReport]) -> ValidationReport:
        """One report for several files: counts, errors and reasons added up."""
        if len(reports) == 1:
            return reports[0]
        reasons: Counter[str] = Counter()
        for report in reports:
            reasons.update(report.reasons)
        return cls(f"{len(reports)} files", sum(r.rows_in for r in reports), sum(r.accepted for r in reports),
                   sum(r.rejected for r in reports), [e for r in reports for e in r.errors], dict(reasons))


class DataValidationError(ValueError):
    """Raised by strict validation; names file, row and field of the first errors."""

    def __init__(self, report: ValidationReport):
        self.report = report
        lines = [report.summary()]
        lines += [f"  {error}" for error in report.errors[:MAX_ERRORS_IN_MESSAGE]]
        hidden = len(report.errors) - MAX_ERRORS_IN_MESSAGE
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
        super().__init__("\n".join(lines))


def _cast_column(
    column: pa.ChunkedArray, target: pa.DataType, name: str, file: str
) -> tuple[pa.ChunkedArray, list[RowError]]:
    """Cast a whole column; on failure find the offending rows one by one and null them."""
    try:
        return column.cast(target), []
    except pa.ArrowNotImplementedError:
        # No cast exists between the two types at all: every non-null value fails alike.
        message = f"type {column.type} cannot be cast to {target}"
        errors = [RowError(file, i, name, message) for i in range(len(column)) if column[i].is_valid]
        return pa.chunked_array([pa.nulls(len(column), target)], type=target), errors
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    values, errors = [], []
    for i in range(len(column)):
        try:
            values.append(column.slice(i, 1).cast(target).combine_chunks())
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            errors.append(RowError(file, i, name, f"cannot cast {column[i].as_py()!r} to {target}: {error}"))
            values.append(pa.nulls(1, target))
    return pa.chunked_array(values, type=target), errors


def _cast_to_schema(table: pa.Table, schema: pa.Schema, file: str, errors: list[RowError],
                    reasons: Counter[str], bad_rows: set[int]) -> pa.Table:
    """Steps 1-3 of the module docstring: every column cast to its type, nulls in required
    fields found; errors, reasons and bad rows are added to the caller's."""
    columns = []
    for target in schema:
        if target.name not in table.column_names:
            columns.append(pa.chunked_array([pa.nulls(table.num_rows, target.type)], type=target.type))
            continue
        column, cast_errors = _cast_column(table.column(target.name), target.type, target.name, file)
        errors += cast_errors
        reasons["wrong type"] += len(cast_errors)
        cast_failed = {e.row for e in cast_errors}
        bad_rows |= cast_failed
        if not target.nullable:
            null_rows = pc.indices_nonzero(pc.is_null(column)).to_pylist()
            for i in null_rows:
                if i not in cast_failed:
                    errors.append(RowError(file, i, target.name, "null in a required field"))
                    reasons["null in required field"] += 1
                    bad_rows.add(i)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _check_rows(table: pa.Table, row_checks: list[RowCheck], file: str, errors: list[RowError],
                reasons: Counter[str], bad_rows: set[int]) -> None:
    """Step 4: the row checks, on the rows that passed steps 2-3."""
    if not row_checks:
        return
    for i, row in enumerate(table.to_pylist()):
        if i in bad_rows:
            continue
        for check in row_checks:
            for field_name, message in check(row):
                errors.append(RowError(file, i, field_name, message))
                reasons[f"invalid {field_name}"] += 1
                bad_rows.add(i)


def validate_table(
    table: pa.Table,
    schema: pa.Schema,
    file: str,
    row_checks: Iterable[RowCheck] = (),
    strict: bool = True,
) -> tuple[pa.Table, ValidationReport]:
    """Validate ``table`` against ``schema``; return the accepted rows (cast) and a report.

    With ``strict=True`` any error raises :class:`DataValidationError`; otherwise the
    accepted rows and the report are returned and the caller decides.
    """
    rows_in = table.num_rows
    errors: list[RowError] = []
    reasons: Counter[str] = Counter()
    ignored = [name for name in table.column_names if name not in schema.names]

    missing_required = [
        f.name for f in schema if f.name not in table.column_names and not f.nullable
    ]
    if missing_required:
        for name in missing_required:
            errors.append(RowError(file, None, name, "required column is missing"))
            reasons["missing column"] += 1
        report = ValidationReport(file, rows_in, 0, rows_in, errors, dict(reasons), ignored)
        if strict:
            raise DataValidationError(report)
        return schema.empty_table(), report

    bad_rows: set[int] = set()
    cast_table = _cast_to_schema(table, schema, file, errors, reasons, bad_rows)
    _check_rows(cast_table, list(row_checks), file, errors, reasons, bad_rows)

    errors.sort(key=lambda e: (-1 if e.row is None else e.row, e.field))
    keep = pa.array([i not in bad_rows for i in range(rows_in)], type=pa.bool_())
    accepted = cast_table.filter(keep)
    report = ValidationReport(
        file, rows_in, accepted.num_rows, len(bad_rows),
        errors, {r: n for r, n in reasons.items() if n}, ignored,
    )
    if strict and errors:
        raise DataValidationError(report)
    return accepted, report


def read_parquet_validated(
    path: str | os.PathLike,
    schema: pa.Schema,
    row_checks: Iterable[RowCheck] = (),
    strict: bool = True,
) -> tuple[pa.Table, ValidationReport]:
    """Read a parquet file and validate it (see :func:`validate_table`)."""
    return validate_table(pq.read_table(path), schema, os.fspath(path), row_checks, strict)


def write_parquet(
    table_or_pylist: pa.Table | Sequence[dict],
    path: str | os.PathLike,
    schema: pa.Schema,
    row_checks: Iterable[RowCheck] = (),
) -> pa.Table:
    """Write rows with the declared schema, refusing (strictly) anything that would not validate.

    Rows given as dicts may leave out nullable fields but may not carry keys the schema
    lacks (they would be dropped). Parent directories are created. Returns the written table.
    """
    if isinstance(table_or_pylist, pa.Table):
        table = table_or_pylist
    else:
        rows = list(table_or_pylist)
        unknown = sorted({key for row in rows for key in row} - set(schema.names))
        if unknown:
            raise ValueError(f"{os.fspath(path)}: keys not in the schema: {', '.join(unknown)}")
        table = pa.Table.from_pylist(rows, schema=schema)
    table, _ = validate_table(table, schema, os.fspath(path), row_checks, strict=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pq.write_table(table, path)
    return table
