"""LoRA through peft in every phase (alignray/models/lora.py): a rollout worker's merge equals
peft's own; SFT and DPO steps train the adapters alone and save the merged model beside the
adapter; a LoRA reward model learns through its trainable head; PPO with a LoRA policy and
critic on the real Ray actors (no reference actor, the adapter alone synced and merged, the
probe check, a checkpoint restoring adapter and optimiser state exactly)."""
from __future__ import annotations

import numpy as np
import pytest
import ray
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from alignray.config.dpo import DPOConfig
from alignray.config.lora import LoRAConfig
from alignray.config.reward_model import RewardModelConfig
from alignray.config.sft import SFTConfig
from alignray.config.training import DeepSpeedConfig
from alignray.dpo.training import ReferenceLogprobs, pair_tensors, tokenize_pairs_batch
from alignray.models import deepspeed_strategy as ds
from alignray.models.generation import response_logits, token_logprobs
from alignray.models.lora import (AdapterMerger, adapter_state, as_merged, merged_model, trainable_parameters,
                                  with_lora)
from alignray.models.modeling import load_causal_lm, load_tokenizer
from alignray.reward.model import reward_logits
from alignray.sft.training import tokenize_batch
from alignray.workflows.dpo import dpo_task
from alignray.workflows.reward_model import reward_task
from alignray.workflows.sft import sft_task
from tests.conftest import OPENINGS
from tests.test_ppo_actors import make_coordinator, small_config

LORA = LoRAConfig(rank=4, alpha=8.0)
CPU = torch.device("cpu")


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random LoRA B factors (peft starts them at zero, an adapter that changes nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=128))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_rollout_workers_merge_equals_peft_merge_from_the_base_weights(family, tiny_base_model):
    """GPT-2's Conv1D (stored transposed) and Llama's Linear; two syncs in a row: the second
    starts from the base weights again, not from the first merge. The policy's probe-side view
    (``as_merged``) computes exactly what the worker does, and leaves the policy as it was."""
    build = (lambda: load_causal_lm(tiny_base_model, CPU)) if family == "gpt2" else tiny_llama
    policy, worker = with_lora(build(), LORA), build()
    merger = AdapterMerger(worker, LORA)
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    for seed in (1, 2):
        randomised(policy, seed)
        merger.merge(adapter_state(policy))
        with torch.no_grad():
            expected = merged_model(policy)(ids).logits
            assert torch.allclose(worker(ids).logits, expected, atol=1e-5)
            assert torch.allclose(policy(ids).logits, expected, atol=1e-5)  # peft's unmerged forward
            before = {name: p.clone() for name, p in policy.named_parameters()}
            with as_merged(policy):
                assert torch.equal(policy(ids).logits, worker(ids).logits)
            assert all(torch.equal(p, before[name]) for name, p in policy.named_parameters())
            assert torch.allclose(policy(ids).logits, expected, atol=1e-5)  # the adapter is on again


@pytest.fixture(scope="module")
def one_process_world():
    ds.init_distributed_if_needed()


def sft_rows(model_path) -> dict[str, np.ndarray]:
    prompts = np.array(OPENINGS[:8], dtype=object)
    responses = np.array(["is the best thing ever"] * 8, dtype=object)
    return tokenize_batch({"prompt": prompts, "response": responses}, str(model_path), 16, 8)


