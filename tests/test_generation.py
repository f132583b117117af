"""Known answers for the pure pieces of PPO's rollout path: sampling with a KV cache and
left padding, per-token log-probs, the experience batch, score shaping, advantages, and
the prompt stream."""
from __future__ import annotations

import math

import pytest
import torch

from alignray.ppo.experience import PromptStream, Rollout, build_experience, sequence_scores
from alignray.models.generation import (decode_responses, disable_dropout, position_ids_from_mask, response_logits,
                                 sample_responses, token_logprobs, top_p_filter)
from alignray.models.modeling import load_causal_lm, load_tokenizer
from alignray.ppo import RunningRewardNormalizer

PROMPTS = ["I love the new", "Flying with", "Self-driving cars are so bad today, I"]


def test_position_ids_count_from_the_first_attended_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_top_p_keeps_the_smallest_nucleus_and_always_the_top_token():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    assert torch.isfinite(top_p_filter(logits, 0.6)).tolist() == [[True, True, False]]
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.01)).tolist() == [[True, False, False]]
    shuffled = logits[:, [2, 0, 1]]
    assert torch.isfinite(top_p_filter(shuffled, 0.6)).tolist() == [[False, True, True]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


@pytest.fixture(scope="module")
def tiny(tiny_base_model):
    tokenizer = load_tokenizer(tiny_base_model)
    model = disable_dropout(load_causal_lm(tiny_base_model, torch.device("cpu"))).eval()
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    return model, tokenizer, encoded["input_ids"], encoded["attention_mask"]


def sample(tiny, seed=0, max_new_tokens=16, eos=None):
    model, tokenizer, ids, mask = tiny
    return sample_responses(model, ids, mask, max_new_tokens=max_new_tokens,
                            end_token_ids=[tokenizer.eos_token_id] if eos is None else eos,
                            pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(seed))


def test_sampling_is_reproducible_from_the_seed(tiny):
    a, b, c = sample(tiny, seed=1), sample(tiny, seed=1), sample(tiny, seed=2)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_recorded_logprobs_match_a_full_forward_and_an_unpadded_row(tiny):
    model, _, ids, mask = tiny
    sampled = sample(tiny)
    with torch.no_grad():
        full = token_logprobs(response_logits(model, ids, mask, sampled.response_ids), sampled.response_ids)
    valid = sampled.response_mask
    assert (full - sampled.logprobs)[valid].abs().max() < 1e-4
    assert (sampled.logprobs[~valid] == 0).all()
    shortest = int(mask.sum(1).argmin())  # the most left-padded row, alone and unpadded
    n = int(mask[shortest].sum())
    with torch.no_grad():
        alone = token_logprobs(response_logits(model, ids[shortest:shortest + 1, -n:], mask[shortest:shortest + 1, -n:],
                                               sampled.response_ids[shortest:shortest + 1]),
                               sampled.response_ids[shortest:shortest + 1])
    assert (alone[0] - full[shortest])[valid[shortest]].abs().max() < 1e-4


def test_a_response_ends_at_its_first_end_token_any_of_them_which_it_keeps(tiny):
    _, tokenizer, _, _ = tiny
    # pick as "end tokens" two the model samples early, so rows end at different places
    probe = sample(tiny, seed=3)
    ends = [int(probe.response_ids[0, 1]), int(probe.response_ids[1, 2])]
    sampled = sample(tiny, seed=3, eos=ends)
    for ids, valid, ended in zip(sampled.response_ids, sampled.response_mask, sampled.ended_with_eos):
        n = int(valid.sum())
        assert valid[:n].all() and not valid[n:].any()  # a prefix of valid tokens
        positions = torch.isin(ids[:n], torch.tensor(ends)).nonzero().flatten().tolist()
        if ended:
            assert positions == [n - 1]  # the end token is the last valid one, and the first
        else:
            assert positions == [] and n == 16
        assert (ids[n:] == tokenizer.pad_token_id).all()
    assert sampled.ended_with_eos[0] and sampled.ended_with_eos[1]
    texts = decode_responses(tokenizer, sampled.response_ids, sampled.response_mask)
    assert len(texts) == len(PROMPTS)


def test_a_rollout_splits_and_concatenates_back_in_order():
    n = 7
    rollout = Rollout(prompt_index=torch.arange(n), prompt_ids=torch.arange(n * 2).view(n, 2),
                      prompt_mask=torch.ones(n, 2), response_ids=torch.zeros(n, 3, dtype=torch.long),
                      response_mask=torch.ones(n, 3, dtype=torch.bool), logprobs=torch.randn(n, 3),
                      ended_with_eos=torch.ones(n, dtype=torch.bool))
    shards = rollout.split(3)
    assert [len(s) for s in shards] == [2, 3, 2] and all(type(s) is Rollout for s in shards)
    back = Rollout.cat(shards)
    assert torch.equal(back.prompt_index, rollout.prompt_index) and torch.equal(back.logprobs, rollout.logprobs)
    with pytest.raises(ValueError):
        rollout.split(8)


def test_sequence_scores_normalise_clip_then_subtract_penalties():
    normalizer = RunningRewardNormalizer()
    scores = sequence_scores(torch.tensor([1.0, 3.0]), normalizer, clip=0.5,
                             constraint_costs=torch.tensor([0.0, 1.0]),
                             ended_with_eos=torch.tensor([True, False]), truncation_cost=0.25)
    # normalised [-1, 1] -> clipped [-0.5, 0.5] -> costs [0, 1] -> truncation [0, 0.25]
    assert torch.allclose(scores, torch.tensor([-0.5, -0.75]), atol=1e-6)
    assert normalizer.count == 2 and normalizer.mean == 2.0
    raw = sequence_scores(torch.tensor([1.0, 3.0]), None, clip=10, constraint_costs=torch.zeros(2),
                          ended_with_eos=torch.tensor([True, True]), truncation_cost=1.0)
    assert raw.tolist() == [1.0, 3.0]


def test_build_experience_folds_kl_into_rewards_then_runs_gae():
    rollout = Rollout(prompt_index=torch.tensor([0]), prompt_ids=torch.zeros(1, 1, dtype=torch.long),
                      prompt_mask=torch.ones(1, 1), response_ids=torch.zeros(1, 3, dtype=torch.long),
                      response_mask=torch.tensor([[True, True, False]]),
                      logprobs=torch.tensor([[-1.0, -1.0, 0.0]]), ended_with_eos=torch.tensor([True]))
    done, stats = build_experience(rollout, ref_logprobs=torch.tensor([[-1.5, -1.0, -math.inf]]),
                                   values=torch.zeros(1, 3), scores=torch.tensor([1.0]), kl_coef=0.2,
                                   gamma=1.0, lam=1.0, whiten=False)
    # k1 KL per token [0.5, 0]; rewards [-0.1, 1.0]; with V = 0 and lam = 1 the advantages
    # are the rewards-to-go [0.9, 1.0]; padding stays 0 even where the reference says -inf
    assert torch.allclose(done.rewards, torch.tensor([[-0.1, 1.0, 0.0]]))
    assert torch.allclose(done.advantages, torch.tensor([[0.9, 1.0, 0.0]]))
    assert torch.allclose(done.returns, done.advantages)
    assert stats["kl"] == pytest.approx(0.5)
    assert stats["kl_penalty_share"] == pytest.approx(0.1 / 1.1)


def test_prompt_stream_covers_each_prompt_once_per_epoch_and_resumes_exactly():
    stream = PromptStream(10, seed=3)
    first_epoch = torch.cat([stream.next_batch(4), stream.next_batch(4), stream.next_batch(2)])
    assert sorted(first_epoch.tolist()) == list(range(10))
    crossing = stream.next_batch(4)  # wholly in epoch 2
    state = stream.state_dict()
    expected = stream.next_batch(7)  # crosses into epoch 3
    resumed = PromptStream(10, seed=3)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.next_batch(7), expected)
    assert sorted(torch.cat([crossing, expected[:6]]).tolist()) == list(range(10))
    with pytest.raises(ValueError):
        PromptStream(11, seed=3).load_state_dict(state)


