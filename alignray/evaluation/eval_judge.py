"""The evaluation's judge, chosen by ``eval.judge`` (pure: no Ray, no Hydra).

A judge of answers is a scorer of the registry (alignray/scoring), higher is preferred, and
the evaluation reports the policy's win-rate over the SFT model's answers to the same
held-out prompts:

- ``heldout_annotators``: the held-out panel (simulated annotators 6-10, who gave no training
  feedback); it reads tweets, so it judges the embedded default only;
- ``http``: any reward endpoint that answers alignray's ``/v1/score``
  (alignray.reward.client.RewardClient), e.g. a gold reward model served by alignray;
- ``reward_model``: a gold reward-model folder trained on a held-out split of the user's
  feedback that PPO never saw, the protocol of Gao, Schulman and Hilton, "Scaling Laws for
  Reward Model Overoptimization" (2022).

``pairs`` is the evaluation's own measure, not a scorer: the implicit-reward accuracy on
held-out preference pairs (alignray/evaluation/implicit_reward.py). PPO's own reward is
refused as the judge: a policy cannot be graded by what it was trained on.
"""
from __future__ import annotations

from alignray.config.scorer import ScorerConfig
from alignray.evaluation.compare import IMPLICIT_REWARD_ACCURACY, WIN_RATE
from alignray.scoring import EVAL_JUDGE, DataAtHand, refuse_reward_as_judge, resolve_scorer
from alignray.scoring.registry import choose_instead, describe as describe_scorer

PAIRS = "pairs"


def resolve_judge(eval_cfg, data_source: str, reward: ScorerConfig | None = None) -> str:
    """The judge ``eval.judge`` names, checked: ``auto`` is the panel on the embedded
    default, and on other data a choice is required; the panel judges the embedded default
    only; each other judge needs its settings; PPO's reward (``reward``) is no judge."""
    judge = eval_cfg.judge
    if judge.kind == PAIRS:
        if not eval_cfg.pairs_path:
            raise ValueError(f"{EVAL_JUDGE.key}.kind={PAIRS} needs {EVAL_JUDGE.own_choices[PAIRS]}")
        return PAIRS
    kind = resolve_scorer(judge, EVAL_JUDGE, DataAtHand.of(data_source))
    if kind is None:  # the evaluation cannot run without a judge: stop, saying what to choose
        raise ValueError(f"{EVAL_JUDGE.key}.kind=auto is the held-out annotators, who judge only the embedded "
                         f"default's tweets; on your own data (data.source={data_source}) {choose_instead(EVAL_JUDGE)}")
    if reward is not None:
        refuse_reward_as_judge(judge, EVAL_JUDGE, reward)
    return kind


def metric_of(kind: str) -> str:
    """What a judge's figure is."""
    return IMPLICIT_REWARD_ACCURACY if kind == PAIRS else WIN_RATE


def describe(kind: str, eval_cfg) -> str:
    """The judge in words, for eval.json and the report."""
    if kind == PAIRS:
        return f"the held-out preference pairs in {eval_cfg.pairs_path}"
    return describe_scorer(eval_cfg.judge, kind)
