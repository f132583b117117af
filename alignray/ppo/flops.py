"""The arithmetic of one PPO step, counted (the dense matmuls; attention's score matrices
and the elementwise work are left out: a few percent at these lengths).

A forward pass costs 2 FLOP per weight per position it runs on, and a training pass 3x
its forward (the backward is twice the forward). The body's weights run on every
position; the LM head (d_model x vocab) only where logits are read: the response's
positions when scoring, one position per sampled token when generating. On the embedded
default the head is a third of the model, so counting it on every position would be
wrong by far.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FORWARD, TRAIN = 2, 6  # FLOP per weight per position


@dataclass(frozen=True)
class ModelShape:
    body_params: int  # the weights every position multiplies through (no embeddings, no LM head)
    head_params: int  # d_model x vocab: the LM head, 0 for a model with a scalar head

    @classmethod
    def of(cls, model) -> "ModelShape":
        """The shape of a Hugging Face model: its parameters less the token and position
        embeddings (a lookup, not a matmul) and the LM head, counted on its own (a model
        without one, a backbone or a classifier, has ``head_params`` 0)."""
        embeddings = {id(p) for module in model.modules() if isinstance(module, torch.nn.Embedding)
                      for p in module.parameters()}
        head = model.get_output_embeddings()
        head_ids = {id(p) for p in head.parameters()} if head is not None else set()
        body = sum(p.numel() for p in model.parameters() if id(p) not in embeddings | head_ids)
        head_params = head.weight.numel() if head is not None else 0
        return cls(body, head_params)

    def forward(self, positions: int, head_positions: int) -> int:
        return FORWARD * (self.body_params * positions + self.head_params * head_positions)

    def train(self, positions: int, head_positions: int) -> int:
        return TRAIN * (self.body_params * positions + self.head_params * head_positions)


@dataclass(frozen=True)
class StepShape:
    """One step's batch as the machine computes it: padded rows of prompt + response."""
    rows: int
    prompt_tokens: int  # padded prompt length
    response_tokens: int  # padded response length
    epochs: int

    @property
    def positions(self) -> int:
        return self.rows * (self.prompt_tokens + self.response_tokens)

    @property
    def response_positions(self) -> int:
        return self.rows * self.response_tokens


def step_flops(step: StepShape, policy: ModelShape, critic: ModelShape | None, reward: ModelShape,
               reference: bool = True) -> dict[str, int]:
    """FLOP of each stage of a PPO step (the names of its ``time/<stage>`` metrics):
    ``generation`` (the prompt's prefill, then one position per sampled token, the LM head
    on those alone), ``reference``, ``policy_logprobs``, ``critic_values`` and ``scoring``
    (forwards over prompt + response), ``policy_train`` and ``critic_train`` (``epochs``
    training passes)."""
    positions, responses = step.positions, step.response_positions
    flops = {
        "generation": (FORWARD * policy.body_params * step.rows * step.prompt_tokens
                       + policy.forward(responses, responses)),
        "policy_logprobs": policy.forward(positions, responses),
        "scoring": reward.forward(positions, 0),
        "policy_train": step.epochs * policy.train(positions, responses),
    }
    if reference:
        flops["reference"] = policy.forward(positions, responses)
    if critic is not None:
        flops["critic_values"] = critic.forward(positions, 0)
        flops["critic_train"] = step.epochs * critic.train(positions, 0)
    return flops
