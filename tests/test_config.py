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
    for group in ("model", "data", "cluster", "sft", "feedback", "reward_model", "ppo", "dpo", "eval", "serve"):
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


def test_an_app_hands_on_the_whole_config_as_dataclasses():
    from alignray.config import AlignrayConfig, EvaluationConfig, typed_config
    from alignray.config.ppo import CriticConfig, PolicyConfig, RolloutConfig, SyncConfig
    cfg = typed_config(_compose(["experiment=tiny"]))
    assert isinstance(cfg, AlignrayConfig) and isinstance(cfg.eval, EvaluationConfig)
    assert (type(cfg.ppo.rollout), type(cfg.ppo.policy), type(cfg.ppo.critic), type(cfg.ppo.sync)) == (
        RolloutConfig, PolicyConfig, CriticConfig, SyncConfig)
    assert cfg.eval.num_prompts == 32 and cfg.workdir == "runs/tiny"  # presets and interpolations applied


def test_the_trained_phases_share_one_training_loop_class_and_keep_their_defaults():
    from alignray.config import DPOConfig, RewardModelConfig, SFTConfig, TrainingConfig
    assert all(issubclass(c, TrainingConfig) for c in (SFTConfig, DPOConfig, RewardModelConfig))
    sft, dpo, reward = SFTConfig(), DPOConfig(), RewardModelConfig()
    assert (sft.lr, sft.warmup_steps, sft.epochs, sft.batch_size, sft.checkpoint_every) == (3e-4, 20, 1, 32, 100)
    assert (dpo.lr, dpo.warmup_steps, dpo.max_steps, dpo.checkpoint_every) == (1e-4, 10, 300, 100)
    assert (reward.lr, reward.epochs, reward.batch_size, reward.max_steps, reward.checkpoint_every) == (
        1e-3, 3, 128, 150, 0)
    assert all(c.resume and c.interrupt_after_steps == 0 for c in (sft, dpo, reward))


def test_serve_and_collect_share_one_endpoint_class():
    from alignray.config import CollectConfig, EndpointConfig, ServeConfig
    from alignray.serving.endpoint import http_options
    assert issubclass(ServeConfig, EndpointConfig) and issubclass(CollectConfig, EndpointConfig)
    assert http_options(CollectConfig(), "collect") == {"host": "127.0.0.1", "port": 8010, "request_timeout_s": 30.0}
    assert http_options(ServeConfig(), "serve")["port"] == 8000


@pytest.mark.parametrize("old, new", [("ppo.lr=1e-5", "ppo.lr moved to ppo.policy.lr"),
                                      ("+ppo.critic_lr=1", "ppo.critic_lr moved to ppo.critic.lr"),
                                      ("ppo.eval.num_prompts=8", "ppo.eval.num_prompts moved to eval.num_prompts"),
                                      ("ppo.weight_sync=broadcast", "ppo.weight_sync moved to ppo.sync.method"),
                                      ("ppo.eval.judge=http", "ppo.eval.judge moved to eval.judge.kind"),
                                      ("ppo.monitor.judge_url=x", "ppo.monitor.judge_url moved to ppo.monitor.judge.url"),
                                      ("feedback.ai_judge_path=/m",
                                       "feedback.ai_judge_path moved to feedback.ai_judge.model_path"),
                                      ("feedback.judge_actors=2",
                                       "feedback.judge_actors moved to feedback.ai_judge.actors"),
                                      ("feedback.judge_batch_size=8",
                                       "feedback.judge_batch_size moved to feedback.ai_judge.batch_size"),
                                      ("feedback.judge_max_reply_tokens=8",
                                       "feedback.judge_max_reply_tokens moved to feedback.ai_judge.max_reply_tokens")])
def test_a_moved_key_is_refused_with_its_new_path(old, new):
    from alignray.config import MovedKeyError
    from alignray.workflows.common import compose_app_config
    with pytest.raises(MovedKeyError, match=new.replace(".", r"\.")):
        compose_app_config([old])
    assert compose_app_config(["ppo.policy.lr=1e-5", "eval.num_prompts=8"]).ppo.policy.lr == 1e-5


def test_a_moved_key_in_an_experiment_file_is_refused(tmp_path):
    from alignray.config import MovedKeyError, check_overrides
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - tiny\nppo:\n  rollout_workers: 4\n  kl:\n    coef: 0.1\n")
    with pytest.raises(MovedKeyError, match=r"ppo\.rollout_workers moved to ppo\.rollout\.workers \(in .*mine.yaml\)"):
        check_overrides(["experiment=mine"], tmp_path)
    check_overrides(["experiment=tiny", "ppo.kl.coef=0.1", "--cfg", "job"], tmp_path)  # nothing moved


def test_no_shipped_preset_names_a_moved_key():
    from alignray.config.moved import file_keys, moved_to
    import yaml
    from pathlib import Path
    for path in Path(CONFIG_PATH).rglob("*.yaml"):
        tree = yaml.safe_load(path.read_text()) or {}
        package = "" if "@package _global_" in path.read_text() or path.parent == Path(CONFIG_PATH) \
            else f"{path.parent.name}."
        assert not [key for key in file_keys(tree) if moved_to(package + key)], path
