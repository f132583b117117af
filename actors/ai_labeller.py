"""The RLAIF labeller (an AI annotator giving feedback labels, not the evaluation's judge) as
Ray Data batch inference: an actor pool, each actor holding one labelling model.

    verdicts = label_with_actor_pool(items, model_path, actors=2, batch_size=16, use_gpu=False)

``items`` are dicts with ``item`` (an id to put the answers back in order), ``prompt``,
``response_a`` and ``response_b``. Each actor loads the model once (one GPU each when
``use_gpu``; on a CPU machine the device comes from torch, see alignray.models.modeling) and adds
``preference_a``, ``position_bias``, the margins of both orders (``margin_ab``, ``margin_ba``) and
``clipped_texts`` to every batch (alignray.feedback.rlaif), asking the question of ``rubric`` (a
shipped rubric's name or a rubric file, alignray/judges/rubric.py).
"""
from __future__ import annotations

import logging

import numpy as np
import ray
import ray.data
from ray.data import ActorPoolStrategy

from alignray.actors.runtime import wait_for_capacity
from alignray.models.generation import disable_dropout
from alignray.models.modeling import load_causal_lm, load_tokenizer
from alignray.feedback.rlaif import judge_pairs
from alignray.judges.rubric import load_rubric
from alignray.judges.verdicts import margin_answer

log = logging.getLogger(__name__)


class AILabeller:
    """A `map_batches` callable class: constructed once per actor of the pool."""

    def __init__(self, model_path: str, batch_size: int = 16, max_reply_tokens: int = 64, rubric: str = "sentiment"):
        self.model = disable_dropout(load_causal_lm(model_path)).eval()
        self.tokenizer = load_tokenizer(model_path)
        self.batch_size, self.max_reply_tokens, self.rubric = batch_size, max_reply_tokens, load_rubric(rubric)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        verdicts = judge_pairs(self.model, self.tokenizer, batch["prompt"].tolist(), batch["response_a"].tolist(),
                               batch["response_b"].tolist(), self.batch_size, self.max_reply_tokens, self.rubric)
        return dict(batch) | verdicts


def label_with_actor_pool(items: list[dict], model_path: str, *, actors: int = 1, batch_size: int = 16,
                          max_reply_tokens: int = 64, use_gpu: bool = False, rubric: str = "sentiment",
                          placement_timeout_s: float = 120.0) -> list[dict]:
    """Label every item on a pool of ``actors`` labellers; the items come back in their order,
    each with its verdict. Needs a connected Ray."""
    if not items:
        return []
    if use_gpu:  # Ray Data waits for its actors without end; stop instead with what is missing
        wait_for_capacity(f"{actors} AI labeller actors", [{"GPU": 1.0}] * actors, placement_timeout_s)
    # from_items makes few blocks: split them so every actor of the pool gets work.
    blocks = max(actors, min(64, -(-len(items) // batch_size)))
    verdicts = ray.data.from_items(items).repartition(blocks).map_batches(
        AILabeller, fn_constructor_kwargs={"model_path": str(model_path), "batch_size": batch_size,
                                              "max_reply_tokens": max_reply_tokens, "rubric": rubric},
        batch_size=batch_size, batch_format="numpy", compute=ActorPoolStrategy(size=actors),
        num_gpus=1 if use_gpu else 0)
    rows = sorted(verdicts.take_all(), key=lambda row: row["item"])
    if len(rows) != len(items):
        raise RuntimeError(f"the AI labeller returned {len(rows)} verdicts for {len(items)} items")
    log.info("AI labeller (%s, %d actors) labelled %d pairs", model_path, actors, len(rows))
    return rows


def label_pairs(pairs, model_path: str, **pool_settings) -> list[dict]:
    """:func:`label_with_actor_pool` of ``(prompt, response_a, response_b)`` tuples, in their order."""
    return label_with_actor_pool([{"item": i, "prompt": p, "response_a": a, "response_b": b}
                                  for i, (p, a, b) in enumerate(pairs)], model_path, **pool_settings)


def local_pair_asker(model_path: str, **pool_settings):
    """A local judge as alignray.judges.forms asks one: ordered questions ``(prompt, first,
    second)`` judged on the actor pool, each pair once for both of its orders."""
    def ask(questions, on_answer):
        index: dict[tuple[str, str, str], int] = {}
        for prompt, first, second in questions:
            if (prompt, second, first) not in index:
                index.setdefault((prompt, first, second), len(index))
        rows = label_pairs(index, model_path, **pool_settings)  # in index order
        answers = []
        for j, (prompt, first, second) in enumerate(questions):
            forward = (prompt, first, second) in index
            row = rows[index[(prompt, first, second)] if forward else index[(prompt, second, first)]]
            answers.append(margin_answer(row["margin_ab" if forward else "margin_ba"]))
            on_answer(j, answers[-1])
        return answers
    return ask
