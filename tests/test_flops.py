"""The PPO step's FLOP count (alignray/ppo/flops.py) against torch's own FLOP counter."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from alignray.ppo.flops import ModelShape, StepShape, step_flops

CONFIG = dict(vocab_size=512, n_layer=2, n_embd=64, n_head=4, n_positions=64)


def counted(run) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**CONFIG))


def test_the_shape_leaves_embeddings_out_and_counts_the_tied_head_once(lm):
    shape = ModelShape.of(lm)
    assert shape.head_params == 512 * 64
    blocks = sum(p.numel() for p in lm.transformer.h.parameters()) + sum(p.numel() for p in lm.transformer.ln_f.parameters())
    assert shape.body_params == blocks
    classifier = GPT2ForSequenceClassification(GPT2Config(**CONFIG, num_labels=1))
    assert ModelShape.of(classifier) == ModelShape(blocks + 64, 0)  # the score head runs on every position


@pytest.mark.parametrize("keep", [0, 9])
def test_a_forward_and_a_training_pass_match_torchs_count(lm, keep):
    """Within 10%: torch also counts attention's score matrices, which the count leaves out."""
    ids = torch.randint(0, 512, (4, 24))
    shape, head_positions = ModelShape.of(lm), 4 * (keep or 24)
    forward = counted(lambda: lm(input_ids=ids, logits_to_keep=keep))
    assert forward == pytest.approx(shape.forward(4 * 24, head_positions), rel=0.1)

    def train():
        lm(input_ids=ids, logits_to_keep=keep).logits.sum().backward()
    assert counted(train) == pytest.approx(shape.train(4 * 24, head_positions), rel=0.1)


def test_the_steps_stages_add_up_from_its_batch(lm):
    policy = ModelShape.of(lm)
    critic = ModelShape(policy.body_params, 0)
    step = StepShape(rows=8, prompt_tokens=10, response_tokens=6, epochs=4)
    flops = step_flops(step, policy, critic, critic)
    assert flops["policy_train"] == 4 * 3 * flops["policy_logprobs"]
    assert flops["critic_train"] == 4 * 3 * flops["critic_values"] == 4 * 3 * flops["scoring"]
    assert flops["reference"] == flops["policy_logprobs"]
    # generation: the prompt's body once, then body and head for each sampled token
    assert flops["generation"] == 2 * (policy.body_params * 8 * 16 + policy.head_params * 8 * 6)
    without = step_flops(step, policy, None, critic, reference=False)
    assert set(flops) - set(without) == {"critic_values", "critic_train", "reference"}
