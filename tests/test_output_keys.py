"""Every phase's output folder is keyed by what changes its result and by nothing else
(alignray.core.artifacts declares it per phase; alignray.workflows.common computes it), checked on
configs composed by Hydra exactly as the apps compose them."""
import dataclasses

import pytest

from alignray.core.artifacts import (
    DATA,
    DPO,
    EVALUATION,
    FEEDBACK,
    JUDGE,
    PHASE_OUTPUTS,
    PPO,
    REWARD,
    SFT,
)
from alignray.pretrain.base_model import resolve_base_model
from alignray.workflows.common import compose_app_config, output_key, phase_settings
from alignray.workflows.sft import sft_output_dir

INPUTS = {name: f"/models/{name}" for phase in PHASE_OUTPUTS for name in phase.input_names}


def composed(*overrides: str):
    return compose_app_config(["workdir=/tmp/alignray-keys", *overrides])


def key(phase, *overrides: str) -> str:
    return output_key(composed(*overrides), phase, **{name: INPUTS[name] for name in phase.input_names})


def test_a_new_seed_with_a_hub_model_retrains_sft():
    """model=hf names the same base model for every seed, so only the seed in the key tells
    the runs apart."""
    folders = []
    for seed in (0, 1):
        cfg = composed("model=hf", "model.path=/models/any-causal-lm", f"seed={seed}")
        base = resolve_base_model(cfg.model, cfg.cache_dir, cfg.seed)
        assert base == "/models/any-causal-lm"
        folders.append(sft_output_dir(cfg, base))
    assert folders[0] != folders[1] and all(f.name.startswith("sft-") for f in folders)


@pytest.mark.parametrize("phase", [p for p in PHASE_OUTPUTS if "seed" in p.settings], ids=lambda p: p.prefix)
def test_every_seeded_phase_has_the_seed_in_its_key(phase):
    assert key(phase, "seed=0") != key(phase, "seed=1")


def test_the_evaluation_size_reuses_ppo_and_reruns_only_the_evaluation():
    small, large = ("experiment=tiny", "eval.num_prompts=8"), ("experiment=tiny", "eval.num_prompts=16")
    for phase in (SFT, FEEDBACK, REWARD, PPO):
        assert key(phase, *small) == key(phase, *large), phase.prefix
    assert key(EVALUATION, *small) != key(EVALUATION, *large)


@pytest.mark.parametrize("phase, override", [
    (SFT, "sft.resume=false"), (SFT, "sft.log_every=1"), (SFT, "sft.interrupt_after_steps=5"),
    (PPO, "ppo.resume=false"), (REWARD, "reward_model.log_every=1"),
    # every trained phase's run control (the training loop's settings, one class)
    (REWARD, "reward_model.resume=false"), (REWARD, "reward_model.interrupt_after_steps=3"),
    (DPO, "dpo.resume=false"), (DPO, "dpo.interrupt_after_steps=3"),
    (JUDGE, "teach_judge.resume=false"), (JUDGE, "teach_judge.base_model_path=/elsewhere"),
    (PPO, "eval.samples_to_write=3"), (PPO, "eval.kl_budget=2.0"), (PPO, "eval.max_pairs=10"),
    # config keys that only name an input: the input itself is in the key
    (FEEDBACK, "feedback.sft_model_path=/elsewhere"), (REWARD, "reward_model.feedback_dir=/elsewhere"),
    (PPO, "ppo.sft_model_path=/elsewhere"), (EVALUATION, "eval.policy_path=/elsewhere"),
    # settings other phases read
    (SFT, "ppo.policy.lr=0.5"), (FEEDBACK, "reward_model.lr=0.5"), (REWARD, "ppo.steps=7"), (DATA, "seed=4"),
])
def test_what_does_not_change_a_phase_leaves_its_key(phase, override):
    assert key(phase) == key(phase, override)


@pytest.mark.parametrize("phase, override", [
    (SFT, "sft.lr=0.5"), (SFT, "sft.deepspeed.zero_stage=3"), (SFT, "data.max_response_tokens=20"),
    (FEEDBACK, "feedback.num_prompts=9"), (FEEDBACK, "data.prompt_words=5"),
    (REWARD, "reward_model.margin=0.5"), (PPO, "ppo.kl.coef=0.05"), (PPO, "data.max_prompt_tokens=20"),
    (EVALUATION, "ppo.rollout.temperature=0.7"), (EVALUATION, "eval.prompts_path=/data/prompts.parquet"),
    (EVALUATION, "eval.judge.kind=http"), (EVALUATION, "eval.pairs_path=/data/heldout.parquet"),
    (EVALUATION, "eval.max_pairs=10"),
    (EVALUATION, "eval.judge.model_path=/models/gold"), (EVALUATION, "eval.judge.url=http://h:1"),
    (DATA, "data.heldout_fraction=0.1"), (SFT, "sft.lora.rank=8"), (REWARD, "reward_model.lora.rank=8"),
    (PPO, "ppo.policy.lora.rank=8"), (PPO, "ppo.critic.lora.target_modules=c_attn"),
])
def test_what_changes_a_phase_changes_its_key(phase, override):
    assert key(phase) != key(phase, override)


def test_the_upstream_folders_are_in_the_key_and_must_all_be_given():
    cfg = composed()
    assert output_key(cfg, PPO, sft_model="/a", reward_model="/b") != output_key(cfg, PPO, sft_model="/a",
                                                                                  reward_model="/c")
    with pytest.raises(TypeError, match="reward_model"):
        output_key(cfg, PPO, sft_model="/a")


def test_a_moved_workdir_keeps_its_keys_and_a_path_outside_it_counts_as_given():
    """Two clones' runs (or one run folder copied elsewhere) key their phases alike: an
    upstream folder inside the workdir counts by its place there."""
    here, there = (compose_app_config([f"workdir={root}/runs"]) for root in ("/clone1", "/clone2"))
    assert output_key(here, FEEDBACK, policy="/clone1/runs/sft-1/model") == output_key(
        there, FEEDBACK, policy="/clone2/runs/sft-1/model")
    assert output_key(here, FEEDBACK, policy="/clone1/runs/sft-1/model") != output_key(
        here, FEEDBACK, policy="/clone1/runs/sft-2/model")
    assert output_key(here, FEEDBACK, policy="/models/sft") != output_key(there, FEEDBACK, policy="/other/sft")


def test_a_declared_path_the_config_lacks_is_an_error_naming_it():
    cfg = composed()
    for phase in PHASE_OUTPUTS:
        assert phase_settings(cfg, phase)  # every declared path exists
    with pytest.raises(KeyError, match="sft.lrr"):
        phase_settings(cfg, dataclasses.replace(SFT, settings=("sft.lrr",)))
    with pytest.raises(KeyError, match="sft.resumed"):
        phase_settings(cfg, dataclasses.replace(SFT, ignored=("sft.resumed",)))
