"""The evaluation phase (workflows/evaluate.py): the PPO policy against the SFT model on
held-out prompts, with PPO's sampling settings (ppo.rollout)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from alignray.config.scorer import ScorerConfig


@dataclass
class EvaluationConfig:
    # The standalone evaluation app's inputs: the PPO policy folder (required there) and
    # the held-out prompts (None: the embedded default's held-out split).
    policy_path: Optional[str] = None
    prompts_path: Optional[str] = None
    num_prompts: int = 400  # held-out prompts both policies answer
    # Who judges (alignray/evaluation/eval_judge.py): a scorer of the registry (alignray/scoring):
    # "heldout_annotators" (the held-out panel 6-10, embedded default only), "http" (a reward
    # endpoint at `judge.url`: alignray's /v1/score, or OpenRLHF's /get_reward), "reward_model"
    # (a gold reward model trained on held-out feedback PPO never saw, at `judge.model_path`);
    # or "pairs" (implicit-reward accuracy on the held-out preference pairs at `pairs_path`: an
    # accuracy, not a win-rate). "auto": the held-out annotators on the embedded default; other
    # data must choose. PPO's own reward is refused.
    judge: ScorerConfig = field(default_factory=ScorerConfig)
    pairs_path: Optional[str] = None  # a feedback parquet (FEEDBACK_SCHEMA) or a pairs one (PAIRS_SCHEMA)
    # `pairs` reads the first max_pairs pairs of the file (0: all): four forward passes a pair,
    # ~20 minutes for 729 HH pairs with a 135M model on 2 cores.
    max_pairs: int = 0
    kl_budget: float = 8.0  # nats per response; the guard flags more
    samples_to_write: int = 50
