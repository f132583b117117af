"""What the reward endpoint's deployment is made of, without Ray: the served model's version (a
content hash), the replicas' deployment options and the HTTP proxy's settings (also the
collection server's)."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from alignray.config import ServeConfig
from alignray.reward.model import ENSEMBLE_FILE, reward_member_dirs
from alignray.serving.api import is_loopback

log = logging.getLogger(__name__)


WEIGHT_SUFFIXES = (".safetensors", ".bin")


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


def deployment_options(cfg: ServeConfig) -> dict:
    options = dict(ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
                   max_ongoing_requests=cfg.max_ongoing_requests, max_queued_requests=cfg.max_queued_requests)
    if cfg.autoscaling:
        options["autoscaling_config"] = {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                         "target_ongoing_requests": cfg.target_ongoing_requests}
    else:
        options["num_replicas"] = cfg.num_replicas
    return options


def http_options(cfg: ServeConfig) -> dict:
    """Serve's HTTP proxy settings (`serve.start`; `http_options` in a config file)."""
    options = {"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s}
    if cfg.ssl_certfile or cfg.ssl_keyfile:
        options.update(ssl_certfile=cfg.ssl_certfile, ssl_keyfile=cfg.ssl_keyfile)
    elif not is_loopback(cfg.host):
        log.warning("serving %s over plain HTTP: the bearer token travels in clear text; set "
                    "serve.ssl_certfile and serve.ssl_keyfile or terminate TLS in front", cfg.host)
    return options
