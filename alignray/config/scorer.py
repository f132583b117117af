"""One scorer choice, read the same way wherever a scorer is chosen (alignray/scoring): the
evaluation's judge (``eval.judge``) and the over-optimisation monitor's
(``ppo.monitor.judge``). PPO's reward (``ppo.reward``) names its scorer with the same
``kind``, ``url`` and ``target_word``; its reward model is PPO's input, ``ppo.reward_model_path``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from alignray.config.judge import JudgeConfig


@dataclass
class ScorerConfig:
    # A name of alignray.scoring.SCORERS: "reward_model" (a reward-model folder at `model_path`,
    # single or ensemble), "http" (a reward endpoint at `url`: alignray's /v1/score, or
    # OpenRLHF's /get_reward), "heldout_annotators" (the simulated held-out panel 6-10, which
    # reads only the embedded default's tweets), "training_annotators" (raters 1-5) or
    # "target_word" (PPO's reward only). "auto": the held-out annotators where they can judge
    # the data, else none (the evaluation then stops, the monitor switches itself off).
    # "ai_judge": a language-model judge (`ai_judge`: local or an OpenAI-compatible endpoint)
    # rating each answer on its rubric's scale (judges only). "judge": PPO's reward from an AI
    # judge (ppo.reward.judge), against the SFT model's answer or on its scale.
    kind: str = "auto"
    url: Optional[str] = None
    model_path: Optional[str] = None
    target_word: str = "good"
    ai_judge: JudgeConfig = field(default_factory=JudgeConfig)
    # "judge" as PPO's reward only, set by PPO from ppo.reward (not a user's key): the model
    # whose answer to the same prompt each response is judged against (the SFT model; empty:
    # the judge rates on its scale), and how that answer is sampled (PPO's rollout settings).
    reference_model_path: Optional[str] = None
    reference_sampling: dict = field(default_factory=dict)


# Keys that moved into the judge blocks (old -> new), for the table of moved keys that refuses
# the old ones before Hydra composes.
MOVED_SCORER_KEYS = {
    "ppo.eval.judge": "eval.judge.kind",
    "ppo.eval.judge_url": "eval.judge.url",
    "ppo.eval.gold_reward_model_path": "eval.judge.model_path",
    "ppo.monitor.judge": "ppo.monitor.judge.kind",
    "ppo.monitor.judge_url": "ppo.monitor.judge.url",
    "ppo.monitor.gold_reward_model_path": "ppo.monitor.judge.model_path",
}