def test_trimming_padding_columns_keeps_every_logprob(tiny):
    model, _, ids, mask = tiny
    sampled = sample(tiny, seed=4, eos=[int(sample(tiny, seed=4).response_ids[0, 2])])  # rows end early
    exp = Rollout(prompt_index=torch.arange(3), prompt_ids=ids, prompt_mask=mask,
                  response_ids=sampled.response_ids, response_mask=sampled.response_mask,
                  logprobs=sampled.logprobs, ended_with_eos=sampled.ended_with_eos)
    part = exp.select(torch.tensor([0, 1]))  # not the longest prompt: leading columns are all padding
    trimmed = part.trimmed()
    assert trimmed.prompt_ids.shape[1] == int(part.prompt_mask.sum(1).max()) < ids.shape[1]
    assert trimmed.response_ids.shape[1] == int(part.response_mask.sum(1).max())
    with torch.no_grad():
        full = token_logprobs(response_logits(model, part.prompt_ids, part.prompt_mask, part.response_ids),
                              part.response_ids)
        short = token_logprobs(response_logits(model, trimmed.prompt_ids, trimmed.prompt_mask, trimmed.response_ids),
                               trimmed.response_ids)
    width = short.shape[1]
    assert (full[:, :width] - short)[trimmed.response_mask].abs().max() < 1e-5
    assert torch.equal(trimmed.logprobs, part.logprobs[:, :width]) and not part.response_mask[:, width:].any()
