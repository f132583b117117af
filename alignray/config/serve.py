"""The reward model behind Ray Serve (`python -m alignray.workflows.serve serve.model_path=...`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from alignray.config.endpoint import EndpointConfig


@dataclass
class ServeConfig(EndpointConfig):
    # The endpoint's keys (host, port, TLS, token, ...): EndpointConfig.
    app_name: str = "alignray-reward"
    token_env: Optional[str] = "ALIGNRAY_SERVE_TOKEN"
    # Any folder saved by alignray.reward.model.save_reward_model.
    model_path: Optional[str] = None
    # Reported by /v1/model and every score; defaults to the model folder's name.
    model_name: Optional[str] = None
    # Replicas: a fixed count, or autoscaling between min and max replicas.
    num_replicas: int = 1
    autoscaling: bool = False
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 8.0
    gpus_per_replica: float = 0.0
    # fp32 scores exactly as training and the PPO reward actor do; "auto" is bf16 on a GPU
    # that supports it (faster, rewards differ in the third decimal or so).
    precision: str = "fp32"
    # Requests waiting for a replica beyond this get 503 (which clients retry), so a
    # flood of requests cannot grow the queue without bound.
    max_queued_requests: int = 1024
    # Cross-client batching (@serve.batch): requests merged into one scoring call, and how
    # long the first request waits for others. max_batch_size=1 turns batching off.
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.01
    # Items per forward pass inside one scoring call: bounds activation memory.
    forward_batch_size: int = 64
    # Request limits: beyond them a request gets 413 before any scoring.
    max_items_per_request: int = 256
    max_chars_per_item: int = 8192
