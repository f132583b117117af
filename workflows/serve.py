"""Phase 5: any saved reward model over HTTP, on Ray Serve, batched across clients.

    python -m alignray.workflows.serve serve.model_path=PATH              # 127.0.0.1:8000, no token
    ALIGNRAY_SERVE_TOKEN=$(cat token) python -m alignray.workflows.serve serve.model_path=PATH \\
        serve.host=0.0.0.0 serve.num_replicas=2 serve.gpus_per_replica=1
    serve run cluster/serve/serve_config.yaml                   # production: a Serve config
    serve run alignray.workflows.serve:app_builder model_path=PATH       # Serve's CLI, same checks

The HTTP API (routes, limits, authentication) is `alignray.serving.api`; the replica that
holds the model and batches requests is `alignray.actors.reward_server`; this app wires them
to a Ray session and Serve's HTTP proxy.
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig
from ray import serve
from ray.serve import Application

from alignray.actors import runtime
from alignray.actors.reward_server import build_reward_app, serve_config
from alignray.actors.runtime import serve_until_stopped
from alignray.serving.endpoint import http_options
from alignray.workflows.common import CONFIG_PATH, start_app

log = logging.getLogger(__name__)


def app_builder(args: dict) -> Application:
    """Entry for Serve's CLI and config files (`import_path: alignray.workflows.serve:app_builder`).
    `args.host` must repeat the config file's `http_options.host`: it decides whether a
    token is required. Replicas without a token answer loopback clients only either way."""
    return build_reward_app(args)


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> None:
    start_app(cfg, "serve")
    app = build_reward_app(cfg.serve)
    with runtime.ray_session(cfg.cluster):
        serve.start(http_options=http_options(serve_config(cfg.serve)))
        serve.run(app, name=cfg.serve.app_name, route_prefix=cfg.serve.route_prefix)
        scheme = "https" if cfg.serve.ssl_certfile else "http"
        log.info("serving %s at %s://%s:%s%s/v1/score (OpenAPI: /docs); Ctrl-C stops", cfg.serve.model_path,
                 scheme, cfg.serve.host, cfg.serve.port, cfg.serve.route_prefix.rstrip("/"))
        serve_until_stopped(cfg.serve.app_name)


if __name__ == "__main__":
    main()
