"""A judge taught by people (alignray/judges/teaching.py, workflows/judge.py): the gold set spends
exactly its budget, each label teaches both orders in the text labelling reads, the loss reads
only the two answer tokens; a real run of the phase (Ray Train + DeepSpeed, the Ray Data
labeller before and after) raises the tiny model's agreement on human pairs it was not taught
on, read as a ``local`` judge; and the taught judge as PPO's online reward."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from alignray.feedback.rlaif import ANSWER_PREFIX, answer_token_ids
from alignray.feedback.schema import feedback_table, pairwise_feedback
from alignray.judges.rubric import load_rubric
from alignray.judges.teaching import (collate_teaching_rows, gold_feedback, gold_set, teaching_rows,
                                      tokenize_teaching_rows, verdict_loss)
from alignray.models.modeling import load_causal_lm, load_tokenizer
from alignray.workflows.common import compose_app_config

POSITIVE = ["good", "great", "love", "happy", "nice", "best"]
NEGATIVE = ["bad", "hate", "sad", "worst", "awful", "angry"]


def people_feedback(items: int, seed: int = 0, annotators: int = 3) -> pa.Table:
    """Pairwise votes of people who prefer the reply of positive words: one reply of each kind
    per item, shown in a random order; each annotator votes on every item."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(items):
        good, bad = " ".join(rng.choice(POSITIVE, 2)), " ".join(rng.choice(NEGATIVE, 2))
        a, b, winner = (good, bad, "a") if rng.random() < 0.5 else (bad, good, "b")
        rows += [pairwise_feedback(f"day {i}", a, b, winner, f"person{k}") for k in range(annotators)]
    rows.append(pairwise_feedback("day 0", "x", "y", "a", "judge", source="ai"))  # never gold: not a person
    return feedback_table(rows)


def test_gold_set_spends_the_budget_one_label_per_item():
    feedback = people_feedback(40)
    gold = gold_set(feedback, 25, seed=1)
    items = list(zip(gold.column("prompt").to_pylist(), gold.column("response_a").to_pylist()))
    assert gold.num_rows == 25 == len(set(items))
    assert set(gold.column("annotator_id").to_pylist()) <= {"person0", "person1", "person2"}
    assert gold.to_pylist() == gold_set(feedback, 25, seed=1).to_pylist()  # the seed decides
    assert gold.to_pylist() != gold_set(feedback, 25, seed=2).to_pylist()
    # the same votes in the feedback's schema, for a reward model on the same budget
    assert gold_feedback(feedback, gold).num_rows == 25
    with pytest.raises(ValueError, match="needs as many pairwise items; the feedback has 40"):
        gold_set(feedback, 41, seed=0)


def test_each_label_teaches_both_orders():
    gold = pa.table({"prompt": ["p", "q"], "response_a": ["a1", "a2"], "response_b": ["b1", "b2"],
                     "winner": ["b", "tie"], "annotator_id": ["x", "y"]})
    rows = teaching_rows(gold).to_pylist()
    assert [(r["first"], r["second"], r["target"]) for r in rows] == [
        ("a1", "b1", 0.0), ("b1", "a1", 1.0), ("a2", "b2", 0.5), ("b2", "a2", 0.5)]


def test_rows_are_the_labelling_text_and_the_loss_reads_only_the_answer_tokens(tiny_base_model):
    tokenizer = load_tokenizer(tiny_base_model, padding_side="right")
    gold = gold_set(people_feedback(4), 4, seed=0)
    tokens = tokenize_teaching_rows(teaching_rows(gold), tokenizer, load_rubric("sentiment"), 16, 64)
    first_text = tokenizer.decode(tokens["input_ids"][0][:tokens["attention_mask"][0].sum()])
    assert first_text.endswith(ANSWER_PREFIX) and tokens["input_ids"].shape[1] <= 64
    model = load_causal_lm(tiny_base_model, device=torch.device("cpu")).eval()
    answer_ids = answer_token_ids(tokenizer)
    batch = collate_teaching_rows(tokens, torch.device("cpu"))
    with torch.no_grad():
        loss, sums = verdict_loss(model, batch, answer_ids)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    last = batch["attention_mask"].sum(1) - 1
    margin = logits[torch.arange(len(last)), last][:, answer_ids[0]] - logits[torch.arange(len(last)), last][:, answer_ids[1]]
    target = batch["target"]
    expected = -(target * torch.nn.functional.logsigmoid(margin) + (1 - target) * torch.nn.functional.logsigmoid(-margin))
    assert float(loss) == pytest.approx(float(expected.sum()), rel=1e-5)
    assert sums["units"] == 8 and sums["accuracy"] == float(((margin > 0) == (target > 0.5)).sum())


