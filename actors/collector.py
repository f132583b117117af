"""The feedback-collection server on Ray Serve: one replica that holds the label store.

One replica on purpose: the store is one SQLite file (one writer at a time) and the rate
limits are counted in the replica's memory. Serve restarts the replica if its process
dies; the store reopens where the last committed label left it.
"""
from __future__ import annotations

from typing import Optional

from ray import serve
from ray.serve import Application

from alignray.collect.api import build_collect_api, form_settings
from alignray.collect.store import LabelStore
from alignray.config.collect import CollectConfig


@serve.ingress()
class CollectServer:
    """The replica: the store and the FastAPI app over it."""

    def __init__(self, cfg: CollectConfig, admin_digest: Optional[str]):
        self.cfg = cfg
        self.admin_digest = admin_digest
        self.store = LabelStore(cfg.store_path, form_settings(cfg))

    def __serve_build_asgi_app__(self):
        return build_collect_api(self.store, self.cfg, self.admin_digest)


def collect_deployment(cfg: CollectConfig, admin_digest: Optional[str]) -> Application:
    """The application for a checked config (workflows/collect.py checks it)."""
    deployment = serve.deployment(CollectServer).options(
        num_replicas=1, max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.cpus_per_replica})
    return deployment.bind(cfg, admin_digest)
