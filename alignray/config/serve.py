"""The reward model behind Ray Serve."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class ServeConfig:
    model_path: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8000
    num_replicas: int = 1
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.01
