"""Scorers chosen by config: one registry (registry.py) of the scorers (scorers.py) that PPO's
reward, the evaluation's judge and the over-optimisation monitor's judge are built from."""
from alignray.scoring.registry import (AUTO, EVAL_JUDGE, JUDGE, MONITOR_JUDGE, PPO_REWARD, REWARD, SCORERS, DataAtHand,
                                       ScorerSpec, ScorerUse, build_scorer, describe, refuse_reward_as_judge,
                                       reports_disagreement, resolve_scorer, reward_scorer, same_scorer)
from alignray.scoring.scorers import Scorer, target_word_share

__all__ = ["AUTO", "EVAL_JUDGE", "JUDGE", "MONITOR_JUDGE", "PPO_REWARD", "REWARD", "SCORERS", "DataAtHand", "Scorer",
           "ScorerSpec", "ScorerUse", "build_scorer", "describe", "refuse_reward_as_judge", "reports_disagreement",
           "resolve_scorer", "reward_scorer", "same_scorer", "target_word_share"]
