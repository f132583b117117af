"""Epochs of shuffled minibatches over one PPO batch, with optional early stop on KL, and
the split of a minibatch into micro-batches under a token budget (gradient accumulation).

Usage in the policy's update (actors/policy.py)::

    early_stop = EarlyStopOnKL(target_kl)
    for epoch, indices in minibatch_indices(n, minibatch_size, epochs, generator, early_stop):
        loss, stats = clipped_surrogate_loss(...)
        early_stop.record(stats["approx_kl"])
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor


class EarlyStopOnKL:
    """Stops the remaining epochs once an epoch's mean approx KL exceeds 1.5 x ``target_kl``.

    The policy has then moved far from the one that collected the batch, and more epochs on
    the same data mostly overfit it. ``target_kl=None`` never stops.
    """

    TOLERANCE = 1.5

    def __init__(self, target_kl: float | None):
        self.target_kl = target_kl
        self.stopped_after_epoch: int | None = None  # for logging
        self._epoch_kls: list[float] = []

    def record(self, approx_kl: float) -> None:
        """Note the approx KL of one minibatch of the current epoch."""
        self._epoch_kls.append(float(approx_kl))

    def finish_epoch(self, epoch: int) -> bool:
        """Close ``epoch``; True when the remaining epochs should be skipped."""
        kls, self._epoch_kls = self._epoch_kls, []
        if self.target_kl is None or not kls:
            return False
        if sum(kls) / len(kls) > self.TOLERANCE * self.target_kl:
            self.stopped_after_epoch = epoch
            return True
        return False


def minibatch_indices(n: int, minibatch_size: int, epochs: int, generator: torch.Generator,
                      early_stop: EarlyStopOnKL | None = None) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(epoch, indices)`` with ``indices`` a long tensor of sample positions.

    Each epoch is a fresh permutation of ``range(n)`` drawn from ``generator`` (so a seeded
    generator gives the same order on every run and after resume), cut into minibatches of
    ``minibatch_size``; if ``n`` is not a multiple, the last minibatch is smaller and no
    sample is dropped. ``early_stop`` is consulted at the end of each epoch.
    """
    if not 0 < minibatch_size <= n:
        raise ValueError(f"minibatch_size must be in [1, n={n}], got {minibatch_size}")
    for epoch in range(epochs):
        for indices in torch.randperm(n, generator=generator).split(minibatch_size):
            yield epoch, indices
        if early_stop is not None and early_stop.finish_epoch(epoch):
            return


def micro_batch_count(lengths: Tensor, token_budget: int) -> int:
    """How many micro-batches keep each one under ``token_budget`` padded tokens (rows x the
    longest row) when rows are sorted by length and cut into equal-sized runs; 1 when
    ``token_budget`` is 0 (no limit)."""
    if token_budget <= 0:
        return 1
    ordered = lengths.sort(descending=True).values.tolist()
    for count in range(1, len(ordered) + 1):
        bounds = torch.linspace(0, len(ordered), count + 1).round().long().tolist()
        if all((hi - lo) * ordered[lo] <= token_budget for lo, hi in zip(bounds, bounds[1:])):
            return count
    return len(ordered)


def length_sorted_parts(lengths: Tensor, count: int) -> list[Tensor]:
    """Row positions in ``count`` parts of near-equal size, rows of similar length together
    (less padding per part); every row appears once."""
    order = lengths.sort(descending=True, stable=True).indices
    bounds = torch.linspace(0, len(order), count + 1).round().long().tolist()
    return [order[lo:hi] for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
