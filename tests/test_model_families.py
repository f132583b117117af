"""Every common model family through every loss and the generation path, in one process.

Tiny random-weight models built here from each family's transformers config (no downloads),
over the embedded model's tokenizer: one step of SFT's loss, the reward model's (its score
head), PPO's policy and value losses and DPO's, each with finite loss and gradients reaching
the weights; and sampled log-probs matching a full forward (the 1e-4 check of
tests/test_static_decoder.py) on whichever path ``make_decoder("auto")`` picks for the family.
For Llama and Qwen2 also the full Ray path: SFT on Ray Train, then two PPO steps through
the rollout pool, each sync checked on the probe.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers

from alignray.actors.critic import ValueModel
from alignray.config import typed_config
from alignray.core.metrics import read_metrics
from alignray.dpo.training import dpo_loss, pair_logprobs, pair_tensors, tokenize_pairs_batch
from alignray.models.generation import HFDecoder, end_token_ids, response_logits, sample_responses, token_logprobs
from alignray.models.modeling import check_model_supported, load_causal_lm, load_tokenizer
from alignray.models.static_decoder import generation_path, make_decoder
from alignray.ppo import clipped_surrogate_loss, clipped_value_loss
from alignray.reward.losses import bradley_terry_per_pair
from alignray.reward.model import encode_texts, init_reward_model, reward_logits
from alignray.sft.training import collate_token_rows, response_token_loss, tokenize_batch
from alignray.workflows.common import compose_app_config
from alignray.workflows.ppo import run_ppo
from alignray.workflows.sft import run_sft

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=128)
GROUPED = dict(SMALL, num_key_value_heads=2)  # grouped-query attention, as every recent family
FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**GROUPED),
    "qwen2": lambda: transformers.Qwen2Config(**GROUPED),  # biased q/k/v projections
    "qwen3": lambda: transformers.Qwen3Config(**GROUPED, head_dim=8),  # q/k norms
    "mistral": lambda: transformers.MistralConfig(**GROUPED, sliding_window=None),
    "gemma2": lambda: transformers.Gemma2Config(**GROUPED, head_dim=8, sliding_window=16),  # soft-capping
    "phi3": lambda: transformers.Phi3Config(**GROUPED, pad_token_id=0),  # fused qkv and gate/up
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**SMALL),
    "opt": lambda: transformers.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                          max_position_embeddings=128, word_embed_proj_dim=32),
    "gpt2": lambda: transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128),
}
PROMPTS = ["so happy today", "the worst day of", "my cat is"]
GOOD, BAD = ["because the sun is out", "but it got better", "asleep on my bed"], ["awful", "ugh no", "gone bad"]


def build_family_model(name: str, tokenizer_source, folder) -> str:
    """A random-weight model of the family ``name`` saved in ``folder`` with the tokenizer of
    ``tokenizer_source``, its special tokens set as the tokenizer's."""
    tokenizer = load_tokenizer(tokenizer_source)
    config = FAMILIES[name]()
    config.vocab_size = len(tokenizer)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (tokenizer.bos_token_id, tokenizer.eos_token_id,
                                                                     tokenizer.pad_token_id)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tiny_base_model, tmp_path_factory):
    """(model type, folder) of each family."""
    return request.param, build_family_model(request.param, tiny_base_model, tmp_path_factory.mktemp(request.param))


def demonstrations(responses: list[str]) -> dict[str, np.ndarray]:
    return {"prompt": np.array(PROMPTS, dtype=object), "response": np.array(responses, dtype=object)}


def assert_learns(loss: torch.Tensor, module: torch.nn.Module) -> None:
    """A finite loss whose gradient reaches the weights, every one of them finite."""
    loss.backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_the_family_is_accepted(family):
    check_model_supported(family[1])


def test_sft_and_dpo_losses(family):
    _, folder = family
    model = load_causal_lm(folder, torch.device("cpu"))
    batch = collate_token_rows(tokenize_batch(demonstrations(GOOD), folder, 16, 16), torch.device("cpu"))
    total, counts = response_token_loss(model, batch)
    assert_learns(total / counts["units"], model)
    model.zero_grad()
    pairs = tokenize_pairs_batch(demonstrations(GOOD) | {"chosen": np.array(GOOD, dtype=object),
                                                         "rejected": np.array(BAD, dtype=object),
                                                         "example_id": np.arange(3), "weight": np.ones(3)},
                                 folder, 16, 16)
    chosen, rejected = pair_logprobs(model, pair_tensors(pairs, "cpu"))
    loss, _ = dpo_loss(chosen, rejected, chosen.detach() - 1.0, rejected.detach(), beta=0.1)
    assert_learns(loss, model)


def test_reward_model_with_its_score_head(family):
    _, folder = family
    model, tokenizer = init_reward_model(folder, max_length=32)
    chosen = encode_texts(tokenizer, PROMPTS, GOOD, 32)
    rejected = encode_texts(tokenizer, PROMPTS, BAD, 32)
    loss = bradley_terry_per_pair(reward_logits(model, **chosen), reward_logits(model, **rejected)).mean()
    assert_learns(loss, model)
    head = next(p for name, p in model.named_parameters() if "score" in name)
    assert head.grad.abs().sum() > 0


