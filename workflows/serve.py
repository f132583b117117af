"""Phase 5: any saved reward model over HTTP, on Ray Serve, batched across clients.

    python -m alignray.workflows.serve serve.model_path=PATH              # 127.0.0.1:8000, no token
    ALIGNRAY_SERVE_TOKEN=$(cat token) python -m alignray.workflows.serve serve.model_path=PATH \\
        serve.host=0.0.0.0 serve.num_replicas=2 serve.gpus_per_replica=1
    serve run cluster/serve/serve_config.yaml                   # production: a Serve config
    serve run alignray.workflows.serve:app_builder model_path=PATH       # Serve's CLI, same checks

The HTTP API (routes, limits, authentication) is `alignray.serving.api`; this module adds
what needs Ray: the replica that holds the model, `@serve.batch`, and the deployment
options. Serve restarts a replica whose actor dies or whose health check fails.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import hydra
import numpy as np
from omegaconf import DictConfig
from ray import serve
from ray.serve import Application

from alignray.actors import runtime
from alignray.config import ServeConfig, structured
from alignray.models.modeling import pick_device, training_dtype
from alignray.reward.model import ENSEMBLE_FILE, load_reward_model, reward_member_dirs, reward_texts
from alignray.serving.api import (BatchStats, ModelInfo, Normalization, RequestLimits, ScoredItems,
                                StatsResponse, build_reward_api, endpoint_digest, http_options)
from alignray.workflows.common import CONFIG_PATH, run_app, start_app

log = logging.getLogger(__name__)
WEIGHT_SUFFIXES = (".safetensors", ".bin")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def model_version(path: str | Path) -> str:
    """A short content hash of the weights and config of every member (and an ensemble's
    manifest): two servers report the same version exactly when they serve the same model."""
    digest = hashlib.sha256()
    folder = Path(path)
    files = [folder / ENSEMBLE_FILE] if (folder / ENSEMBLE_FILE).is_file() else []
    files += [file for member in reward_member_dirs(folder) for file in sorted(member.iterdir())
              if file.suffix in WEIGHT_SUFFIXES or file.name == "config.json"]
    for file in files:
        digest.update(file.relative_to(folder).as_posix().encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


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


def serve_config(args: dict) -> ServeConfig:
    """A ServeConfig from `serve run` arguments (strings); an unknown key is an error that names it."""
    return structured(ServeConfig, args)


def deployment_options(cfg: ServeConfig) -> dict:
    options = dict(ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
                   max_ongoing_requests=cfg.max_ongoing_requests, max_queued_requests=cfg.max_queued_requests)
    if cfg.autoscaling:
        options["autoscaling_config"] = {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                         "target_ongoing_requests": cfg.target_ongoing_requests}
    else:
        options["num_replicas"] = cfg.num_replicas
    return options


def build_reward_app(cfg: ServeConfig) -> Application:
    """The Serve application for `cfg`, after the checks that may refuse to start it."""
    digest = endpoint_digest(cfg, "serve")
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
    cfg = dataclasses.replace(cfg, model_path=str(model_path.resolve()))
    deployment = serve.deployment(RewardModelServer).options(**deployment_options(cfg))
    return deployment.bind(cfg, digest)


def app_builder(args: dict) -> Application:
    """Entry for Serve's CLI and config files (`import_path: alignray.workflows.serve:app_builder`).
    `args.host` must repeat the config file's `http_options.host`: it decides whether a
    token is required. Replicas without a token answer loopback clients only either way."""
    return build_reward_app(serve_config(args))


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> None:
    config = start_app(cfg, "serve")
    endpoint = config.serve
    app = build_reward_app(endpoint)
    with runtime.ray_session(config.cluster):
        serve.start(http_options=http_options(endpoint, "serve"))
        serve.run(app, name=endpoint.app_name, route_prefix=endpoint.route_prefix)
        scheme = "https" if endpoint.ssl_certfile else "http"
        log.info("serving %s at %s://%s:%s%s/v1/score (OpenAPI: /docs); Ctrl-C stops", endpoint.model_path,
                 scheme, endpoint.host, endpoint.port, endpoint.route_prefix.rstrip("/"))
        serve_until_stopped(endpoint.app_name)


def serve_until_stopped(app_name: str) -> None:
    """Block until Ctrl-C or SIGTERM, then delete the application."""
    # `kill` or a container stop cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # Serve applications outlive their driver on a shared cluster: remove ours.
        serve.delete(app_name)


if __name__ == "__main__":
    run_app(main)
