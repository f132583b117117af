"""An AI judge (alignray/judges): a local instruct model read from its next-token log-probs, or
any OpenAI-compatible chat-completions endpoint; its rubric, verdict cache and calibration.
Chosen at ``feedback.ai_judge`` (AI feedback) and at ``<scorer>.ai_judge`` where a scorer of
kind ``ai_judge`` judges the evaluation or the over-optimisation monitor."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from alignray.config.training import TrainingConfig


@dataclass
class EndpointJudgeConfig:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint (``kind=openai``)."""
    base_url: str = ""  # e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1
    model: str = ""
    # The name of the environment variable that holds the API key; the key itself never goes in a
    # file. Unset or empty variable: no Authorization header (a local server).
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4  # requests in flight at once
    timeout_s: float = 60.0
    max_retries: int = 4  # retries of a 429, a 5xx, a timeout or a refused connection
    backoff_s: float = 1.0  # first retry's wait, doubled each retry; a Retry-After header wins
    max_backoff_s: float = 60.0
    # Consecutive failed requests, with none answered yet, after which the endpoint is taken to
    # fail every request and the phase stops naming the URL and the last answer.
    give_up_after: int = 8
    max_tokens: int = 8  # the verdict is a letter or a digit
    temperature: float = 0.0
    logprobs: bool = True  # ask for the answer token's log-probs (servers that ignore it are parsed)
    price_per_million_input_tokens: Optional[float] = None
    price_per_million_output_tokens: Optional[float] = None
    currency: str = "USD"


@dataclass
class CalibrationConfig:
    """Calibration before trust: the judge's agreement on a human gold set."""
    gold_pairs: int = 200  # human-labelled pairs (annotators 1-5 on the default); 0: no calibration
    significance: float = 0.05  # one-sided binomial test against chance (0.5)
    on_fail: str = "refuse"  # refuse (stop the phase) | zero_weight (keep the rows, weight 0)


@dataclass
class JudgeConfig:
    kind: str = "local"  # local | openai
    # local: a Hugging Face model folder or hub id; empty in feedback: the policy (SFT) model
    model_path: str = ""
    actors: int = 1  # local: Ray Data actor pool size (one GPU each with cluster.use_gpu)
    batch_size: int = 16
    max_reply_tokens: int = 64  # replies are also clipped to fit a local judge's positions
    # A shipped rubric (sentiment: what the embedded default's annotators judge; chat: helpful,
    # harmless, honest) or the path of a rubric file (YAML, see alignray/judges/rubrics/).
    rubric: str = "sentiment"
    openai: EndpointJudgeConfig = field(default_factory=EndpointJudgeConfig)
    # A SQLite file of verdicts already paid for; empty: <workdir>/judge-verdicts.sqlite
    cache_path: str = ""
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    # The feedback forms the judge gives for its share of the items of each: pairwise (both
    # orders), rating (on the rubric's scale, with its flaws), thumbs (from the rating: above
    # the scale's middle is up, below down). Pairwise always; a local judge rates in the driver.
    forms: list[str] = field(default_factory=lambda: ["pairwise"])


# The flat feedback keys the block replaced (old -> new), refused before Hydra composes.
MOVED_JUDGE_KEYS = {
    "feedback.ai_judge_path": "feedback.ai_judge.model_path",
    "feedback.judge_actors": "feedback.ai_judge.actors",
    "feedback.judge_batch_size": "feedback.ai_judge.batch_size",
    "feedback.judge_max_reply_tokens": "feedback.ai_judge.max_reply_tokens",
}


@dataclass
class TeachJudgeConfig(TrainingConfig):
    """A judge taught by a human gold set (workflows/judge.py, alignray/judges/teaching.py): a
    causal LM fine-tuned to answer the rubric's pairwise question as people did; the folder it
    writes is a ``local`` judge (``feedback.ai_judge.model_path``, ``ppo.reward.judge.model_path``,
    an evaluation's ``ai_judge``). The training-loop keys: TrainingConfig; batch_size counts
    rows, one order of a labelled pair each."""
    lr: float = 3e-4
    warmup_steps: int = 10
    epochs: int = 4
    batch_size: int = 16
    max_steps: int = 0
    eval_every: int = 0
    checkpoint_every: int = 0
    # The human budget: pairwise labels, one person's vote on one item each, drawn with the seed.
    labels: int = 500
    heldout_fraction: float = 0.1  # of the gold set's prompts: the held-out loss, not taught
    # Inputs; empty: the SFT model (the model taught) and the feedback phase's folder (the
    # human votes, its feedback.parquet; its heldout_pairs.parquet, when there, measures the
    # judge against the held-out panel).
    base_model_path: str = ""
    feedback_dir: str = ""
    rubric: str = "sentiment"  # the question taught: the one the judge is asked when it labels
    max_reply_tokens: int = 64
    # Human pairs outside the gold set (their majority) on which the judge is calibrated,
    # before and after teaching.
    calibration_pairs: int = 200
