"""What a reward model trains and is judged on: the feedback folder's training tables, the
held-out feedback, an ensemble member's share, the reference texts of the normalisation, and
the tables with every annotator kept."""
from __future__ import annotations

from pathlib import Path
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from alignray.core.artifacts import HELDOUT_FEEDBACK_FILE, PAIRS_FILE, POINTWISE_FILE
from alignray.data.validation import validate_table
from alignray.feedback.aggregate import PAIRS_SCHEMA, POINTWISE_SCHEMA, build_training_tables
from alignray.feedback.schema import read_feedback
from alignray.feedback.groups import heldout_prompt_rows

ENSEMBLE_DATA = ("all", "split")


def reference_texts(examples: pa.Table, size: int, seed: int) -> tuple[list[str], list[str]]:
    """Up to ``size`` distinct (prompt, response) texts of the training examples, drawn at
    random: the reference set whose raw rewards define the normalisation."""
    rows = examples.select(["prompt", "chosen", "rejected", "is_pair"]).to_pylist()
    texts = sorted({(r["prompt"], r["chosen"]) for r in rows}
                   | {(r["prompt"], r["rejected"]) for r in rows if r["is_pair"]})
    picked = np.random.default_rng(seed).permutation(len(texts))[:size]
    return [texts[i][0] for i in picked], [texts[i][1] for i in picked]


def member_examples(examples: pa.Table, member: int, members: int, data: str) -> pa.Table:
    """What ensemble member ``member`` of ``members`` trains on: every example ("all": the
    members differ by seed, so by head initialisation and order), or the examples of its
    share of the prompts ("split": each prompt goes to one member, by content hash)."""
    if data not in ENSEMBLE_DATA:
        raise ValueError(f"reward_model.ensemble_data must be one of {ENSEMBLE_DATA}, not {data!r}")
    if data == "all" or members == 1:
        return examples
    shares = [zlib.crc32(prompt.encode()) % members for prompt in examples.column("prompt").to_pylist()]
    return examples.filter(pa.array(np.asarray(shares) == member))


def member_folders(out_dir: Path, members: int) -> list[Path]:
    """Where each member trains: the phase folder itself for a single model (its model is
    ``<out>/model``), ``<out>/member-<i>/`` for an ensemble (assembled into ``<out>/model``)."""
    if members < 1:
        raise ValueError(f"reward_model.ensemble_size must be >= 1, not {members}")
    return [out_dir] if members == 1 else [out_dir / f"member-{i}" for i in range(members)]


def read_training_tables(feedback_dir: Path) -> tuple[pa.Table, pa.Table]:
    pairs, _ = validate_table(pq.read_table(feedback_dir / PAIRS_FILE), PAIRS_SCHEMA, str(feedback_dir / PAIRS_FILE))
    pointwise_path = feedback_dir / POINTWISE_FILE
    pointwise = (validate_table(pq.read_table(pointwise_path), POINTWISE_SCHEMA, str(pointwise_path))[0]
                 if pointwise_path.exists() else POINTWISE_SCHEMA.empty_table())
    return pairs, pointwise


def annotators_of(*tables: pa.Table) -> set[str]:
    return {a for table in tables for a in table.column("annotator_id").to_pylist() if a is not None}


def unfiltered_tables(feedback: pa.Table, pairs: pa.Table, pointwise: pa.Table) -> tuple[pa.Table, pa.Table] | None:
    """The training tables rebuilt from the raw feedback with every annotator at weight 1,
    or None when that changes nothing (nobody was excluded or down-weighted)."""
    everyone = build_training_tables(feedback, None)

    def extent(table):
        return table.num_rows, round(pc.sum(table.column("weight")).as_py() or 0.0, 6)

    if extent(everyone.pairs) == extent(pairs) and extent(everyone.pointwise) == extent(pointwise):
        return None
    return everyone.pairs, everyone.pointwise


def heldout_feedback_of(feedback_dir: Path, feedback: pa.Table | None, heldout_fraction: float) -> pa.Table | None:
    """The held-out feedback: the feedback phase's held-out file (simulated feedback), else
    the raw feedback's rows on the prompts held out from training (collected feedback)."""
    path = feedback_dir / HELDOUT_FEEDBACK_FILE
    if path.exists():
        return read_feedback(path)[0]
    if feedback is None:
        return None
    rows = heldout_prompt_rows(feedback, heldout_fraction)
    return rows if rows.num_rows else None
