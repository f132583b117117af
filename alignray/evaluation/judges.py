"""The evaluation's judges, chosen by ``eval.judge`` (pure: no Ray, no Hydra).

Three judges score answers, higher is preferred, and the evaluation reports the policy's
win-rate over the SFT model's answers to the same held-out prompts:

- ``annotators``: the held-out panel (simulated annotators 6-10, who gave no training
  feedback); it reads tweets, so it judges the embedded default only;
- ``http``: any reward endpoint that answers alignray's ``/v1/score``
  (alignray.reward.client.RewardClient), e.g. a gold reward model served by alignray;
- ``gold_rm``: a reward model folder trained on a held-out split of the user's feedback
  that PPO never saw, the protocol of Gao, Schulman and Hilton, "Scaling Laws for Reward
  Model Overoptimization" (2022).

The fourth, ``pairs``, scores no answers: on the user's held-out preference pairs it measures
the implicit-reward accuracy of DPO's evaluation, the share of pairs where
``log pi(chosen) - log pi_sft(chosen) > log pi(rejected) - log pi_sft(rejected)``. A pair
whose two sides are equal (the policy is the SFT model) counts one half, as a tie does in a
win-rate. It is an accuracy, not a win-rate: it says whether training moved the policy
towards what people preferred, not whether its answers are better.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from alignray.evaluation.compare import IMPLICIT_REWARD_ACCURACY, WIN_RATE, bootstrap_ci
from alignray.feedback.aggregate import preference_pairs
from alignray.feedback.schema import read_feedback
from alignray.feedback.simulated import HELD_OUT_JUDGE_RATERS, judge_scores
from alignray.models.generation import token_logprobs
from alignray.ppo import masked_sum
from alignray.sft.training import collate_token_rows, tokenize_demonstrations

JUDGES = ("auto", "annotators", "http", "gold_rm", "pairs")
# The setting each judge needs, under eval.
REQUIRED_SETTING = {"http": "judge_url", "gold_rm": "gold_reward_model_path", "pairs": "pairs_path"}
BATCH = 32

Scorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def resolve_judge(eval_cfg, data_source: str) -> str:
    """The judge ``eval.judge`` names, checked: ``auto`` is the panel on the embedded
    default, and on other data a choice is required; the panel judges the embedded default
    only; each other judge needs its setting."""
    kind = eval_cfg.judge
    if kind not in JUDGES:
        raise ValueError(f"eval.judge must be one of {JUDGES}, not {kind!r}")
    embedded = data_source == "embedded"
    choose = ("set eval.judge to http (with eval.judge_url), gold_rm (with "
              "eval.gold_reward_model_path) or pairs (with eval.pairs_path)")
    if kind == "auto":
        if not embedded:
            raise ValueError(f"eval.judge=auto is the held-out annotators, who judge only the embedded "
                             f"default's tweets; on your own data (data.source={data_source}) {choose}")
        return "annotators"
    if kind == "annotators" and not embedded:
        raise ValueError(f"eval.judge=annotators: the held-out annotators judge only the embedded default's "
                         f"tweets, not data.source={data_source}; {choose}")
    setting = REQUIRED_SETTING.get(kind)
    if setting and not getattr(eval_cfg, setting):
        raise ValueError(f"eval.judge={kind} needs eval.{setting}")
    return kind


def metric_of(kind: str) -> str:
    """What a judge's figure is."""
    return IMPLICIT_REWARD_ACCURACY if kind == "pairs" else WIN_RATE


def describe(kind: str, eval_cfg) -> str:
    """The judge in words, for eval.json and the report."""
    if kind == "annotators":
        return f"the mean of the held-out annotators {HELD_OUT_JUDGE_RATERS[0]}-{HELD_OUT_JUDGE_RATERS[-1]}"
    if kind == "http":
        return f"reward endpoint {eval_cfg.judge_url}"
    if kind == "gold_rm":
        return f"gold reward model {eval_cfg.gold_reward_model_path} (trained on held-out feedback)"
    return f"the held-out preference pairs in {eval_cfg.pairs_path}"


