"""The DeepSpeed strategy on CPU: data parallelism over two Ray actors matches one process,
a checkpoint resumes training bit for bit, the exported folder loads with
``from_pretrained``, and no C++ op is compiled on the way."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from alignray.models import deepspeed_strategy as ds
from alignray.config.training import DeepSpeedConfig
from alignray.core.model_card import read_model_card

VOCAB = 64
SEQ = 12
GLOBAL_BATCH = 4
LR = 1e-2


def tiny_gpt2(dropout: float = 0.0, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return GPT2LMHeadModel(config)


def global_batch(step: int) -> torch.Tensor:
    """Every row has the same length (no padding), so the mean over each rank's tokens
    averaged over ranks equals the mean over the whole batch."""
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=generator)


def train_steps(engine, steps: range, rank: int = 0, world: int = 1) -> None:
    for step in steps:
        rows = global_batch(step).chunk(world)[rank]
        loss = engine(input_ids=rows, labels=rows).loss
        ds.backward_and_step(engine, loss)


def build(model, stage: int, micro_batch: int):
    return ds.build_engine(model, DeepSpeedConfig(zero_stage=stage), lr=LR, total_steps=10,
                           warmup_steps=2, micro_batch_size=micro_batch)


def word_level_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"<unk>": VOCAB - 1}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   unk_token="<unk>", pad_token="<unk>")


@pytest.fixture(scope="module")
def single_process_world():
    """This pytest process as a world of one (gloo), shared by the in-process tests."""
    ds.init_distributed_if_needed()
    assert ds.world_size() == 1


def test_config_follows_the_strategy():
    cpu = torch.device("cpu")
    config = ds.deepspeed_config_dict(DeepSpeedConfig(zero_stage=3, offload_optimizer=True,
                                                      gradient_clipping=0.5), 4, 2, cpu)
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert config["gradient_clipping"] == 0.5
    assert not config["bf16"]["enabled"] and not config["fp16"]["enabled"]  # fp32 on CPU
    with pytest.raises(ValueError, match="zero_stage"):
        ds.deepspeed_config_dict(DeepSpeedConfig(zero_stage=4), 4, 1, cpu)
    with pytest.raises(ValueError, match="offload"):
        ds.deepspeed_config_dict(DeepSpeedConfig(zero_stage=0, offload_optimizer=True), 4, 1, cpu)


def test_schedule_warms_up_then_decays():
    factor = ds.warmup_then_linear_decay(warmup_steps=4, total_steps=12)
    assert [factor(s) for s in (0, 3, 4, 8, 12, 20)] == [0.25, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert ds.warmup_then_linear_decay(2, 0)(50) == 1.0


def test_checkpoint_resumes_bit_for_bit(single_process_world, tmp_path):
    """4 steps straight == 2 steps, save, a fresh engine on a differently initialised
    model, load, 2 steps. Dropout is on: the random state must come back too."""
    straight = build(tiny_gpt2(dropout=0.1), stage=2, micro_batch=GLOBAL_BATCH)
    train_steps(straight, range(4))

    first = build(tiny_gpt2(dropout=0.1), stage=2, micro_batch=GLOBAL_BATCH)
    train_steps(first, range(2))
    ds.save_checkpoint(first, tmp_path / "ckpt", {"next_step": 2})
    resumed = build(tiny_gpt2(dropout=0.1, seed=7), stage=2, micro_batch=GLOBAL_BATCH)
    torch.manual_seed(123)  # whatever the random state is now, the checkpoint's wins
    client_state = ds.load_checkpoint(resumed, tmp_path / "ckpt")
    assert client_state == {"next_step": 2}
    assert resumed.global_steps == 2
    train_steps(resumed, range(client_state["next_step"], 4))

    for (name, a), b in zip(straight.module.named_parameters(), resumed.module.parameters()):
        assert torch.equal(a, b), name
    assert ds.current_lr(straight) == ds.current_lr(resumed)


def test_load_checkpoint_without_one_returns_none(single_process_world, tmp_path):
    engine = build(tiny_gpt2(), stage=0, micro_batch=GLOBAL_BATCH)
    assert ds.load_checkpoint(engine, tmp_path) is None


@pytest.mark.parametrize("stage", [2, 3])
def test_optimizer_offload_trains(single_process_world, stage):
    """ZeRO-Offload keeps the optimizer state in CPU memory; with torch's AdamW nothing is
    compiled for it (the check below runs after this test)."""
    engine = ds.build_engine(tiny_gpt2(), DeepSpeedConfig(zero_stage=stage, offload_optimizer=True), lr=LR,
                             total_steps=10, warmup_steps=2, micro_batch_size=GLOBAL_BATCH)
    rows = global_batch(0)
    before = engine(input_ids=rows, labels=rows).loss.item()
    train_steps(engine, range(3))
    assert engine(input_ids=rows, labels=rows).loss.item() < before


def test_nothing_was_compiled():
    """The shared-memory comm op stays off and DeepSpeed built no extension."""
    from deepspeed.ops.op_builder.builder import OpBuilder
    assert not OpBuilder._loaded_ops, f"DeepSpeed loaded compiled ops: {list(OpBuilder._loaded_ops)}"
    torch_extensions = Path(os.environ.get("TORCH_EXTENSIONS_DIR",
                                           Path.home() / ".cache" / "torch_extensions"))
    assert not any(torch_extensions.glob("**/deepspeed*")), f"extensions were built in {torch_extensions}"


# ----------------------------------------------------------------------------- two ranks
def make_rank_actor():
    import ray

    @ray.remote(num_gpus=1, num_cpus=0)
    class DeepSpeedRank:
        """One process of a two-rank world: a logical GPU of the test cluster, CPU compute."""

        def rendezvous(self) -> tuple[str, int]:
            address = ray.util.get_node_ip_address()
            return address, ds.free_port(address)

        def join(self, rank: int, world: int, address: str, port: int) -> None:
            ds.init_distributed(rank, world, address, port)

        def params_after_step(self, stage: int, export_dir: str | None) -> dict | None:
            rank, world = ds.world_rank(), ds.world_size()
            engine = build(tiny_gpt2(), stage, micro_batch=GLOBAL_BATCH // world)
            train_steps(engine, range(1), rank, world)
            if export_dir:
                ds.export_hf(engine, word_level_tokenizer(), export_dir)
            return ds.gathered_state_dict(engine)

        def compiled_ops(self) -> list[str]:
            from deepspeed.ops.op_builder.builder import OpBuilder
            return list(OpBuilder._loaded_ops)

    return DeepSpeedRank


@pytest.fixture(scope="module")
def two_rank_world(ray_cluster):
    # The actors run this module's helpers; Ray's workers cannot import tests/, so they
    # travel by value.
    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    actor_class = make_rank_actor()
    actors = [actor_class.remote() for _ in range(2)]
    address, port = ray_cluster.get(actors[0].rendezvous.remote())
    ray_cluster.get([a.join.remote(rank, 2, address, port) for rank, a in enumerate(actors)])
    yield actors
    for actor in actors:
        ray_cluster.kill(actor)


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_match_one(single_process_world, two_rank_world, tmp_path, stage):
    """The same global batch, split across two actors (gloo, ZeRO-{stage}), gives the
    parameters that one process gets from the whole batch."""
    single = build(tiny_gpt2(), stage, micro_batch=GLOBAL_BATCH)
    train_steps(single, range(1))
    expected = ds.gathered_state_dict(single)

    import ray
    export_dir = tmp_path / "hf"
    rank_states = ray.get([a.params_after_step.remote(stage, str(export_dir)) for a in two_rank_world])
    assert rank_states[1] is None  # only rank 0 gathers the full weights
    for name, value in expected.items():
        torch.testing.assert_close(rank_states[0][name], value, rtol=0, atol=1e-5, msg=name)

    exported = GPT2LMHeadModel.from_pretrained(export_dir)
    assert read_model_card(export_dir)[0]["library_name"] == "transformers"
    for name, value in exported.state_dict().items():
        if name in expected:
            torch.testing.assert_close(value, rank_states[0][name], rtol=0, atol=0, msg=name)
    assert not any(ray.get([a.compiled_ops.remote() for a in two_rank_world]))


def test_activation_checkpointing_gives_the_same_step(single_process_world):
    """Recomputing activations in the backward pass changes memory, not the update."""
    engines = [ds.build_engine(tiny_gpt2(), DeepSpeedConfig(zero_stage=0, activation_checkpointing=on), lr=LR,
                               total_steps=10, warmup_steps=0, micro_batch_size=GLOBAL_BATCH) for on in (False, True)]
    assert [e.module.transformer.gradient_checkpointing for e in engines] == [False, True]
    for engine in engines:
        train_steps(engine, range(2))
    rows = global_batch(5)
    plain, checkpointed = (e(input_ids=rows, labels=rows).loss.item() for e in engines)
    assert checkpointed == pytest.approx(plain, abs=1e-5)
    with pytest.raises(ValueError, match="gradient checkpointing"):
        ds.enable_activation_checkpointing(torch.nn.Linear(2, 2))
