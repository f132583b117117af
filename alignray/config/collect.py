"""Collecting human feedback in web pages (`python -m alignray.workflows.collect`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from alignray.config.endpoint import EndpointConfig

ACTIONS = ("serve", "annotators", "generate", "tasks", "compact", "admin-link")


@dataclass
class CollectQualityConfig:
    # Agreement verdicts (alignray.feedback.quality): a family is tested from min_items
    # items shared with other annotators, at this significance.
    min_items: int = 30
    significance: float = 0.01
    # Gold items: from min_gold answers on, an accuracy significantly below
    # gold_min_accuracy (one-sided binomial test at `significance`) flags the annotator.
    min_gold: int = 5
    gold_min_accuracy: float = 0.7
    # What compaction's consumers should do with flagged annotators: keep | downweight | exclude.
    policy: str = "downweight"
    downweight: float = 0.2


@dataclass
class CandidatesConfig:
    # collect.action=generate: responses sampled from these checkpoints (one each per
    # prompt; two from a single model) to prompts drawn from prompts_file (the prompts
    # schema), written as the tasks file collect.tasks_file.
    models: list[str] = field(default_factory=list)
    prompts_file: str = ""
    num_prompts: int = 50
    max_prompt_tokens: int = 24
    max_new_tokens: int = 36
    temperature: float = 1.0
    batch_size: int = 16
    seed: int = 0


@dataclass
class CollectConfig(EndpointConfig):
    # The endpoint's keys (host, port, TLS, token, ...): EndpointConfig. Without an admin
    # token only loopback clients reach the admin API, and a non-loopback host refuses to start.
    app_name: str = "alignray-collect"
    port: int = 8010
    request_timeout_s: float = 30.0
    cpus_per_replica: float = 0.5
    max_body_bytes: int = 256 * 1024
    token_env: Optional[str] = "ALIGNRAY_COLLECT_TOKEN"
    # serve: the pages and the API; annotators: create `annotators` (one-time links);
    # generate: write `tasks_file` from checkpoints (`candidates`); tasks: load
    # `tasks_file` into the queues; compact: write `out`; admin-link: a
    # one-time link to the admin page. Every action but serve works on the store directly.
    action: str = "serve"
    store_path: str = "${workdir}/collect/labels.sqlite"
    out: str = "${workdir}/collect/feedback.parquet"
    annotators: list[str] = field(default_factory=list)
    group: Optional[str] = None
    # JSON lines or parquet: {prompt | conversation, responses: [...], gold?: {winner}, task_id?}
    tasks_file: str = ""
    assign_to: Optional[list[str]] = None  # None: every annotator
    # Share of each queue that is gold items (drawn from the tasks file's gold rows),
    # placed at random per annotator so nobody can tell them apart.
    gold_fraction: float = 0.1
    seed: int = 0
    # Links print with this origin; None: http(s)://host:port.
    base_url: Optional[str] = None
    # The forms a task enables (those that fit its number of responses), the rating scale
    # and the flaw checkboxes (all of alignray.feedback.schema's KINDS and DEFAULT_FLAWS).
    forms: list[str] = field(default_factory=lambda: ["pairwise", "ranking", "thumbs", "rating"])
    scale_min: float = 1.0
    scale_max: float = 7.0
    flaws: list[str] = field(default_factory=lambda: ["harmful", "inaccurate", "unhelpful", "off_topic"])
    # Per annotator: `burst` requests at once, rate_per_minute on average (429 beyond).
    rate_per_minute: float = 120.0
    burst: int = 30
    # Cost: seconds per label are measured by the page; this converts them.
    hourly_rate: float = 15.0
    currency: str = "USD"
    quality: CollectQualityConfig = field(default_factory=CollectQualityConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