def heldout_pairs(items: int, seed: int) -> pd.DataFrame:
    """The held-out panel's pairs, in the feedback phase's heldout_pairs.parquet layout."""
    table = people_feedback(items, seed, annotators=1).to_pandas()
    table = table[table["source"] != "ai"]
    share = (table["winner"] == "a").astype(float)
    return pd.DataFrame({"prompt": table["prompt"], "response_a": table["responses"].str[0],
                         "response_b": table["responses"].str[1], "heldout_preference": share,
                         "train_preference": share, "heldout_votes": 5, "train_votes": 5})


@pytest.fixture(scope="module")
def taught_judge(ray_cluster, tiny_base_model, tmp_path_factory):
    from alignray.workflows.judge import run_judge

    tmp = tmp_path_factory.mktemp("judge")
    folder = tmp / "feedback"
    folder.mkdir()
    import pyarrow.parquet as pq
    pq.write_table(people_feedback(200), folder / "feedback.parquet")
    heldout_pairs(60, seed=7).to_parquet(folder / "heldout_pairs.parquet")
    cfg = compose_app_config([
        f"workdir={tmp / 'runs'}", "cluster.num_workers=1", "cluster.cpus_per_worker=1",
        "teach_judge.labels=120", "teach_judge.calibration_pairs=60", "teach_judge.max_reply_tokens=8",
        "teach_judge.batch_size=16", "teach_judge.epochs=6", "teach_judge.lr=2e-3", "teach_judge.warmup_steps=0",
        "teach_judge.log_every=5", "teach_judge.deepspeed.zero_stage=0"])
    return run_judge(cfg, str(tiny_base_model), folder), folder


def test_teaching_raises_agreement_on_pairs_it_was_not_taught(taught_judge):
    """Before and after teaching the phase labels the untaught pairs on the feedback phase's
    Ray Data pool (actors/ai_labeller.py, what ``feedback.ai_judge.kind=local`` runs): the
    taught folder is read there as a local judge."""
    out, _ = taught_judge
    evaluation = json.loads((out / "eval.json").read_text())
    before, after = evaluation["untaught"], evaluation["taught"]
    print(f"agreement on untaught pairs {before['calibration']['agreement']:.3f} -> "
          f"{after['calibration']['agreement']:.3f}; held-out panel "
          f"{before['heldout_panel']['agreement_with_heldout_raters']:.3f} -> "
          f"{after['heldout_panel']['agreement_with_heldout_raters']:.3f}")
    assert after["calibration"]["items"] == 60 and evaluation["labels"] == 120
    assert after["calibration"]["agreement"] >= 0.8 > before["calibration"]["agreement"]
    assert after["heldout_panel"]["agreement_with_heldout_raters"] > before["heldout_panel"]["agreement_with_heldout_raters"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heldout_loss"] < summary["heldout_loss_start"] and summary["heldout_loss_start"] > math.log(2) / 2
    for name in ("model/config.json", "model/README.md", "loss.png", "metrics.jsonl", "DONE"):
        assert (out / name).exists(), name


def test_the_taught_judge_is_ppos_online_reward_with_sft_answers_generated_once(taught_judge, tiny_base_model,
                                                                                 prompts_path, tmp_path):
    """``ppo.reward.kind=judge``: two PPO steps over the same 8 prompts, each response judged
    against the SFT model's answer to its prompt, which is sampled once; verdicts in the cache."""
    from alignray.config import typed_config
    from alignray.core.metrics import read_metrics
    from alignray.workflows.ppo import run_ppo
    from tests.test_ppo_actors import small_config

    out, _ = taught_judge
    cfg = small_config(tiny_base_model, prompts_path)
    cfg.workdir, cfg.ppo.steps, cfg.ppo.max_prompts, cfg.ppo.monitor.every = str(tmp_path), 2, 8, 0
    cfg.ppo.reward.kind, cfg.ppo.reward.judge.model_path = "judge", str(out / "model")
    cfg.ppo.reward.judge.max_reply_tokens = 8
    run = run_ppo(typed_config(cfg), str(tiny_base_model), None)
    records = read_metrics(run / "metrics.jsonl")
    assert len(records) == 2 and all(math.isfinite(r["reward_raw"]) for r in records)
    stats = json.loads((run / "summary.json").read_text())["reward_scorer"]
    assert stats["scored"] == 16 and stats["reference_answers"] == 8 and stats["not_judged"] == 0
    assert (run / "judge-verdicts.sqlite").exists()
