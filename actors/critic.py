"""The value critic: a transformer backbone (the SFT model's, or the reward model's) with a
scalar head, trained with the clipped value loss in a DeepSpeed engine."""
from __future__ import annotations

import math

import torch
from torch import Tensor
from transformers import AutoModel

from alignray.actors.base import TrainableActor
from alignray.config.ppo import CriticConfig, UpdateSettings
from alignray.ppo.experience import CriticTrainStats, Experience, mean
from alignray.models.generation import disable_dropout, sequence_inputs
from alignray.config.lora import LoRAConfig
from alignray.models.lora import with_lora
from alignray.models.modeling import fused_activation, training_dtype
from alignray.ppo import clipped_value_loss, minibatch_indices
from alignray.core.seeds import derived_seed


class ValueModel(torch.nn.Module):
    """``V(prompt, response[:t])`` for every response token t: the head reads the hidden
    state at the position that predicts token t, the same position its log-prob comes from."""

    def __init__(self, backbone_path: str, lora: LoRAConfig = LoRAConfig()):
        super().__init__()
        # with LoRA only the backbone's adapters train, and the head beside them
        self.backbone = with_lora(AutoModel.from_pretrained(backbone_path, **fused_activation(backbone_path)), lora,
                                  task_type=None)
        # zero-initialised: values start at 0 rather than at a random offset
        self.value_head = torch.nn.Linear(self.backbone.config.hidden_size, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor) -> Tensor:
        hidden = self.backbone(**sequence_inputs(prompt_ids, prompt_mask, response_ids)).last_hidden_state
        prompt_len, response_len = prompt_ids.shape[1], response_ids.shape[1]
        hidden = hidden[:, prompt_len - 1: prompt_len - 1 + response_len]
        return self.value_head(hidden).squeeze(-1).float()


class CriticActor(TrainableActor):
    role = "critic"

    def __init__(self, backbone_path: str, critic: CriticConfig, update: UpdateSettings, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        super().__init__(rank, world_size, seed)
        self.critic, self.update, self.lr = critic, update, critic.lr
        dtype = training_dtype(update.deepspeed.precision, self.device)
        self.model = disable_dropout(ValueModel(backbone_path, critic.lora)).to(self.device, dtype)

    @torch.no_grad()
    def values(self, prompt_ids, prompt_mask, response_ids) -> Tensor:
        self.engine.eval()
        return self.engine(*self._to_device(prompt_ids, prompt_mask, response_ids)).cpu()

    def train(self, exp: Experience, step: int) -> CriticTrainStats:
        """Epochs x minibatches of the clipped value loss on this rank's shard."""
        update = self.update
        self.engine.train()
        exp = exp.to(self.device)
        # +1: not the policy's minibatch order
        generator = torch.Generator().manual_seed(derived_seed(self.seed, step, self.rank) + 1)
        losses, clip_fractions, skipped = [], [], 0
        minibatch_size = math.ceil(len(exp) / update.minibatches)
        for _, rows in minibatch_indices(len(exp), minibatch_size, update.epochs, generator):
            result = self._accumulated_step(exp.select(rows.to(self.device)), self._loss, update.micro_batch_tokens)
            if result is None:
                skipped += 1
                continue
            losses.append(result[0])
            clip_fractions.append(result[1]["value_clip_fraction"])
        tokens_per_s, mfu = self.throughput()
        return CriticTrainStats(value_loss=mean(losses), value_clip_fraction=mean(clip_fractions),
                                nonfinite_updates=skipped, train_tokens_per_s=tokens_per_s, mfu=mfu)

    def _loss(self, batch: Experience) -> tuple[Tensor, dict[str, float]]:
        values = self.engine(batch.prompt_ids, batch.prompt_mask, batch.response_ids)
        return clipped_value_loss(values, batch.values, batch.returns, batch.response_mask,
                                  self.critic.value_clip_eps)
