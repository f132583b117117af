"""Your own data into alignray's files: a file in a common format becomes the prompts,
demonstrations and feedback files the phases read, split by prompt into train and held-out.

    python -m alignray.workflows.convert --format hh-rlhf hh.jsonl.gz data/hh
    python -m alignray.workflows.convert --format preference pairs.parquet data/mine --heldout-fraction 0.2
    python -m alignray.workflows.convert --format ultrafeedback uf.jsonl data/uf --judge gpt-4
    python -m alignray.workflows.convert --format sft chats.jsonl data/sft

Writes ``prompts_{train,heldout}.parquet``, ``demonstrations_{split}.parquet``,
``feedback_{split}.parquet`` (whichever the format gives) and ``convert_summary.json``:
rows in, accepted, rejected with the reasons and the first rejected rows. Then point the
phases at them: ``data=files data.prompts_path=... data.demonstrations_path=...
feedback=files feedback.path=<OUT_DIR>/feedback_train.parquet``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alignray.core.artifacts import DEMONSTRATIONS_FILE, PROMPTS_FILE
from alignray.data.prompts import DEMONSTRATION_SCHEMA, PROMPT_SCHEMA
from alignray.data.tweets import is_heldout
from alignray.feedback.schema import write_feedback
from alignray.importers import CONVERTERS, ImportOptions, Imported, import_file
from alignray.data.validation import write_parquet

FEEDBACK_SPLIT_FILE = "feedback_{split}.parquet"
SUMMARY_FILE = "convert_summary.json"
ERRORS_SHOWN = 50
SPLIT_SALT = "convert-heldout:"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alignray convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--format", required=True, choices=sorted(CONVERTERS), help="the input's format family")
    p.add_argument("input", help=".jsonl, .jsonl.gz, .parquet, .csv, or a folder saved by datasets.save_to_disk")
    p.add_argument("out_dir")
    p.add_argument("--split", help="the split of a saved DatasetDict")
    p.add_argument("--heldout-fraction", type=float, default=0.1, help="share of prompts held out (by content hash)")
    p.add_argument("--annotator-id", default="imported", help="annotator_id of the human preferences")
    p.add_argument("--judge", default="gpt-4", help="annotator_id of UltraFeedback-style AI ratings")
    p.add_argument("--source", default="imported", help="the prompts' and demonstrations' source label")
    return p


def write_outputs(imported: Imported, out_dir: Path, heldout_fraction: float) -> dict:
    """The files, split by prompt text; returns the summary (also written as JSON)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Salted: the phases split their own inputs by the same hash (SFT's evaluation loss, the
    # reward model's held-out pairs); unsalted, this split would leave them no held-out rows.
    side = {p["prompt"]: "heldout" if is_heldout(SPLIT_SALT + p["prompt"], heldout_fraction) else "train"
            for p in imported.prompts}
    outputs = ((PROMPTS_FILE, imported.prompts, PROMPT_SCHEMA), (DEMONSTRATIONS_FILE, imported.demonstrations,
                DEMONSTRATION_SCHEMA), (FEEDBACK_SPLIT_FILE, imported.feedback, None))
    files = {}
    for pattern, rows, schema in outputs:
        if not rows:
            continue
        for split in ("train", "heldout"):
            path = out_dir / pattern.format(split=split)
            chosen = [row for row in rows if side[row["prompt"]] == split]
            write_parquet(chosen, path, schema) if schema else write_feedback(chosen, path)
            files[path.name] = len(chosen)
    summary = imported.report.counts(max_errors=ERRORS_SHOWN) | {"written": files}
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    options = ImportOptions(annotator_id=args.annotator_id, judge=args.judge, source_label=args.source)
    imported = import_file(args.input, args.format, options, args.split)
    summary = write_outputs(imported, Path(args.out_dir), args.heldout_fraction)
    print(imported.report.summary())
    print(json.dumps(summary["written"], indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
