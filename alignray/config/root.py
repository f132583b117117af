"""The root config every workflow receives."""
from __future__ import annotations

from dataclasses import dataclass, field

from alignray.config.cluster import ClusterConfig
from alignray.config.collect import CollectConfig
from alignray.config.data import DataConfig
from alignray.config.dpo import DPOConfig
from alignray.config.evaluation import EvaluationConfig
from alignray.config.feedback import FeedbackConfig
from alignray.config.judge import TeachJudgeConfig
from alignray.config.logger import LoggerConfig
from alignray.config.model import ModelConfig
from alignray.config.ppo import PPOConfig
from alignray.config.reward_model import RewardModelConfig
from alignray.config.serve import ServeConfig
from alignray.config.sft import SFTConfig


@dataclass
class AlignrayConfig:
    # `name` labels a run; `workdir` holds every phase's output, one folder per phase and
    # config hash, so a re-run with the same settings reuses what already exists.
    name: str = "default"
    workdir: str = "runs/${name}"
    # Where built base models live between runs (the embedded default is pretrained once).
    cache_dir: str = "${oc.env:ALIGNRAY_CACHE,${oc.env:HOME,.}/.cache/alignray}"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    teach_judge: TeachJudgeConfig = field(default_factory=TeachJudgeConfig)
    eval: EvaluationConfig = field(default_factory=EvaluationConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
