"""An HTTP endpoint on Ray Serve: what the reward model's server (`serve`) and the feedback
collection (`collect`) share, with the same keys under each."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class EndpointConfig:
    app_name: str = "alignray"
    route_prefix: str = "/"
    # Loopback unless told otherwise; any other address requires a token (refused without).
    host: str = "127.0.0.1"
    port: int = 8000
    # TLS for the HTTP proxy: off the loopback the bearer token otherwise travels in clear.
    ssl_certfile: Optional[str] = None
    ssl_keyfile: Optional[str] = None
    # A request still unanswered after this long gets 408 (Serve's HTTP proxy).
    request_timeout_s: float = 60.0
    max_ongoing_requests: int = 64  # per replica
    cpus_per_replica: float = 1.0
    max_body_bytes: int = 1024 * 1024  # a larger request body gets 413
    # Bearer-token authentication: the token from token_file, else the environment variable
    # token_env; require_token refuses to start without one.
    token_env: Optional[str] = None
    token_file: Optional[str] = None
    require_token: bool = False

