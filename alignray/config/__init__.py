"""Structured configs: one dataclass per Hydra group, composed into `AlignrayConfig`.

The YAML files under `conf/` are validated against these dataclasses, so an override
that names a key which does not exist (`sft.lrr=1e-4`) fails with the key's name
instead of silently adding a field. `register_configs()` must run before
`@hydra.main` composes: every workflow calls it at import. An app turns the composed
config into these dataclasses once, at its start (`typed_config`): nothing below the apps
reads a Hydra node.
"""
from __future__ import annotations

from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from alignray.config.cluster import ClusterConfig
from alignray.config.collect import CandidatesConfig, CollectConfig, CollectQualityConfig
from alignray.config.data import DataConfig
from alignray.config.dpo import DPOConfig
from alignray.config.endpoint import EndpointConfig
from alignray.config.evaluation import EvaluationConfig
from alignray.config.feedback import FeedbackConfig
from alignray.config.judge import TeachJudgeConfig
from alignray.config.logger import LoggerConfig
from alignray.config.model import EmbeddedRecipe, ModelConfig
from alignray.config.moved import MovedKeyError, check_overrides
from alignray.config.ppo import PPOConfig
from alignray.config.reward_model import RewardModelConfig
from alignray.config.root import AlignrayConfig
from alignray.config.serve import ServeConfig
from alignray.config.sft import SFTConfig
from alignray.config.training import DeepSpeedConfig, TrainingConfig

__all__ = [
    "AlignrayConfig", "ClusterConfig", "CandidatesConfig", "CollectConfig", "CollectQualityConfig", "DataConfig",
    "DeepSpeedConfig", "DPOConfig", "EmbeddedRecipe", "EndpointConfig", "EvaluationConfig", "FeedbackConfig",
    "LoggerConfig", "ModelConfig", "MovedKeyError", "PPOConfig", "RewardModelConfig", "SFTConfig", "ServeConfig",
    "TeachJudgeConfig", "TrainingConfig", "check_overrides", "register_configs", "select", "structured", "typed_config",
]
T = TypeVar("T")


def register_configs() -> None:
    """Register the root schema; conf/config.yaml lists it first in its defaults."""
    ConfigStore.instance().store(name="alignray_schema", node=AlignrayConfig)


def typed_config(cfg: DictConfig) -> AlignrayConfig:
    """The composed config as `AlignrayConfig`, interpolations resolved: what an app hands on."""
    typed = OmegaConf.to_object(cfg)
    if not isinstance(typed, AlignrayConfig):
        raise TypeError(f"not a composed alignray config: {type(typed).__name__}")
    return typed


def select(cfg: Any, path: str) -> Any:
    """The value at the dotted ``path`` of a config's dataclasses (``"ppo.reward.kind"``)."""
    for name in path.split("."):
        cfg = getattr(cfg, name)
    return cfg


def structured(schema: type[T], values: Any) -> T:
    """``values`` (a mapping, strings allowed) checked against ``schema``, as an instance of it:
    for entry points Hydra does not compose (Serve's `app_builder` arguments). An unknown
    key or a bad value is an error that names it."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
