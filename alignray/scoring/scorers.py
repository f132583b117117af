"""The scorers the registry (alignray/scoring/registry.py) builds: each gives one score per
(prompt, response), higher is preferred, as a float array; ``score_with_disagreement`` adds
how much an ensemble's members disagree (their std, in the score's units), 0 for a scorer
that is one scorer.

The reward models and endpoints are imported when built: a rule scorer needs no torch model
and no HTTP client.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from alignray.evaluation.compare import words
from alignray.feedback.simulated import judge_scores


def target_word_share(responses: Sequence[str], target: str) -> torch.Tensor:
    """Per response, the share of its words equal to ``target`` (0 for a response without words)."""
    target = target.lower()
    shares = []
    for text in responses:
        tokens = words(text)
        shares.append(sum(token == target for token in tokens) / len(tokens) if tokens else 0.0)
    return torch.tensor(shares, dtype=torch.float32)


class Scorer:
    """``(prompts, responses) -> scores``; callable as ``scorer(prompts, responses)``."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def score_with_disagreement(self, prompts: Sequence[str],
                                responses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        scores = self.score(prompts, responses)
        return scores, np.zeros_like(scores)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return self.score(prompts, responses)


class AnnotatorPanel(Scorer):
    """The mean score of a panel of simulated annotators (alignray.feedback.simulated)."""

    def __init__(self, raters: Sequence[int]):
        self.raters = tuple(raters)

    def score(self, prompts, responses):
        return judge_scores(responses, self.raters)


class TargetWordScorer(Scorer):
    """The share of a response's words equal to one word: a rule with a known optimum."""

    def __init__(self, target: str):
        self.target = target

    def score(self, prompts, responses):
        return target_word_share(responses, self.target).numpy()


class EndpointScorer(Scorer):
    """A reward endpoint (alignray.reward.client): its scores as the server gives them."""

    def __init__(self, url: str):
        from alignray.reward.client import RewardClient
        self.client = RewardClient(url)

    def score(self, prompts, responses):
        return np.asarray(self.client.score(prompts, responses), dtype=float)

    def score_with_disagreement(self, prompts, responses):
        rewards, disagreement = self.client.score_with_disagreement(prompts, responses)
        return np.asarray(rewards, dtype=float), np.asarray(disagreement, dtype=float)


class AIJudgeScorer(Scorer):
    """A language-model judge (alignray/judges) rating each answer on its rubric's scale: the
    expected rating over the scale's digits (a local judge's log-probs, an endpoint's when it
    returns them, else its parsed digit). An answer it could not rate (unparsed, failed) scores
    NaN, never a guess; the win-rate leaves such pairs out. Verdicts go through the verdict
    cache at ``cache_path`` when one is set."""

    def __init__(self, cfg, device="cpu"):
        from alignray.judges.build import check_judge, judge_asker
        from alignray.judges.cache import VerdictCache
        from alignray.judges.rubric import load_rubric
        check_judge(cfg, "ai_judge")
        self.rubric = load_rubric(cfg.rubric)
        self.cache = VerdictCache(cfg.cache_path) if cfg.cache_path else None
        self.ask, self.identity = judge_asker(cfg, self.rubric, "rating", device)
        self.counts: dict = {}

    def score(self, prompts, responses):
        from alignray.judges.forms import judge_ratings
        judging, _ = judge_ratings(self.ask, self.identity, self.rubric, list(zip(prompts, responses)), self.cache)
        self.counts = judging.counts
        return np.array([v["score"] if v["status"] == "judged" else np.nan for v in judging.verdicts], dtype=float)


class RewardModelScorer(Scorer):
    """A reward-model folder, single or ensemble (alignray.reward.model). ``raw``: the model's
    output as it is, without its training data's mean/std (PPO normalises once itself)."""

    def __init__(self, path: str, device="cpu", raw: bool = False):
        from alignray.reward.model import load_reward_model
        self.model, self.normalize = load_reward_model(path, device=device), not raw

    @torch.no_grad()
    def score(self, prompts, responses):
        return self.model.score(prompts, responses, normalize=self.normalize).float().cpu().numpy()

    @torch.no_grad()
    def score_with_disagreement(self, prompts, responses):
        scores = self.model.score_with_disagreement(prompts, responses, normalize=self.normalize)
        return scores.reward.float().cpu().numpy(), scores.disagreement.float().cpu().numpy()
