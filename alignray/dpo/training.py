"""Direct Preference Optimisation, the pure part: the losses, a response's sequence
log-prob, and what the Ray Train loop (actors/trainer.py) needs to train a policy on
preference pairs (no Ray).

With ``pi`` the policy, ``ref`` the frozen reference (the SFT model) and
``h = [log pi(y_w|x) - log ref(y_w|x)] - [log pi(y_l|x) - log ref(y_l|x)]`` for a pair whose
chosen response is ``y_w`` and rejected ``y_l`` (log-probs summed over the response tokens):

- ``sigmoid`` (DPO, Rafailov et al. 2023): ``-log sigmoid(beta h)``;
- with ``label_smoothing = e`` (cDPO, Mitchell 2023): the label is taken to be flipped with
  probability ``e`` (noisy annotators), ``-(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h)``;
- ``ipo`` (Azar et al. 2023): ``(h - 1 / (2 beta))^2``, which stops pushing a pair apart once
  its margin reaches the target instead of driving it to infinity.

The implicit rewards are ``beta (log pi - log ref)`` of each response; a pair is ranked right
when its chosen response's implicit reward is strictly the higher (so before training, when
the policy is the reference and every pair a tie, the accuracy is 0). Weights (the annotator-quality
weights of the feedback phase's pairs table) scale each pair's loss and metrics.

Rows follow alignray/sft/training.py's layout (`tokenize_demonstrations`: prompt + response + end
token, right-padded, ``loss_mask`` on the response): a pair is two such rows.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from alignray.config.lora import LoRAConfig
from alignray.models.generation import disable_dropout, token_logprobs
from alignray.models.lora import with_lora
from alignray.models.modeling import load_causal_lm
from alignray.sft.training import tokenize_batch

LOSS_TYPES = ("sigmoid", "ipo")
SIDES = ("chosen", "rejected")
TOKEN_COLUMNS = ("input_ids", "attention_mask", "loss_mask")


def check_loss_settings(beta: float, loss_type: str, label_smoothing: float) -> None:
    """Raise on settings the losses do not define, naming the ``dpo`` keys."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo.loss_type must be one of {LOSS_TYPES}, not {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"dpo.beta must be positive, not {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo.label_smoothing must lie in [0, 0.5), not {label_smoothing}")
    if loss_type == "ipo" and label_smoothing:
        raise ValueError("dpo.label_smoothing is for loss_type=sigmoid (cDPO); IPO has no label smoothing")


def dpo_pair_losses(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                    ref_rejected_logps: Tensor, beta: float, loss_type: str = "sigmoid",
                    label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Each pair's loss, and the chosen and rejected implicit rewards (``[N]`` each)."""
    check_loss_settings(beta, loss_type, label_smoothing)
    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratio - rejected_logratio
    if loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """The weighted mean loss over the pairs and its metrics: ``reward_accuracy`` (weighted
    share of pairs whose chosen implicit reward is the higher), ``reward_margin`` (weighted
    mean chosen minus rejected implicit reward), ``chosen_reward``, ``rejected_reward``."""
    losses, chosen, rejected = dpo_pair_losses(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                               ref_rejected_logps, beta, loss_type, label_smoothing)
    weights = torch.ones_like(losses) if weights is None else weights.to(losses.dtype)
    loss_sum, sums = weighted_sums(losses, chosen, rejected, weights)
    total = sums.pop("units")
    return loss_sum / total, {name: value / total for name, value in sums.items()}


def weighted_sums(losses: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor,
                  weights: Tensor) -> tuple[Tensor, dict[str, float]]:
    """``sum w * loss`` and the metrics' weighted sums, with ``units = sum w``: the loop's
    contract (actors/trainer.py), whose means over units are weighted means."""
    if bool((weights < 0).any()):
        raise ValueError("pair weights must not be negative")
    sums = {"units": float(weights.sum()),
            "reward_accuracy": float((weights * (chosen_rewards > rejected_rewards)).sum()),
            "reward_margin": float((weights * (chosen_rewards - rejected_rewards)).sum()),
            "chosen_reward": float((weights * chosen_rewards).sum()),
            "rejected_reward": float((weights * rejected_rewards).sum())}
    return (weights * losses).sum(), sums


# ----------------------------------------------------------------------------- sequences
def sequence_logprobs(model, batch: dict[str, Tensor]) -> Tensor:
    """``log p(response | prompt)`` of each row ``[B]``: the log-probs of the response
    tokens and the end token (``loss_mask``), summed. Position t predicts token t+1."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_token = token_logprobs(logits[:, :-1], batch["input_ids"][:, 1:])
    return (per_token * batch["loss_mask"][:, 1:].to(per_token.dtype)).sum(dim=-1)


def tokenize_pairs_batch(batch: dict[str, np.ndarray], model_path: str, max_prompt_tokens: int,
                         max_response_tokens: int) -> dict[str, np.ndarray]:
    """For ``Dataset.map_batches``: each pair becomes a chosen and a rejected token row
    (``chosen_input_ids``... ``rejected_loss_mask``, and each side's ``*_truncated`` flags);
    ``example_id`` and ``weight`` pass through."""
    out = {"example_id": batch["example_id"], "weight": batch["weight"].astype(np.float32)}
    for side in SIDES:
        tokens = tokenize_batch({"prompt": batch["prompt"], "response": batch[side]}, model_path,
                                max_prompt_tokens, max_response_tokens)
        out |= {f"{side}_{name}": column for name, column in tokens.items()}
    return out


def pair_tensors(rows: dict[str, np.ndarray], device: torch.device | str) -> dict[str, Tensor]:
    """Chosen rows then rejected rows as one batch ``[2N, L]``, cut to the longest real
    row (rows are right-padded)."""
    length = max(int(rows[f"{side}_attention_mask"].sum(axis=1).max()) for side in SIDES)
    return {name: torch.as_tensor(np.concatenate([rows[f"{side}_{name}"][:, :length] for side in SIDES]),
                                  dtype=torch.long, device=device)
            for name in TOKEN_COLUMNS}


def pair_logprobs(model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Chosen and rejected sequence log-probs of a `pair_tensors` batch, in one forward."""
    logps = sequence_logprobs(model, batch)
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


class ReferenceLogprobs:
    """For ``Dataset.map_batches`` (a callable class: the model loads once per actor): adds
    ``ref_chosen_logp`` and ``ref_rejected_logp`` under the frozen reference model."""

    def __init__(self, model_path: str, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = disable_dropout(load_causal_lm(model_path, device=self.device)).eval()

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chosen, rejected = pair_logprobs(self.model, pair_tensors(batch, self.device))
        return batch | {"ref_chosen_logp": chosen.cpu().numpy(), "ref_rejected_logp": rejected.cpu().numpy()}


# ----------------------------------------------------------------------------- the loop's task
def build_policy(model_path: str, lora: LoRAConfig) -> torch.nn.Module:
    """The policy starts as the reference (with LoRA adapters when ``dpo.lora.rank`` > 0).
    Dropout off: the loss compares the policy's log-probs with the reference's, computed
    without dropout."""
    return with_lora(disable_dropout(load_causal_lm(model_path)), lora)


def collate_pair_rows(rows: dict[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    """`pair_tensors` plus the reference log-probs and the pair weights."""
    batch = pair_tensors(rows, device)
    for name in ("ref_chosen_logp", "ref_rejected_logp", "weight"):  # copied: Ray Data's arrays are read-only
        batch[name] = torch.tensor(np.asarray(rows[name], dtype=np.float32), device=device)
    return batch


def dpo_batch_loss(model, batch: dict[str, Tensor], beta: float, loss_type: str,
                   label_smoothing: float) -> tuple[Tensor, dict[str, float]]:
    """One forward over both sides of every pair, then the weighted sums the loop divides
    by the global batch's weight (`weighted_sums`); ``tokens`` for throughput."""
    chosen, rejected = pair_logprobs(model, batch)
    losses, chosen_rewards, rejected_rewards = dpo_pair_losses(
        chosen, rejected, batch["ref_chosen_logp"], batch["ref_rejected_logp"], beta, loss_type, label_smoothing)
    loss_sum, sums = weighted_sums(losses, chosen_rewards, rejected_rewards, batch["weight"])
    return loss_sum, sums | {"tokens": float(batch["attention_mask"].sum())}

