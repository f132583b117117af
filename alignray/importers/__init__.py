"""Importers: the files people have (HH-RLHF transcripts, TRL / OpenRLHF preference pairs,
UltraFeedback rows, SFT demonstrations; as JSONL, JSONL.gz, parquet, CSV or a saved
Hugging Face dataset) become alignray's own prompts, demonstrations and feedback rows.

Pure: nothing here writes files or imports Ray. ``read_records`` (readers) yields the
input rows; a format's converter turns one row into alignray rows or rejects it with a
reason; ``import_file`` runs both and counts: rows in = accepted + rejected, every
rejected row named with its reason (``alignray.workflows.convert`` writes the files).
"""
from alignray.importers.core import Converted, ImportOptions, Imported, RowRejected, import_records
from alignray.importers.demonstrations import convert_demonstration
from alignray.importers.hh_rlhf import convert_hh_row
from alignray.importers.preference import convert_preference_row
from alignray.importers.readers import read_records
from alignray.importers.ultrafeedback import convert_ultrafeedback_row

# Format name (the convert command's --format) -> converter of one row.
CONVERTERS = {
    "hh-rlhf": convert_hh_row,
    "preference": convert_preference_row,
    "ultrafeedback": convert_ultrafeedback_row,
    "sft": convert_demonstration,
}


def import_file(path, format_name: str, options: ImportOptions | None = None, split: str | None = None) -> Imported:
    """Every row of the file at ``path`` (or saved dataset folder) read as ``format_name``."""
    if format_name not in CONVERTERS:
        raise ValueError(f"unknown format {format_name!r}; known: {sorted(CONVERTERS)}")
    return import_records(read_records(path, split), CONVERTERS[format_name], options or ImportOptions(), str(path))


__all__ = ["CONVERTERS", "Converted", "ImportOptions", "Imported", "RowRejected", "import_file",
           "import_records", "read_records"]
