"""Teaching a judge with a human budget (pure: no Ray; the training runs on the shared Ray Train
loop, workflows/judge.py).

A small instruct model asked the rubric's pairwise question is nearly indifferent on this
data; JudgeLM and Prometheus are judges fine-tuned on labelled verdicts. Here the labels are a
**gold set**: ``labels`` pairwise items people judged, one person's vote each (a label is what
is paid for), drawn with a seed. Each item teaches two rows, one per order, in exactly the text
the judge reads when it labels (alignray.feedback.rlaif.fitted_judge_texts: the same rubric,
the same clipping), with the answer to learn: P(first reply better) = 1 for the winner shown
first, 0 for it shown second, 0.5 for a tie.

The loss reads only the two answer tokens at the last position: the cross-entropy of the
two-way softmax over their logits against that target. That trains exactly what labelling
reads, the margin ``log P(A) - log P(B)`` (the full-vocabulary normaliser cancels in it), and
leaves every other token's prediction alone.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from alignray.feedback.rlaif import fitted_judge_texts
from alignray.judges.rubric import Rubric

WINNER_TARGET = {"a": 1.0, "b": 0.0, "tie": 0.5}  # P(reply a better) that a vote teaches
TOKEN_COLUMNS = ("input_ids", "attention_mask")


def human_pairwise_rows(feedback: pa.Table) -> pa.Table:
    """People's pairwise votes (not the AI judge's) that name a winner or a tie."""
    rows = feedback.filter(pc.and_(pc.equal(feedback.column("kind"), "pairwise"),
                                   pc.not_equal(feedback.column("source"), "ai")))
    return rows.filter(pc.is_in(rows.column("winner"), value_set=pa.array(list(WINNER_TARGET))))


def gold_set(feedback: pa.Table, labels: int, seed: int) -> pa.Table:
    """``labels`` human labels on as many distinct pairwise items: the items drawn with ``seed``
    and one of each item's votes drawn with it. Columns ``prompt``, ``response_a``,
    ``response_b``, ``winner``, ``annotator_id``. Fewer items than ``labels`` is an error."""
    votes = human_pairwise_rows(feedback).select(["prompt", "responses", "winner", "annotator_id"]).to_pylist()
    by_item: dict[tuple[str, str, str], list[dict]] = {}
    for vote in votes:
        by_item.setdefault((vote["prompt"], *vote["responses"]), []).append(vote)
    items = sorted(by_item)
    if labels > len(items):
        raise ValueError(f"a gold set of {labels} labels needs as many pairwise items; the feedback has {len(items)}")
    rng = np.random.default_rng(seed)
    chosen = [items[i] for i in sorted(rng.permutation(len(items))[:labels])]
    picked = [by_item[item][rng.integers(len(by_item[item]))] for item in chosen]
    return pa.table({"prompt": [p for p, _, _ in chosen], "response_a": [a for _, a, _ in chosen],
                     "response_b": [b for _, _, b in chosen], "winner": [v["winner"] for v in picked],
                     "annotator_id": [v["annotator_id"] for v in picked]})


def gold_feedback(feedback: pa.Table, gold: pa.Table) -> pa.Table:
    """The feedback rows the gold set's labels are (one row per label), for a reward model
    trained on the same budget: the same votes in the feedback's own schema."""
    wanted = set(zip(gold.column("prompt").to_pylist(), gold.column("response_a").to_pylist(),
                     gold.column("response_b").to_pylist(), gold.column("annotator_id").to_pylist()))
    rows = human_pairwise_rows(feedback)
    keep = [(r["prompt"], *r["responses"], r["annotator_id"]) in wanted
            for r in rows.select(["prompt", "responses", "annotator_id"]).to_pylist()]
    return rows.filter(pa.array(keep, pa.bool_()))


def votes_on(feedback: pa.Table, items) -> int:
    """People's pairwise votes on ``items`` ((prompt, response_a, response_b)): what they cost."""
    wanted = set(items)
    return sum((r["prompt"], *r["responses"]) in wanted
               for r in human_pairwise_rows(feedback).select(["prompt", "responses"]).to_pylist())


def teaching_rows(gold: pa.Table) -> pa.Table:
    """Two rows per label, one per order: ``prompt``, ``first``, ``second``, ``target`` (P(first
    better)), with the two orders of an item next to each other."""
    columns: dict[str, list] = {"prompt": [], "first": [], "second": [], "target": []}
    for row in gold.to_pylist():
        p_a = WINNER_TARGET[row["winner"]]
        for first, second, target in ((row["response_a"], row["response_b"], p_a),
                                      (row["response_b"], row["response_a"], 1.0 - p_a)):
            for name, value in zip(columns, (row["prompt"], first, second, target)):
                columns[name].append(value)
    return pa.table(columns)


def tokenize_teaching_rows(rows: pa.Table, tokenizer, rubric: Rubric, max_reply_tokens: int,
                           limit: int | None) -> dict[str, np.ndarray]:
    """Teaching rows as the judge's texts (``limit``: the judge's positions), tokenised and
    right-padded to the longest: ``input_ids``, ``attention_mask``, ``target`` and
    ``example_id`` (the rows' order)."""
    texts = [fitted_judge_texts(tokenizer, p, a, b, limit, max_reply_tokens, rubric)[0]
             for p, a, b in zip(*(rows.column(c).to_pylist() for c in ("prompt", "first", "second")), strict=True)]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    width = max(map(len, ids), default=1)
    out = {"input_ids": np.full((len(ids), width), tokenizer.pad_token_id, dtype=np.int32),
           "attention_mask": np.zeros((len(ids), width), dtype=np.int8)}
    for i, row in enumerate(ids):
        out["input_ids"][i, :len(row)], out["attention_mask"][i, :len(row)] = row, 1
    return out | {"target": np.asarray(rows.column("target").to_pylist(), dtype=np.float32),
                  "example_id": np.arange(len(ids), dtype=np.int64)}


def collate_teaching_rows(rows: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Tensors on ``device``, cut to the batch's longest row."""
    length = int(rows["attention_mask"].sum(axis=1).max())
    batch = {name: torch.as_tensor(rows[name][:, :length], dtype=torch.long, device=device) for name in TOKEN_COLUMNS}
    return batch | {"target": torch.as_tensor(rows["target"], dtype=torch.float32, device=device)}


def answer_logits(model, batch: dict[str, torch.Tensor], answer_ids: list[int]) -> torch.Tensor:
    """``[rows, 2]`` logits of the answer tokens at each row's last real position."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    last = batch["attention_mask"].sum(dim=1) - 1
    return logits[torch.arange(logits.shape[0], device=logits.device), last][:, answer_ids].float()


def verdict_loss(model, batch: dict[str, torch.Tensor], answer_ids: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
    """The two-way cross-entropy against P(first better), summed over rows; ``accuracy`` counts
    a row right when the margin leans the target's way (a tie target counts a half)."""
    logprobs = F.log_softmax(answer_logits(model, batch, answer_ids), dim=-1)
    target = batch["target"]
    loss = -(target * logprobs[:, 0] + (1 - target) * logprobs[:, 1])
    leans_first = (logprobs[:, 0] > logprobs[:, 1]).float()
    right = torch.where(target == 0.5, torch.full_like(target, 0.5), (leans_first == (target > 0.5).float()).float())
    return loss.sum(), {"units": float(len(target)), "tokens": float(batch["attention_mask"].sum()),
                        "accuracy": float(right.sum())}
