"""Phase 3a: human, simulated and AI feedback."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from alignray.config.judge import JudgeConfig


@dataclass
class FeedbackConfig:
    # "simulated": the ten VADER raters judge responses sampled from the policy model.
    # "files": read feedback parquet from `path` (one file or a folder of them).
    source: str = "simulated"
    path: str = ""
    # The model that answers the prompts; the pipeline passes its SFT model. Empty: the base model.
    sft_model_path: str = ""
    num_prompts: int = 600
    responses_per_prompt: int = 4
    # Held-out prompts whose response pairs every rater judges, 1..train_annotators and the
    # held-out 6..10: the reward model's evaluation set and the AI judge's yardstick.
    heldout_prompts: int = 100
    max_response_tokens: Optional[int] = None  # None: data.max_response_tokens
    temperature: float = 1.0
    generation_batch_size: int = 64
    train_annotators: int = 5  # annotators 1..5 train; 6..10 stay out as the held-out judge
    bad_faith_share: float = 0.0
    annotators_per_item: Optional[int] = None  # None: every annotator judges every item
    pairs_per_prompt: Optional[int] = None  # None: every pair of a prompt's responses
    # keep | downweight | exclude flagged annotators; or agreement: every annotator, people and the
    # AI judge alike, weighted max(0, 2a - 1) by its measured pairwise agreement a (the judge's on
    # the gold set), flagged ones without a measured agreement excluded
    annotator_policy: str = "exclude"
    ai_share: float = 0.0  # share of the pairwise comparisons judged by the AI judge (RLAIF)
    ai_judge: JudgeConfig = field(default_factory=JudgeConfig)
