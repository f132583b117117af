"""What only a GPU can show (``pytest -m gpu``; run by benchmarks/gpu_suite.sh, skipped
without CUDA): the CUDA-graph decode against a full forward per batch-size bucket, the bf16
gap between the rollout workers' sampling log-probs and the trainer's, and PPO with every
role colocated on one GPU at the SmolLM2-135M shape (random weights), the weights moved by
CUDA IPC, passing the probe."""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from alignray.models.generation import response_logits, sample_responses, token_logprobs
from alignray.models.static_decoder import StaticDecoder

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
REPO = Path(__file__).resolve().parent.parent
LOGPROB_TOLERANCE = 1e-4  # fp32, as on CPU (tests/test_static_decoder.py)
BF16_MEAN_GAP, BF16_MAX_GAP = 0.02, 0.25  # nats: rounding, not a different policy


def load_ppo_gpu_benchmark():
    """benchmarks/ppo_gpu.py (a script, not a package): its SmolLM2-shape model builder."""
    spec = importlib.util.spec_from_file_location("ppo_gpu", REPO / "benchmarks" / "ppo_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_layer=2, n_embd=32, n_head=4, n_positions=64))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64))
    return {"gpt2": gpt2, "llama": llama}


def sample_and_score(model, decoder, batch: int, prompt_len: int, new_tokens: int, seed: int = 0):
    """Prompts, what the decoder sampled for them (with its log-probs), and a full forward's
    log-probs of the same tokens."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    ids = torch.randint(4, model.config.vocab_size, (batch, prompt_len), device="cuda", generator=generator)
    mask = torch.ones_like(ids)
    mask[: batch // 2, : prompt_len // 3] = 0  # left padding on half the rows
    sampled = sample_responses(decoder, ids, mask, max_new_tokens=new_tokens, end_token_ids=None, pad_token_id=0,
                               generator=generator)
    with torch.no_grad():
        full = token_logprobs(response_logits(model, ids, mask, sampled.response_ids), sampled.response_ids)
    return (ids, mask), sampled, full


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_cuda_graph_decode_matches_a_full_forward_in_every_bucket(name):
    model = tiny_models()[name].cuda().eval()
    decoder = StaticDecoder(model, max_len=48)
    assert decoder.use_cuda_graph
    for batch in (1, 5, 11, 20):  # buckets 8, 8, 16, 32
        _, sampled, full = sample_and_score(model, decoder, batch, prompt_len=12, new_tokens=24, seed=batch)
        gap = (full - sampled.logprobs)[sampled.response_mask].abs().max().item()
        assert gap < LOGPROB_TOLERANCE, f"batch {batch}: {gap:.2e}"
    assert sorted(decoder.buckets) == [8, 16, 32]
    assert all(state.graph is not None for state in decoder.buckets.values())  # replayed, not eager


def test_bf16_rollout_logprobs_stay_close_to_the_trainers_and_stale_weights_stand_out():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**load_ppo_gpu_benchmark().SMOLLM2_SHAPE)).to("cuda", torch.bfloat16).eval()
    prompts, sampled, trainer = sample_and_score(model, StaticDecoder(model, max_len=128), 64, prompt_len=64,
                                                 new_tokens=64)
    gap = (trainer - sampled.logprobs).abs()
    stale = copy.deepcopy(model)  # the policy one update later, seen by a worker that missed it
    with torch.no_grad():
        for parameter in stale.parameters():
            parameter.add_(0.5 * parameter.float().std() * torch.randn_like(parameter))
        moved = token_logprobs(response_logits(stale, *prompts, sampled.response_ids), sampled.response_ids)
    stale_gap = (moved - sampled.logprobs).abs()
    print(f"bf16 rollout/trainer gap: mean {gap.mean():.2e}, max {gap.max():.2e}; stale weights: "
          f"mean {stale_gap.mean():.2e}")
    assert gap.mean() < BF16_MEAN_GAP and gap.max() < BF16_MAX_GAP
    assert stale_gap.mean() > 3 * gap.mean()


def test_colocated_ppo_at_the_smollm2_shape_passes_the_probe_on_one_gpu(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from alignray.core.metrics import read_metrics
    from alignray.workflows.common import compose_app_config
    from alignray.workflows.ppo import run_ppo
    bench = load_ppo_gpu_benchmark()
    model_path = bench.build_model(tmp_path, bench.SMOLLM2_SHAPE)
    texts = bench.synthetic_texts(512, seed=1)
    pq.write_table(pa.table({"prompt_id": [f"p{i}" for i in range(len(texts))], "prompt": texts}),
                   tmp_path / "prompts.parquet")
    overrides = [f"workdir={tmp_path}/runs", "cluster=one_gpu", "data.source=files",
                 f"data.prompts_path={tmp_path}/prompts.parquet", "data.max_prompt_tokens=64", "ppo.steps=4",
                 "ppo.prompts_per_step=64", "ppo.rollout.max_new_tokens=32", "ppo.epochs=1", "ppo.minibatches=2",
                 "ppo.checkpoint_every=0", "ppo.resume=false", "ppo.reward.kind=target_word",
                 "ppo.reward.constraints=none"]
    cfg = compose_app_config(overrides)
    records = read_metrics(run_ppo(cfg, str(model_path), None) / "metrics.jsonl")
    assert len(records) == 4
    for record in records:  # every sync (CUDA IPC: one GPU) was checked on the probe
        assert record["probe_max_abs_diff"] <= cfg.ppo.sync.tolerance
        assert record["policy_updates"] > 0
        assert record["rollout_logprob_gap_mean"] < BF16_MEAN_GAP  # the pool samples with the policy's weights
