"""AI feedback as PPO's online reward (``ppo.reward.kind=judge``): the generative-reward row of
verl, NeMo RL and SkyRL, here with any judge of alignray/judges (a local model, a taught judge,
an OpenAI-compatible endpoint).

- **Against the SFT model** (``ppo.reward.judge_against=sft``, the default): each response is
  judged against the SFT model's answer to the same prompt, both orders asked (the position
  bias cancelled); the reward is the judge's log-odds that the response is the better one
  (0: as good as SFT). The SFT answer is sampled once per prompt, as PPO samples, and kept:
  a prompt seen again is not answered again.
- **On the rubric's scale** (``judge_against=none``): the expected rating over its digits.

Verdicts go through the judge's verdict cache when ``cache_path`` is set. A pair the judge
could not judge (an endpoint's refusal, an unparsed reply) scores 0, a tie with SFT, and is
counted. ``stats`` says how many answers were generated, how many verdicts came from the
cache and how the seconds split between answering and judging.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch

from alignray.config.judge import JudgeConfig
from alignray.judges.verdicts import JUDGED, MAX_LOG_ODDS
from alignray.scoring.scorers import AIJudgeScorer, Scorer


class ReferenceAnswers:
    """The reference model's answer to each prompt, sampled once with PPO's sampling settings
    (``max_new_tokens``, ``temperature``, ``top_p``, ``max_prompt_tokens``, ``seed``) and kept."""

    def __init__(self, model_path: str, sampling: dict, device="cpu"):
        from alignray.config.ppo import RolloutConfig
        from alignray.models.generation import disable_dropout
        from alignray.models.modeling import load_causal_lm, load_tokenizer
        self.model = disable_dropout(load_causal_lm(model_path, torch.device(device))).eval()
        self.tokenizer = load_tokenizer(model_path)
        settings = dict(sampling)
        self.max_prompt_tokens, self.seed = int(settings.pop("max_prompt_tokens")), int(settings.pop("seed", 0))
        self.sampling = RolloutConfig(**settings)
        self.answers: dict[str, str] = {}
        self.seconds = 0.0

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        from alignray.data.prompts import format_prompt
        from alignray.evaluation.answers import answer, response_texts
        missing = list(dict.fromkeys(p for p in prompts if p not in self.answers))
        if missing:
            started = time.monotonic()
            formatted = [format_prompt(self.tokenizer, p) for p in missing]
            # a new seed for each batch of new prompts, fixed by how many were answered before
            chunks = answer(self.model, self.tokenizer, formatted, self.sampling, self.max_prompt_tokens,
                            self.seed + len(self.answers))
            self.answers.update(zip(missing, response_texts(self.tokenizer, chunks)))
            self.seconds += time.monotonic() - started
        return [self.answers[p] for p in prompts]


def log_odds(preference: float) -> float:
    """logit(p), clipped as parsed verdicts are (alignray.judges.verdicts.MAX_LOG_ODDS)."""
    p = min(max(preference, math.exp(-MAX_LOG_ODDS)), 1 - math.exp(-MAX_LOG_ODDS))
    return math.log(p / (1 - p))


class PairwiseJudgeReward(Scorer):
    """The judge's log-odds that a response beats the reference answer to its prompt."""

    def __init__(self, cfg: JudgeConfig, reference: ReferenceAnswers, device="cpu"):
        from alignray.judges.build import check_judge, judge_asker
        from alignray.judges.cache import VerdictCache
        from alignray.judges.rubric import load_rubric
        check_judge(cfg, "ppo.reward.judge")
        self.rubric, self.reference = load_rubric(cfg.rubric), reference
        self.cache = VerdictCache(cfg.cache_path) if cfg.cache_path else None
        self.ask, self.identity = judge_asker(cfg, self.rubric, "pairwise", device)
        self.stats = {"scored": 0, "not_judged": 0, "answers_from_cache": 0, "judge_s": 0.0}

    def score(self, prompts, responses):
        from alignray.judges.forms import judge_pairs
        references = self.reference(prompts)
        started = time.monotonic()
        judging, _ = judge_pairs(self.ask, self.identity, self.rubric, list(zip(prompts, responses, references)),
                                 self.cache)
        scores = [log_odds(v["preference_a"]) if v["status"] == JUDGED else 0.0 for v in judging.verdicts]
        self.stats["scored"] += len(scores)
        self.stats["not_judged"] += len(scores) - judging.counts[JUDGED]
        self.stats["answers_from_cache"] += judging.counts["answers_from_cache"]
        self.stats["judge_s"] += time.monotonic() - started
        self.stats |= {"reference_answers": len(self.reference.answers), "reference_s": self.reference.seconds}
        return np.asarray(scores, dtype=float)


class RatingJudgeReward(AIJudgeScorer):
    """The judge's expected rating on its rubric's scale; an answer it could not rate scores
    the scale's middle, and is counted."""

    def score(self, prompts, responses):
        scores = super().score(prompts, responses)
        return np.where(np.isnan(scores), sum(self.rubric.scale) / 2, scores)

    @property
    def stats(self) -> dict:
        return {"counts": self.counts}


def judge_reward(cfg, device="cpu") -> Scorer:
    """The judge reward a scorer choice (alignray.config.scorer.ScorerConfig) describes: against
    the reference model's answers where ``reference_model_path`` is set, else on the scale."""
    if cfg.reference_model_path:
        return PairwiseJudgeReward(cfg.ai_judge, ReferenceAnswers(cfg.reference_model_path, cfg.reference_sampling,
                                                                  device), device)
    return RatingJudgeReward(cfg.ai_judge, device)
