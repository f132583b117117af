"""The reward: one score per (prompt, response), from a frozen scorer chosen in config
(``ppo.reward.kind``), built by the scorer registry (alignray/scoring):

- ``reward_model``: the trained reward model (``ppo.reward_model_path``), single or ensemble;
- ``http``: the Ray Serve reward endpoint at ``ppo.reward.url``, through ``alignray.reward.client``;
- ``training_annotators``: the oracle reward, the mean score of the simulated training
  annotators 1-5 (never the held-out judge 6-10); for ablations and for runs before a reward
  model exists;
- ``judge``: an AI judge (alignray/scoring/judge_reward.py) comparing each response with the
  SFT model's answer to its prompt, sampled once per prompt here, or rating it;
- ``target_word``: the share of a response's words equal to ``ppo.reward.target_word``, a
  rule with a known optimum, for checking that PPO climbs.

Scores are raw, as the scorer gives them (a reward model's own mean/std from its training
data is not applied): the coordinator normalises them once, with running statistics
(``ppo.reward.normalize``), so the KL coefficient means the same for every scorer.

``score_with_disagreement`` also gives how much an ensemble's members disagree (their std,
in the same units as the score; the endpoint's for ``http``). A single model and the rule
scorers are one scorer each: their disagreement is 0.
"""
from __future__ import annotations

import torch

from alignray.actors.base import ModelActor
from alignray.config.ppo import PPORewardConfig
from alignray.scoring import PPO_REWARD, build_scorer, resolve_scorer, reward_scorer


class RewardActor(ModelActor):
    role = "reward"

    def __init__(self, reward: PPORewardConfig, reward_model_path: str | None = None, seed: int = 0,
                 reference: tuple[str, dict] | None = None):
        """``reference``: the SFT model and PPO's sampling settings, for a judge against its answers."""
        super().__init__(seed)
        choice = reward_scorer(reward, reward_model_path, reference)
        self.scorer = build_scorer(choice, resolve_scorer(choice, PPO_REWARD), device=self.device, raw=True)

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Raw scores ``[len(responses)]`` (float32, CPU)."""
        return torch.as_tensor(self.scorer.score(prompts, responses), dtype=torch.float32)

    @torch.no_grad()
    def score_with_disagreement(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw scores and the members' disagreement, each ``[len(responses)]`` (float32, CPU)."""
        scores, disagreement = self.scorer.score_with_disagreement(prompts, responses)
        return torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(disagreement, dtype=torch.float32)

    def scorer_stats(self) -> dict:
        """What the scorer counted over the run (a judge: answers, cache hits, seconds); {} for most."""
        return dict(getattr(self.scorer, "stats", {}))
