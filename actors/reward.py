"""The reward: one score per (prompt, response), from a frozen scorer chosen in config
(``ppo.reward.kind``):

- ``model``: the trained reward model, single or ensemble, through ``alignray.reward.model.load_reward_model``;
- ``http``: the Ray Serve reward endpoint at ``ppo.reward.url``, through ``alignray.reward.client``;
- ``annotators``: the oracle reward, the mean score of the simulated training annotators
  1-5 (never the held-out judge 6-10); for ablations and for runs before a reward model exists;
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

from typing import Sequence

import torch

from alignray.actors.base import ModelActor
from alignray.config.ppo import PPORewardConfig
from alignray.evaluation.compare import words

REWARD_KINDS = ("model", "http", "annotators", "target_word")


def target_word_share(responses: Sequence[str], target: str) -> torch.Tensor:
    """Per response, the share of its words equal to ``target`` (0 for a response without words)."""
    target = target.lower()
    shares = []
    for text in responses:
        tokens = words(text)
        shares.append(sum(token == target for token in tokens) / len(tokens) if tokens else 0.0)
    return torch.tensor(shares, dtype=torch.float32)


class RewardActor(ModelActor):
    role = "reward"

    def __init__(self, reward: PPORewardConfig, reward_model_path: str | None = None, seed: int = 0):
        super().__init__(seed)
        if reward.kind not in REWARD_KINDS:
            raise ValueError(f"ppo.reward.kind must be one of {REWARD_KINDS}, not {reward.kind!r}")
        self.reward = reward
        if reward.kind == "model":
            if not reward_model_path:
                raise ValueError("ppo.reward.kind=model needs a reward model path")
            from alignray.reward.model import load_reward_model
            self.scorer = load_reward_model(reward_model_path, device=self.device)
        elif reward.kind == "http":
            if not reward.url:
                raise ValueError("ppo.reward.kind=http needs ppo.reward.url")
            from alignray.reward.client import RewardClient
            self.scorer = RewardClient(reward.url)

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Raw scores ``[len(responses)]`` (float32, CPU)."""
        kind = self.reward.kind
        if kind == "annotators":
            from alignray.feedback.simulated import TRAINING_RATERS, judge_scores
            return torch.as_tensor(judge_scores(responses, TRAINING_RATERS), dtype=torch.float32)
        if kind == "target_word":
            return target_word_share(responses, self.reward.target_word)
        if kind == "model":
            return self.scorer.score(prompts, responses, normalize=False).float().cpu()
        return torch.as_tensor(self.scorer.score(prompts, responses), dtype=torch.float32)

    @torch.no_grad()
    def score_with_disagreement(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw scores and the members' disagreement, each ``[len(responses)]`` (float32, CPU)."""
        if self.reward.kind == "model":
            scores = self.scorer.score_with_disagreement(prompts, responses, normalize=False)
            return scores.reward.float().cpu(), scores.disagreement.float().cpu()
        if self.reward.kind == "http":
            rewards, disagreement = self.scorer.score_with_disagreement(prompts, responses)
            return torch.as_tensor(rewards, dtype=torch.float32), torch.as_tensor(disagreement, dtype=torch.float32)
        scores = self.score(prompts, responses)
        return scores, torch.zeros_like(scores)
