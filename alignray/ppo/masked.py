"""Statistics over the valid tokens of a padded batch.

Every tensor here is batch-first, ``[batch, response_len]``, with a ``mask`` of the same
shape that marks valid response tokens (bool, or float 1.0/0.0). Padded positions may hold
anything, even ``inf`` or ``nan`` (the log-prob of a pad token often is ``-inf``): they are
selected away with ``torch.where`` rather than multiplied by zero, so they never leak.
"""
from __future__ import annotations

import torch
from torch import Tensor


def valid_only(values: Tensor, mask: Tensor) -> Tensor:
    """``values`` with every padded position set to 0 (same shape)."""
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of the valid entries: a scalar, or one value per row with ``dim=1``."""
    kept = valid_only(values, mask)
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of the valid entries: a scalar, or ``[batch]`` with ``dim=1``.

    Where nothing is valid the mean is 0 (not ``nan``), so an empty row cannot poison a batch.
    """
    count = mask.to(values.dtype).sum() if dim is None else mask.to(values.dtype).sum(dim)
    return masked_sum(values, mask, dim) / count.clamp_min(1)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance (a scalar) of the valid entries; ``unbiased`` applies Bessel's correction."""
    count = mask.bool().sum()
    if count < 2:
        raise ValueError(f"variance needs at least two valid entries, got {int(count)}")
    centred = values - masked_mean(values, mask)
    variance = masked_mean(centred * centred, mask)
    return variance * count / (count - 1) if unbiased else variance


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Rescale the valid entries to mean 0 and (unbiased) std 1; padded positions become 0.

    With ``shift_mean=False`` only the scale changes and the mean is kept, for quantities
    whose sign matters (Huang et al. whiten rewards that way).
    """
    mean = masked_mean(values, mask)
    whitened = (values - mean) * torch.rsqrt(masked_var(values, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return valid_only(whitened, mask)
