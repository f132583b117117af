"""Input rows from JSONL (also .gz), parquet, CSV or a saved Hugging Face dataset.

Each reader yields ``(row number, row)`` where ``row`` is a dict, or the ``RowRejected``
that says why that row could not even be read (bad UTF-8, bad JSON, a truncated gzip):
the importer counts it like any other rejected row. Row numbers are 0-based: the line
of a JSONL file (blank lines skipped but counted in the numbering), the record of the others.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from alignray.importers.core import RowRejected

Record = tuple[int, "dict | RowRejected"]


def read_records(path, split: str | None = None) -> Iterator[Record]:
    """The rows of ``path``, by its name: ``.jsonl``/``.json``(``.gz``), ``.parquet``, ``.csv``,
    or a folder saved by ``datasets.save_to_disk`` (``split`` picks one of a DatasetDict's)."""
    path = Path(path)
    if path.is_dir():
        return read_saved_dataset(path, split)
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        return read_jsonl(path)
    if name.endswith(".parquet"):
        return enumerate(pq.read_table(path).to_pylist())
    if name.endswith(".csv"):
        return read_csv(path)
    raise ValueError(f"{path}: unknown file type; use .jsonl, .jsonl.gz, .parquet, .csv or a saved dataset folder")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def read_jsonl(path: Path) -> Iterator[Record]:
    """One JSON object a line."""
    index = -1
    with _open_binary(path) as f:
        try:
            for index, raw in enumerate(f):
                if raw.strip():
                    yield index, _json_object(raw)
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            # The rows before the damage are good; the damaged rest is one rejected row.
            yield index + 1, RowRejected("truncated gzip", "file", f"the compressed stream ends early: {error}")


def _json_object(raw: bytes) -> dict | RowRejected:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return RowRejected("bad UTF-8", "line", f"not UTF-8: {error}")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        return RowRejected("bad JSON", "line", f"not JSON: {error}")
    if not isinstance(row, dict):
        return RowRejected("wrong type", "line", f"a line holds a JSON {type(row).__name__}, not an object")
    return row


def read_csv(path: Path) -> Iterator[Record]:
    """A header line, then one row a record (text fields only; quoted newlines allowed).
    Bytes that are not UTF-8 reject the row that holds them."""
    with _open_binary(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")
        for index, row in enumerate(csv.DictReader(text)):
            if None in row:
                yield index, RowRejected("wrong type", "line", f"{len(row[None])} more values than columns")
            elif any(_has_bad_bytes(value) for value in row.values()):
                yield index, RowRejected("bad UTF-8", "line", "bytes that are not UTF-8")
            else:
                yield index, row


def _has_bad_bytes(value) -> bool:
    # surrogateescape turns each undecodable byte into a lone surrogate
    return isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value)


def read_saved_dataset(path: Path, split: str | None) -> Iterator[Record]:
    """A dataset saved with ``datasets``' ``save_to_disk``; needs the optional extra."""
    try:
        import datasets
    except ImportError as error:
        raise ImportError(f"{path} is a folder: reading a saved Hugging Face dataset needs the optional "
                          "extra, `pip install 'alignray[datasets]'`") from error
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split is None and len(loaded) == 1:
            split = next(iter(loaded))
        if split not in loaded:
            raise ValueError(f"{path}: choose a split with --split, one of {sorted(loaded)}")
        loaded = loaded[split]
    return enumerate(loaded)