def make_scorer(kind: str, eval_cfg) -> Scorer:
    """A judge that scores answers: ``(prompts, answers) -> scores``, higher is preferred."""
    if kind == "annotators":
        return lambda prompts, answers: judge_scores(answers, HELD_OUT_JUDGE_RATERS)
    if kind == "http":
        from alignray.reward.client import RewardClient
        client = RewardClient(eval_cfg.judge_url)
        return lambda prompts, answers: np.asarray(client.score(prompts, answers), dtype=float)
    if kind == "gold_rm":
        from alignray.reward.model import load_reward_model
        gold = load_reward_model(eval_cfg.gold_reward_model_path, device="cpu")
        return lambda prompts, answers: gold.score(prompts, answers).double().numpy()
    raise ValueError(f"the {kind!r} judge scores no answers")


@dataclass(frozen=True)
class PreferencePairs:
    prompts: list[str]
    conversations: list[list[dict] | None]
    chosen: list[str]
    rejected: list[str]


def read_preference_pairs(path: str) -> PreferencePairs:
    """Chosen and rejected responses from a pairs table (``prompt``, ``chosen``, ``rejected``)
    or a feedback file: pairwise rows without the ties (they state no preference) and
    rankings expanded into their pairs (alignray.feedback.aggregate); each pair counts once.
    A feedback file's multi-turn prompts keep their turns."""
    names = set(pq.read_schema(path).names)
    if names & {"chosen", "rejected"}:
        missing = sorted({"prompt", "chosen", "rejected"} - names)
        if missing:
            raise ValueError(f"{path}: a pairs table needs the columns prompt, chosen, rejected; {missing} missing")
        table = pq.read_table(path, columns=["prompt", "chosen", "rejected"])
        turns = {}
    else:
        feedback, _ = read_feedback(path, strict=False)
        feedback = feedback.filter(np.asarray([w != "tie" for w in feedback.column("winner").to_pylist()]))
        table = preference_pairs(feedback)
        turns = {p: c for p, c in zip(feedback.column("prompt").to_pylist(),
                                      feedback.column("conversation").to_pylist()) if c}
    if table.num_rows == 0:
        raise ValueError(f"{path} holds no preference pairs (ties and thumbs or ratings give none)")
    prompts = table.column("prompt").to_pylist()
    return PreferencePairs(prompts, [turns.get(p) for p in prompts], table.column("chosen").to_pylist(),
                           table.column("rejected").to_pylist())


@torch.no_grad()
def response_logprobs(model, tokenizer, prompts: Sequence[str], conversations, responses: Sequence[str],
                      max_prompt_tokens: int, max_response_tokens: int) -> torch.Tensor:
    """log pi(response | prompt) per pair, summed over the response tokens and the end
    token, tokenised the way SFT trained (alignray.sft.training.tokenize_demonstrations)."""
    totals = []
    for start in range(0, len(prompts), BATCH):
        end = start + BATCH
        rows = tokenize_demonstrations(tokenizer, prompts[start:end], responses[start:end],
                                       [None] * len(prompts[start:end]), max_prompt_tokens, max_response_tokens,
                                       list(conversations[start:end]))
        batch = collate_token_rows(rows, torch.device("cpu"))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        logprobs = token_logprobs(logits, batch["input_ids"][:, 1:])  # position t predicts token t + 1
        totals.append(masked_sum(logprobs, batch["loss_mask"][:, 1:].bool(), dim=1))
    return torch.cat(totals)


def implicit_reward_accuracy(policy, reference, tokenizer, pairs: PreferencePairs, max_prompt_tokens: int,
                             max_response_tokens: int, seed: int = 0) -> tuple[float, float, float]:
    """``(accuracy, low, high)``: the share of pairs whose chosen response has the larger
    implicit reward ``log pi - log pi_ref`` (ties count one half), with its bootstrap
    interval over pairs."""
    def implicit_rewards(responses):
        args = (tokenizer, pairs.prompts, pairs.conversations, responses, max_prompt_tokens, max_response_tokens)
        return (response_logprobs(policy, *args) - response_logprobs(reference, *args)).double().numpy()
    return bootstrap_ci(implicit_rewards(pairs.chosen), implicit_rewards(pairs.rejected), seed=seed)