def test_ppo_policy_and_value_losses(family):
    _, folder = family
    policy = load_causal_lm(folder, torch.device("cpu"))
    tokenizer = load_tokenizer(folder)
    ids, mask = prompt_batch(tokenizer)
    with torch.no_grad():
        sampled = sample_responses(policy, ids, mask, max_new_tokens=6, end_token_ids=end_token_ids(policy, tokenizer),
                                   pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))
    logprobs = token_logprobs(response_logits(policy, ids, mask, sampled.response_ids), sampled.response_ids)
    advantages = torch.randn(sampled.response_ids.shape, generator=torch.Generator().manual_seed(1))
    loss, _ = clipped_surrogate_loss(logprobs, sampled.logprobs, advantages, sampled.response_mask, clip_eps=0.2)
    assert_learns(loss, policy)
    critic = ValueModel(folder)
    values = critic(ids, mask, sampled.response_ids)
    assert values.shape == sampled.response_ids.shape
    loss, _ = clipped_value_loss(values, values.detach(), values.detach() + 1.0, sampled.response_mask, 0.2)
    assert_learns(loss, critic)


def prompt_batch(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)  # left padding
    return encoded["input_ids"], encoded["attention_mask"]


def test_generation_matches_a_full_forward_on_the_familys_path(family):
    name, folder = family
    model = load_causal_lm(folder, torch.device("cpu")).eval()
    tokenizer = load_tokenizer(folder)
    ids, mask = prompt_batch(tokenizer)
    decoder = make_decoder(model, "auto", max_len=ids.shape[1] + 10)
    expected = "static" if name in ("gpt2", "llama", "qwen2", "qwen3", "mistral") else "hf_static_cache"
    assert generation_path(decoder) == expected
    sampled = sample_responses(decoder, ids, mask, max_new_tokens=10, end_token_ids=None,
                               pad_token_id=tokenizer.pad_token_id, temperature=0.8,
                               generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = token_logprobs(response_logits(model, ids, mask, sampled.response_ids), sampled.response_ids, 0.8)
    assert (full - sampled.logprobs)[sampled.response_mask].abs().max() < 1e-4
    plain = sample_responses(HFDecoder(model), ids, mask, max_new_tokens=10, end_token_ids=None,
                             pad_token_id=tokenizer.pad_token_id, temperature=0.8,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain.response_ids, sampled.response_ids)  # the same draws, the same tokens


def test_a_model_the_phases_cannot_train_is_refused_naming_its_type_and_what_it_lacks(tmp_path):
    transformers.T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=4, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="type 't5' is not supported: it lacks a causal LM class"):
        check_model_supported(tmp_path)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_sft_on_ray_train_then_two_ppo_steps_through_the_rollout_pool(ray_cluster, tiny_base_model, prompts_path,
                                                                       tmp_path, name):
    from tests.test_ppo_actors import small_config
    from tests.sft_setup import demonstrations_file
    base = build_family_model(name, tiny_base_model, tmp_path / "base")
    sft_cfg = compose_app_config([f"workdir={tmp_path}", "data=files",
                                  f"data.demonstrations_path={demonstrations_file(tmp_path, 60)}",
                                  "data.heldout_fraction=0.3", "sft.max_steps=2", "sft.batch_size=4",
                                  "sft.eval_rows=8", "sft.warmup_steps=0", "sft.log_every=1"])
    sft = run_sft(sft_cfg, base)
    records = read_metrics(sft / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    # the held-out loss reads the first 8 rows: at most 8 responses of max_response_tokens + 1
    assert all(r["heldout_units"] <= 8 * (sft_cfg.data.max_response_tokens + 1)
               for r in records if "heldout_units" in r)
    cfg = small_config(sft / "model", prompts_path)
    # no critic (its loss ran above, per family): the pool, the reference and the policy are the point
    cfg.workdir, cfg.ppo.steps, cfg.ppo.monitor.every, cfg.ppo.advantage_estimator = str(tmp_path), 2, 0, "reinforce_pp"
    steps = read_metrics(run_ppo(typed_config(cfg), str(sft / "model"), None) / "metrics.jsonl")
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["probe_max_abs_diff"] <= cfg.ppo.sync.tolerance for r in steps)
    assert all(math.isfinite(r["policy_loss"]) and math.isfinite(r["kl"]) for r in steps)


def test_the_held_out_rows_an_evaluation_reads_are_sized_to_the_model(tiny_base_model, tmp_path):
    from alignray.core.train_loop import EVAL_FLOP_BUDGET, MIN_EVAL_ROWS, eval_row_cap
    assert eval_row_cap(12, str(tiny_base_model), 61) == 12 and eval_row_cap(0, str(tiny_base_model), 61) == 0
    tiny = eval_row_cap(None, str(tiny_base_model), 61)
    assert tiny > 1505  # the embedded model reads every held-out tweet it has
    # the SmolLM2-135M shape (its config alone: 134.5M parameters): 2e12 / (2 x 134.5M x 64) = 116 rows
    # of 64 tokens, and never below the floor
    transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True
                             ).save_pretrained(tmp_path)
    assert eval_row_cap(None, str(tmp_path), 64) == int(EVAL_FLOP_BUDGET / (2 * 134.5e6 * 64)) == 116
    assert eval_row_cap(None, str(tmp_path), 1024) == MIN_EVAL_ROWS
