"""The reward endpoint on Ray Serve: the replica that holds the reward model, batches requests
with `@serve.batch` and answers the HTTP API of alignray.serving.api; Serve restarts a replica
whose actor dies or whose health check fails."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
import logging
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import OmegaConf
from ray import serve
from ray.serve import Application

from alignray.config import ServeConfig
from alignray.models.modeling import pick_device, training_dtype
from alignray.reward.model import load_reward_model, reward_member_dirs, reward_texts
from alignray.serving.api import (BatchStats, ModelInfo, Normalization, RequestLimits, ScoredItems, StatsResponse,
                                  build_reward_api, check_bind_is_safe, load_token, token_digest)
from alignray.serving.endpoint import deployment_options, model_version

log = logging.getLogger(__name__)


PRECISIONS = ("fp32", "bf16", "fp16", "auto")


@dataclass
class ScoringJob:
    """One request's items: (prompt, response) pairs, or full texts for /get_reward."""
    prompts: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    texts: Optional[list[str]] = None

    @property
    def size(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.prompts)


@serve.ingress()
class RewardModelServer:
    """One replica: the model, its batch queue and the FastAPI app over them."""

    def __init__(self, cfg: ServeConfig, digest: Optional[str]):
        self.cfg = cfg
        self.digest = digest
        device = pick_device()
        self.reward_model = load_reward_model(cfg.model_path, device, training_dtype(cfg.precision, device))
        self.info = ModelInfo(
            name=cfg.model_name or Path(cfg.model_path).name,
            version=model_version(cfg.model_path), members=len(self.reward_model.members),
            normalization=Normalization(mean=self.reward_model.mean, std=self.reward_model.std),
            max_length=self.reward_model.max_length,
            max_items_per_request=cfg.max_items_per_request, max_chars_per_item=cfg.max_chars_per_item,
            max_body_bytes=cfg.max_body_bytes)
        self.batch_stats = BatchStats()
        self.replica = serve.get_replica_context().replica_id.unique_id
        # The decorator's sizes are fixed at import; these come from the config.
        self._score_batch.set_max_batch_size(cfg.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        log.info("serving %s version %s (replica %s)", self.info.name, self.info.version, self.replica)

    def __serve_build_asgi_app__(self):
        limits = RequestLimits(self.cfg.max_items_per_request, self.cfg.max_chars_per_item,
                               self.cfg.max_body_bytes)
        return build_reward_api(self, limits, self.digest)

    async def score_pairs(self, prompts: list[str], responses: list[str]) -> ScoredItems:
        return await self._score_batch(ScoringJob(prompts, responses))

    async def score_texts(self, texts: list[str]) -> ScoredItems:
        return await self._score_batch(ScoringJob(texts=texts))

    def model_info(self) -> ModelInfo:
        return self.info

    def stats(self) -> StatsResponse:
        return StatsResponse(replica=self.replica, **self.batch_stats.as_dict())

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _score_batch(self, jobs: list[ScoringJob]) -> list[ScoredItems]:
        # In a worker thread: the event loop keeps accepting requests for the next batch.
        scored = await asyncio.to_thread(self._score_jobs, jobs)
        items = sum(job.size for job in jobs)
        self.batch_stats.record(len(jobs), items)
        return [ScoredItems(rewards, disagreement, len(jobs), items) for rewards, disagreement in scored]

    def _score_jobs(self, jobs: list[ScoringJob]) -> list[tuple[list[float], list[float]]]:
        """Every job's items in one scoring call (pairs formatted as the model reads them),
        split back per job as (rewards, disagreement)."""
        tokenizer = self.reward_model.tokenizer
        texts = [text for job in jobs
                 for text in (job.texts if job.texts is not None else reward_texts(tokenizer, job.prompts, job.responses))]
        scores = self.reward_model.scores_of_texts(texts, normalize=True, batch_size=self.cfg.forward_batch_size)
        rewards, disagreement = scores.reward.tolist(), scores.disagreement.tolist()
        bounds = np.cumsum([0] + [job.size for job in jobs])
        return [(rewards[start:end], disagreement[start:end]) for start, end in zip(bounds[:-1], bounds[1:])]


def serve_config(cfg) -> ServeConfig:
    """A ServeConfig from a dataclass, a Hydra node or `serve run` arguments (strings);
    an unknown key is an error that names it."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ServeConfig), cfg))


def build_reward_app(cfg) -> Application:
    """The Serve application for `cfg`, after the checks that may refuse to start it."""
    cfg = serve_config(cfg)
    token = load_token(cfg.token_env, cfg.token_file)
    digest = token_digest(token) if token else None
    check_bind_is_safe(cfg.host, digest, cfg.require_token)
    if not cfg.model_path:
        raise ValueError("serve.model_path is required: a folder saved by save_reward_model")
    # Checked here, where a mistake stops the start, not in replicas Serve would restart.
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"serve.precision must be one of {PRECISIONS}, not {cfg.precision!r}")
    if min(cfg.max_batch_size, cfg.forward_batch_size, cfg.max_items_per_request) < 1:
        raise ValueError("serve.max_batch_size, forward_batch_size and max_items_per_request must be >= 1")
    model_path = Path(cfg.model_path).expanduser()
    try:
        reward_member_dirs(model_path)
    except (FileNotFoundError, ValueError) as error:
        raise FileNotFoundError(f"serve.model_path: {error}") from error
    # Replicas may start in another working directory.
    cfg.model_path = str(model_path.resolve())
    deployment = serve.deployment(RewardModelServer).options(**deployment_options(cfg))
    return deployment.bind(cfg, digest)
