"""What the Ray Train loop (actors/trainer.py) needs to train a reward model: the
training rows, the model builder, the collate function and the loss (pure: no Ray).

Pairs (chosen, rejected) and pointwise targets (thumbs, quality scores, Elo) travel as one
table of EXAMPLE_SCHEMA, so one shuffled stream feeds both losses and their mix follows
the tables' sizes. Text is tokenised in the collate function with the reward model's own
tokenizer, exactly as :func:`alignray.reward.model.encode_texts` does when scoring.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow as pa
import torch
from transformers import PreTrainedModel

from alignray.config.lora import LoRAConfig
from alignray.models.lora import with_lora
from alignray.reward.losses import reward_loss_sums
from alignray.reward.model import encode_texts, init_reward_model, reward_logits, reward_tokenizer

EXAMPLE_SCHEMA = pa.schema([
    pa.field("is_pair", pa.bool_(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("chosen", pa.string(), nullable=False),  # the response, for a pointwise example
    pa.field("rejected", pa.string(), nullable=False),  # "" for a pointwise example
    pa.field("weight", pa.float64(), nullable=False),
    pa.field("margin", pa.float64(), nullable=False),  # 0 for a pointwise example
    pa.field("target", pa.float64(), nullable=False),  # 0 for a pair
])
VOTES = ("each", "merged", "majority")


def training_examples(pairs: pa.Table, pointwise: pa.Table, votes: str = "each",
                      keep_margins: bool = True) -> pa.Table:
    """The feedback's ``pairs`` and ``pointwise`` tables as one table of EXAMPLE_SCHEMA, one
    row per vote (``votes="each"``) or with votes merged (:func:`merge_votes`)."""
    if votes not in VOTES:
        raise ValueError(f"reward_model.votes must be one of {VOTES}, not {votes!r}")
    n_pairs, n_points = pairs.num_rows, pointwise.num_rows
    examples = pa.Table.from_pydict({
        "is_pair": [True] * n_pairs + [False] * n_points,
        "prompt": pairs.column("prompt").to_pylist() + pointwise.column("prompt").to_pylist(),
        "chosen": pairs.column("chosen").to_pylist() + pointwise.column("response").to_pylist(),
        "rejected": pairs.column("rejected").to_pylist() + [""] * n_points,
        "weight": pairs.column("weight").to_pylist() + pointwise.column("weight").to_pylist(),
        "margin": pairs.column("margin").to_pylist() + [0.0] * n_points,
        "target": [0.0] * n_pairs + pointwise.column("target").to_pylist(),
    }, schema=EXAMPLE_SCHEMA)
    return examples if votes == "each" else merge_votes(examples, majority=votes == "majority",
                                                        keep_margins=keep_margins)


def merge_votes(examples: pa.Table, majority: bool = False, keep_margins: bool = True) -> pa.Table:
    """Fewer rows for the same feedback. Both losses are linear in the vote, so rows that
    differ only in weight (and, pointwise, target) sum into one: identical pairs into one
    pair of their total weight; a text's pointwise rows into one of their total weight and
    weighted-mean target. The loss of the merged table equals the loss of the votes, and a
    step's rows carry many more votes (the embedded default has about ten pair votes per pair
    of texts and ten pointwise targets per text). Margins stay apart (``keep_margins``) unless the loss
    ignores them. ``majority``: one pair per unordered pair of texts instead, the side with
    more weight as chosen, weight 1 (the vote share and any margin dropped; even splits
    left out)."""
    rows = examples.to_pylist()
    merged: dict[tuple, dict] = {}
    for row in rows:
        if not row["is_pair"]:
            key = (False, row["prompt"], row["chosen"])
        elif majority:
            key = (True, row["prompt"], *sorted((row["chosen"], row["rejected"])))
        else:
            key = (True, row["prompt"], row["chosen"], row["rejected"], row["margin"] if keep_margins else 0.0)
        into = merged.setdefault(key, row | {"weight": 0.0, "target": 0.0, "lead": 0.0,
                                             "margin": row["margin"] if keep_margins else 0.0})
        into["weight"] += row["weight"]
        into["target"] += row["weight"] * row["target"]
        into["lead"] += row["weight"] if row["chosen"] == key[2] else -row["weight"]
    kept = []
    for key, row in merged.items():
        lead = row.pop("lead")
        if not row["is_pair"]:
            kept.append(row | {"target": row["target"] / row["weight"] if row["weight"] else 0.0})
        elif not majority:
            kept.append(row)
        elif abs(lead) > 1e-9:
            chosen, rejected = (key[2], key[3]) if lead > 0 else (key[3], key[2])
            kept.append(row | {"chosen": chosen, "rejected": rejected, "weight": 1.0, "margin": 0.0})
    return pa.Table.from_pylist(kept, schema=EXAMPLE_SCHEMA)


def build_reward_model(backbone_path: str, max_length: int, disable_dropout: bool = True,
                       freeze_backbone: bool = False, pooling: str = "last",
                       lora: LoRAConfig = LoRAConfig()) -> PreTrainedModel:
    """A backbone with a fresh scalar head. Dropout off by default: with it, the two
    rewards of a pair are computed by two different random sub-networks, which adds noise
    to their difference, the only thing the Bradley-Terry loss sees. ``freeze_backbone``
    leaves only the head trainable (the optimizer takes trainable parameters only); LoRA
    (``reward_model.lora``) trains adapters and the whole head."""
    if freeze_backbone and lora.enabled:
        raise ValueError("reward_model.freeze_backbone and reward_model.lora exclude each other: pick one")
    model, _ = init_reward_model(backbone_path, max_length, pooling=pooling)
    if disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if freeze_backbone:
        model.base_model.requires_grad_(False)
    return with_lora(model, lora, "SEQ_CLS")


@lru_cache(maxsize=4)
def _cached_tokenizer(path: str):
    return reward_tokenizer(path)


def collate_reward_rows(rows: dict[str, np.ndarray], device: torch.device, tokenizer_path: str,
                        max_length: int) -> dict[str, torch.Tensor]:
    """One padded batch of the rows' distinct texts (a text in several rows, such as a
    response in several pairs of its prompt, is computed once), where each pair's chosen
    and rejected response and each pointwise response sit in it; and the weights, margins
    and targets."""
    pair = rows["is_pair"].astype(bool)
    texts = ([(str(p), str(r)) for p, r in zip(rows["prompt"][pair], rows["chosen"][pair])]
             + [(str(p), str(r)) for p, r in zip(rows["prompt"][pair], rows["rejected"][pair])]
             + [(str(p), str(r)) for p, r in zip(rows["prompt"][~pair], rows["chosen"][~pair])])
    distinct = list(dict.fromkeys(texts))
    position = {text: i for i, text in enumerate(distinct)}
    index = torch.as_tensor([position[text] for text in texts], dtype=torch.long)
    encoded = encode_texts(_cached_tokenizer(tokenizer_path), [p for p, _ in distinct], [r for _, r in distinct],
                           max_length)
    n = int(pair.sum())

    def column(name, mask):
        return torch.as_tensor(np.asarray(rows[name][mask], dtype=np.float32))

    batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
             "chosen_index": index[:n], "rejected_index": index[n:2 * n], "point_index": index[2 * n:],
             "pair_margins": column("margin", pair), "pair_weights": column("weight", pair),
             "point_targets": column("target", ~pair), "point_weights": column("weight", ~pair)}
    return {name: tensor.to(device) for name, tensor in batch.items()}


def reward_batch_loss(model, batch: dict[str, torch.Tensor], margin_scale: float,
                      pointwise_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """One forward over the batch's distinct texts, then :func:`reward_loss_sums`."""
    rewards = reward_logits(model, batch["input_ids"], batch["attention_mask"])
    return reward_loss_sums(rewards[batch["chosen_index"]], rewards[batch["rejected_index"]], batch["pair_margins"],
                            batch["pair_weights"], rewards[batch["point_index"]], batch["point_targets"],
                            batch["point_weights"], margin_scale=margin_scale, pointwise_weight=pointwise_weight)
