"""The fast generation path (alignray/models/static_decoder.py) against the reference path.

Both paths sample with the same draws, so for one seed they pick the same tokens; the
log-probs the fast path records must match a full forward of the reference model over the
sampled tokens (what PPO's ratio is taken against) within LOGPROB_TOLERANCE in fp32.
The CUDA-graph capture itself needs a GPU (benchmarks/ppo_gpu.py); what it replays, the
static step over fixed buffers, is what runs here.
"""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from alignray.models.generation import HFDecoder, response_logits, sample_responses, token_logprobs
from alignray.models.static_decoder import StaticDecoder, make_decoder

LOGPROB_TOLERANCE = 1e-4
VOCAB, EOS, PAD = 96, 3, 0


def gpt2():
    config = GPT2Config(vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config)


def llama():  # grouped-query attention, as SmolLM2 (9 heads over 3 key/value heads)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def left_padded_prompts(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (batch,), generator=generator)
    width = int(lengths.max())
    ids = torch.randint(4, VOCAB, (batch, width), generator=generator)
    mask = torch.arange(width).flip(0)[None, :] < lengths[:, None]
    return ids.masked_fill(~mask, PAD), mask.long()


def sample(decoder, ids, mask, seed=0, max_new_tokens=12, eos=EOS, temperature=1.0):
    return sample_responses(decoder, ids, mask, max_new_tokens=max_new_tokens, end_token_ids=None if eos is None else [eos],
                            pad_token_id=PAD, temperature=temperature, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=[gpt2, llama], ids=["gpt2", "llama"])
def model(request):
    torch.manual_seed(0)
    return request.param().eval()


@pytest.mark.parametrize("batch", [1, 5, 11])
def test_fast_path_logprobs_match_the_reference_forward(model, batch):
    ids, mask = left_padded_prompts(batch)
    fast = sample(StaticDecoder(model, max_len=ids.shape[1] + 12), ids, mask, temperature=0.7)
    with torch.no_grad():
        reference = token_logprobs(response_logits(model, ids, mask, fast.response_ids), fast.response_ids, 0.7)
    valid = fast.response_mask
    assert valid.sum() > batch  # tokens were generated past the first
    assert (reference - fast.logprobs)[valid].abs().max() < LOGPROB_TOLERANCE
    assert (fast.logprobs[~valid] == 0).all()


def test_both_paths_draw_the_same_tokens_for_a_seed(model):
    ids, mask = left_padded_prompts(7, seed=1)
    fast = sample(StaticDecoder(model, max_len=32), ids, mask, seed=5)
    plain = sample(HFDecoder(model), ids, mask, seed=5)
    assert torch.equal(fast.response_ids, plain.response_ids)
    assert torch.equal(fast.response_mask, plain.response_mask)
    assert torch.equal(fast.ended_with_eos, plain.ended_with_eos)
    assert (fast.logprobs - plain.logprobs).abs().max() < LOGPROB_TOLERANCE


def test_buckets_are_reused_across_batch_sizes_without_leaking_state(model):
    decoder = StaticDecoder(model, max_len=40)
    small, medium = left_padded_prompts(3, seed=2), left_padded_prompts(13, seed=3)
    first = sample(decoder, *small, seed=1)
    sample(decoder, *medium, seed=2)  # another bucket (16)
    sample(decoder, *left_padded_prompts(6, seed=4), seed=3)  # the same bucket (8), other prompts
    again = sample(decoder, *small, seed=1)
    assert sorted(decoder.buckets) == [8, 16]
    assert torch.equal(first.response_ids, again.response_ids)
    assert torch.allclose(first.logprobs, again.logprobs, atol=1e-6)


def test_weights_loaded_in_place_are_what_the_next_generation_reads(model):
    """A rollout worker's weight sync copies into the parameters; the decoder must see it."""
    decoder = StaticDecoder(model, max_len=32)
    ids, mask = left_padded_prompts(4, seed=6)
    before = sample(decoder, ids, mask, seed=0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    after = sample(decoder, ids, mask, seed=0)
    with torch.no_grad():
        reference = token_logprobs(response_logits(model, ids, mask, after.response_ids), after.response_ids)
    assert not torch.allclose(before.logprobs, after.logprobs)
    assert (reference - after.logprobs)[after.response_mask].abs().max() < LOGPROB_TOLERANCE


def test_no_stop_token_gives_full_length_responses(model):
    ids, mask = left_padded_prompts(4)
    sampled = sample(StaticDecoder(model, max_len=32), ids, mask, eos=None, max_new_tokens=10)
    assert sampled.response_mask.all() and not sampled.ended_with_eos.any()


def test_the_cache_bound_is_checked(model):
    ids, mask = left_padded_prompts(2)
    with pytest.raises(ValueError, match="max_len"):
        sample(StaticDecoder(model, max_len=ids.shape[1] + 3), ids, mask, eos=None, max_new_tokens=10)


def test_engine_choice():
    cpu_model = gpt2()
    assert isinstance(make_decoder(cpu_model, "auto", max_len=32), StaticDecoder)
    assert isinstance(make_decoder(cpu_model, "hf"), HFDecoder)
    assert not make_decoder(cpu_model, "static_eager", max_len=32).use_cuda_graph
    with pytest.raises(NotImplementedError, match="model type"):
        make_decoder(torch.nn.Linear(2, 2), "static", max_len=32)
    with pytest.raises(ValueError, match="engine"):
        make_decoder(cpu_model, "vllm")
    with pytest.raises(ValueError, match="CUDA"):
        StaticDecoder(cpu_model, max_len=32, use_cuda_graph=True)
