"""Train / held-out splits of example tables, by prompt (content hash, stable across runs), with
the rows numbered in training order as the shared training loop requires."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from alignray.data.tweets import is_heldout


def training_order(prompts: list[str], seed: int, by_prompt: bool) -> np.ndarray:
    """The rows' training order: shuffled; with ``by_prompt``, the prompts shuffled and each
    prompt's rows together (shuffled among themselves), so a batch holds a few prompts whole
    and computes each of their responses once for all its pairs and targets."""
    rng = np.random.default_rng(seed)
    if not by_prompt:
        return rng.permutation(len(prompts))
    _, prompt_of_row = np.unique(np.asarray(prompts, dtype=object), return_inverse=True)
    prompt_rank = rng.permutation(int(prompt_of_row.max()) + 1 if len(prompts) else 0)[prompt_of_row]
    return np.lexsort((rng.random(len(prompts)), prompt_rank))


def split_examples(examples: pa.Table, heldout_fraction: float, seed: int,
                   by_prompt: bool = False) -> dict[str, pa.Table]:
    """Train / held-out by prompt (content hash, stable across runs), the train rows in
    :func:`training_order`; each row numbered by ``example_id`` in training order, as the
    loop requires."""
    heldout = np.array([is_heldout(p, heldout_fraction) for p in examples.column("prompt").to_pylist()], dtype=bool)
    tables = {"train": examples.filter(pa.array(~heldout)), "heldout": examples.filter(pa.array(heldout))}
    order = training_order(tables["train"].column("prompt").to_pylist(), seed, by_prompt)
    tables["train"] = tables["train"].take(pa.array(order))
    for split, table in tables.items():
        if table.num_rows == 0:
            raise ValueError(f"no {split} rows: {examples.num_rows} examples, heldout_fraction {heldout_fraction}")
        tables[split] = table.append_column("example_id", pa.array(np.arange(table.num_rows), pa.int64()))
    return tables
