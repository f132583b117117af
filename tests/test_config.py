"""The Hydra tree composes against the structured configs, and rejects misspelt keys."""
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from alignray.workflows.common import CONFIG_PATH


def _compose(overrides):
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base=None):
        return compose(config_name="config", overrides=overrides)


def test_default_config_composes_with_every_group():
    cfg = _compose([])
    for group in ("model", "data", "cluster", "sft", "feedback", "reward_model", "ppo", "dpo", "serve"):
        assert group in cfg
    assert cfg.model.source == "embedded" and cfg.serve.host == "127.0.0.1"


def test_overrides_are_typed():
    cfg = _compose(["sft.lr=1e-4", "cluster=cpu_test"])
    assert cfg.sft.lr == 1e-4 and cfg.cluster.num_gpus == 4
    with pytest.raises(Exception, match="lr"):
        _compose(["sft.lr=fast"])


def test_misspelt_key_is_an_error_naming_it():
    with pytest.raises(ConfigCompositionException) as info:
        _compose(["sft.lrr=1e-4"])
    assert "lrr" in str(info.value) + str(info.value.__cause__)
