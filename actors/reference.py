"""The reference: a frozen copy of the SFT model. Its log-probs anchor the KL penalty."""
from __future__ import annotations

import torch

from alignray.actors.base import ModelActor
from alignray.models.generation import disable_dropout
from alignray.models.modeling import load_causal_lm, training_dtype


class ReferenceActor(ModelActor):
    role = "reference"

    def __init__(self, model_path: str, temperature: float = 1.0, precision: str = "auto", seed: int = 0):
        super().__init__(seed)
        self.temperature = temperature
        dtype = training_dtype(precision, self.device)
        self.model = disable_dropout(load_causal_lm(model_path, self.device, dtype)).eval()
        self.model.requires_grad_(False)

    def logprobs(self, prompt_ids, prompt_mask, response_ids) -> torch.Tensor:
        return self._logprobs(self.model, prompt_ids, prompt_mask, response_ids, self.temperature)
