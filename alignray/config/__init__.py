"""Structured configs: one dataclass per Hydra group, composed into `AlignrayConfig`.

The YAML files under `conf/` are validated against these dataclasses, so an override
that names a key which does not exist (`sft.lrr=1e-4`) fails with the key's name
instead of silently adding a field. `register_configs()` must run before
`@hydra.main` composes: every workflow calls it at import.
"""
from __future__ import annotations

from hydra.core.config_store import ConfigStore

from alignray.config.cluster import ClusterConfig
from alignray.config.collect import CandidatesConfig, CollectConfig, CollectQualityConfig
from alignray.config.data import DataConfig
from alignray.config.dpo import DPOConfig
from alignray.config.feedback import FeedbackConfig
from alignray.config.logger import LoggerConfig
from alignray.config.model import EmbeddedRecipe, ModelConfig
from alignray.config.ppo import PPOConfig
from alignray.config.reward_model import RewardModelConfig
from alignray.config.root import AlignrayConfig
from alignray.config.serve import ServeConfig
from alignray.config.sft import SFTConfig
from alignray.config.training import DeepSpeedConfig

__all__ = [
    "AlignrayConfig", "ClusterConfig", "CandidatesConfig", "CollectConfig", "CollectQualityConfig", "DataConfig", "DeepSpeedConfig", "DPOConfig", "EmbeddedRecipe",
    "FeedbackConfig", "LoggerConfig", "ModelConfig", "PPOConfig", "RewardModelConfig", "SFTConfig", "ServeConfig",
    "register_configs",
]


def register_configs() -> None:
    """Register the root schema; conf/config.yaml lists it first in its defaults."""
    ConfigStore.instance().store(name="alignray_schema", node=AlignrayConfig)