def test_lora_sft_trains_the_adapters_alone_and_saves_merged_model_and_adapter(one_process_world, tiny_base_model,
                                                                               tmp_path):
    task = sft_task(SFTConfig(lora=LORA))
    model = task.build_model(str(tiny_base_model))
    trainable, total = trainable_parameters(model)
    assert 0 < trainable < total / 10
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    engine = ds.build_engine(model, DeepSpeedConfig(zero_stage=0), lr=1e-2, total_steps=0, warmup_steps=0,
                             micro_batch_size=8)
    batch = task.collate(sft_rows(tiny_base_model), CPU)
    losses = []
    for _ in range(4):
        loss_sum, sums = task.loss(engine, batch)
        ds.backward_and_step(engine, loss_sum / sums["units"])
        losses.append(loss_sum.item() / sums["units"])
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if name in frozen)

    tokenizer = load_tokenizer(tiny_base_model)
    out = ds.export_hf(engine, tokenizer, tmp_path / "model")
    merged = AutoModelForCausalLM.from_pretrained(out)  # a plain model: no peft needed
    with_adapter = PeftModel.from_pretrained(load_causal_lm(tiny_base_model, CPU), out / "adapter")
    ids = batch["input_ids"]
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        assert torch.allclose(merged(ids).logits, trained, atol=1e-4)
        assert torch.allclose(with_adapter(ids).logits, trained, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "## LoRA: merged model and adapter" in card and "PeftModel.from_pretrained" in card
    assert "AutoModelForCausalLM" in card


def preference_rows(prompts: list[str]) -> dict[str, np.ndarray]:
    """Pairs with a known answer: a cheerful response beats a gloomy one, for every prompt."""
    good, bad = ["so good and happy", "great fun today", "lovely and nice"], ["so bad and sad", "awful day", "terrible"]
    rows = [(p, good[i % 3], bad[(i + 1) % 3]) for i, p in enumerate(prompts) for _ in range(2)]
    n = len(rows)
    return {"prompt": np.array([r[0] for r in rows], dtype=object), "chosen": np.array([r[1] for r in rows], dtype=object),
            "rejected": np.array([r[2] for r in rows], dtype=object), "is_pair": np.ones(n, dtype=bool),
            "margin": np.zeros(n, dtype=np.float32), "weight": np.ones(n, dtype=np.float32),
            "target": np.zeros(n, dtype=np.float32)}


def test_a_lora_reward_model_learns_through_its_trainable_head(tiny_base_model):
    """Adapters plus the whole (new) score head train; held-out prompts are ranked well above chance."""
    torch.manual_seed(0)
    task = reward_task(str(tiny_base_model), RewardModelConfig(lora=LORA, max_length=32))
    model = task.build_model(str(tiny_base_model))
    head = {name: p.detach().clone() for name, p in model.named_parameters() if "score" in name and p.requires_grad}
    assert head, "the score head must train"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    train = task.collate(preference_rows(OPENINGS[:8]), CPU)
    for _ in range(15):
        loss_sum, sums = task.loss(model, train)
        optimizer.zero_grad()
        (loss_sum / sums["units"]).backward()
        optimizer.step()
    assert any(not torch.equal(p, head[name]) for name, p in model.named_parameters() if name in head)
    heldout = task.collate(preference_rows(OPENINGS[8:]), CPU)
    with torch.no_grad():
        rewards = reward_logits(model, heldout["input_ids"], heldout["attention_mask"])
    accuracy = (rewards[heldout["chosen_index"]] > rewards[heldout["rejected_index"]]).float().mean().item()
    assert accuracy >= 0.75


def test_lora_dpo_moves_the_policy_from_the_reference_it_keeps(tiny_base_model):
    torch.manual_seed(0)
    task = dpo_task(DPOConfig(lora=LORA, beta=0.5))
    policy = task.build_model(str(tiny_base_model))
    prefs = preference_rows(OPENINGS[:4])
    rows = tokenize_pairs_batch(prefs | {"example_id": np.arange(len(prefs["prompt"]))}, str(tiny_base_model), 16, 8)
    rows = ReferenceLogprobs(str(tiny_base_model))(rows)
    batch = task.collate(rows, CPU)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    margins = []
    for _ in range(4):
        loss_sum, sums = task.loss(policy, batch)
        optimizer.zero_grad()
        (loss_sum / sums["units"]).backward()
        optimizer.step()
        margins.append(loss_sum.item() / sums["units"])
    assert margins[-1] < margins[0]  # the DPO loss falls
    with torch.no_grad(), policy.disable_adapter():  # with the adapter off, the policy is its reference
        chosen = policy(input_ids=pair_tensors(rows, CPU)["input_ids"]).logits
    with torch.no_grad():
        assert torch.allclose(chosen, load_causal_lm(tiny_base_model, CPU)(
            input_ids=pair_tensors(rows, CPU)["input_ids"]).logits, atol=1e-5)


def policy_state(coordinator) -> tuple[dict[str, torch.Tensor], dict]:
    """The policy's adapter and its optimiser state, read from its actor."""
    return ray.get(coordinator.actors.policy.actors[0].__ray_call__.remote(
        lambda actor: (adapter_state(actor.engine.module), actor.engine.optimizer.state_dict())))


def assert_same_state(got, expected) -> None:
    if isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected)
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys()
        for key in expected:
            assert_same_state(got[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert_same_state(a, b)
    else:
        assert got == expected


def test_ppo_with_lora_policy_and_critic_syncs_the_adapter_and_serves_its_own_reference(
        ray_cluster, tiny_base_model, prompts_path, tmp_path):
    cfg = small_config(tiny_base_model, prompts_path)
    cfg.ppo.policy.lora.rank = cfg.ppo.critic.lora.rank = 4
    cfg.ppo.policy.lr = 1e-2
    coordinator = make_coordinator(cfg, tiny_base_model, tmp_path)
    try:
        actors = coordinator.actors
        roles = [p["role"] for p in ray.get([a.placement.remote() for a in actors.model_actors().values()])]
        assert roles == ["policy", "critic", "reward"] and actors.reference is None  # no reference actor
        assert "adapter disabled" in actors.reference_description()  # what the summary and report say
        critic_params = ray.get(actors.critic.actors[0].__ray_call__.remote(
            lambda actor: trainable_parameters(actor.model)))
        assert critic_params[0] < critic_params[1] / 10  # the critic's adapters and value head alone
        metrics = [coordinator.step(step) for step in range(2)]
        full = sum(t.numel() * 4 for t in load_causal_lm(tiny_base_model, CPU).state_dict().values())
        for m in metrics:
            assert 0 < m["sync/bytes_per_worker"] < full / 10  # the adapter alone
            assert m["probe_max_abs_diff"] <= 1e-5 and m["rollout_logprob_gap_max"] < 1e-4
        sync = coordinator.weights.sync(version=2)  # the trained adapter, merged by every worker
        assert sync["probe_max_abs_diff"] <= 1e-5
        prompt_ids, prompt_mask, response_ids, mask = coordinator.weights.probe
        sequences = (prompt_ids, prompt_mask, response_ids)
        reference = ray.get(actors.reference_logprobs(*sequences))
        policy = ray.get(actors.policy.actors[0].logprobs.remote(*sequences))
        with torch.no_grad():  # the SFT model's own log-probs
            logits = response_logits(load_causal_lm(tiny_base_model, CPU), prompt_ids, prompt_mask, response_ids)
            expected = token_logprobs(logits, response_ids, 1.0)
        assert (reference - expected)[mask].abs().max() < 1e-5  # the adapter disabled is the SFT model
        assert (policy - reference)[mask].abs().max() > 1e-3  # and training moved the policy

        coordinator.save_checkpoint(2)  # the resume path: a run restarted after step 2 continues from here
        saved = policy_state(coordinator)
        coordinator.step(2)
        moved = policy_state(coordinator)[0]
        assert any(not torch.equal(moved[name], tensor) for name, tensor in saved[0].items())
        assert coordinator.resume() == 2
        assert_same_state(policy_state(coordinator), saved)
    finally:
        coordinator.actors.shutdown()
