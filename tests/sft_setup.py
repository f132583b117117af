"""The SFT settings the tests share (tests/test_sft.py, the session's one-worker SFT in
conftest.py, tests/test_model_families.py): a small demonstrations file and the app's config."""
from __future__ import annotations

import pyarrow.parquet as pq

from alignray.config import DataConfig
from alignray.data.prompts import prepare_embedded_data
from alignray.workflows.common import compose_app_config

# Ten global batches of 8 from ~500 demonstrations
STEPS, BATCH = 10, 8


def sft_config(workdir, demonstrations, *overrides):
    return compose_app_config([
        f"workdir={workdir}", "data=files", f"data.demonstrations_path={demonstrations}",
        "data.heldout_fraction=0.2", f"sft.max_steps={STEPS}", f"sft.batch_size={BATCH}",
        "sft.warmup_steps=2", "sft.lr=1e-3", "sft.eval_every=5", "sft.checkpoint_every=4",
        "sft.log_every=1", "sft.deepspeed.zero_stage=2", *overrides])


def demonstrations_file(folder, rows: int):
    """The first ``rows`` embedded demonstrations in one file (the app splits off the held-out rows)."""
    train = pq.read_table(prepare_embedded_data(DataConfig(), folder)["demonstrations_train"])
    path = folder / "demonstrations.parquet"
    pq.write_table(train.slice(0, rows), path)
    return path
