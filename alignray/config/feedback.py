"""Phase 3a: human, simulated and AI feedback."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FeedbackConfig:
    # "simulated": the ten VADER raters judge responses sampled from the SFT model.
    # "files": read feedback parquet from `path`.
    source: str = "simulated"
    path: str = ""
    num_prompts: int = 600
    responses_per_prompt: int = 4
    train_annotators: int = 5  # annotators 1..5 train; 6..10 stay out as the held-out judge
    bad_faith_share: float = 0.0
    annotator_policy: str = "exclude"  # keep | downweight | exclude flagged annotators
    ai_share: float = 0.0  # share of comparisons judged by the AI judge (RLAIF)
    ai_judge_path: str = ""  # empty: the SFT model judges
