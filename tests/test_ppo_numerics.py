"""Updates stay numerically sound: padding that holds -inf gives no NaN in any loss's value or
gradient, and one extreme token's log-ratio is clamped instead of overflowing."""
import pytest
import torch

from alignray.ppo import POLICY_LOSSES, kl_estimate, kl_loss
from alignray.ppo.kl import KL_ESTIMATORS, LOG_RATIO_CLAMP
from alignray.ppo.losses import clipped_value_loss

MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
NEG_INF = float("-inf")


def padded(values: torch.Tensor, fill: float) -> torch.Tensor:
    return torch.where(MASK, values, torch.full_like(values, fill))


def leaf(seed: int, padding: float | None = None) -> torch.Tensor:
    """Log-prob-like values that require grad; with ``padding``, the padded positions of the
    leaf itself hold it (as a model's outputs do: masking a copy would hide the problem)."""
    values = torch.randn(MASK.shape, generator=torch.Generator().manual_seed(seed)) * 0.1 - 2.0
    return (values if padding is None else padded(values, padding)).requires_grad_()


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_policy_losses_are_nan_free_in_value_and_gradient_with_minus_inf_on_padding(name):
    logprobs = leaf(0)  # the trainer's: finite on padding; the sampler's hold -inf there
    old = leaf(1, NEG_INF).detach()
    advantages = padded(torch.randn(MASK.shape), float("nan"))
    loss, stats = POLICY_LOSSES[name](logprobs, old, advantages, MASK, clip_eps=0.2)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert torch.isfinite(logprobs.grad).all()
    assert (logprobs.grad[~MASK] == 0).all() and (logprobs.grad[MASK] != 0).any()


@pytest.mark.parametrize("estimator", sorted(KL_ESTIMATORS))
def test_the_kl_loss_and_the_value_loss_are_nan_free_with_inf_on_padding(estimator):
    logprobs = leaf(2, NEG_INF)
    kl_loss(logprobs, leaf(3, NEG_INF).detach(), MASK, estimator).backward()
    assert torch.isfinite(logprobs.grad).all() and (logprobs.grad[~MASK] == 0).all()
    values = leaf(4, float("inf"))
    loss, _ = clipped_value_loss(values, leaf(5, NEG_INF).detach(), padded(torch.randn(MASK.shape), float("nan")),
                                 MASK, clip_eps=0.2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(values.grad).all() and (values.grad[~MASK] == 0).all()


def test_an_extreme_log_ratio_is_clamped_in_the_loss_and_the_kl():
    """A token whose new log-prob is 60 nats above the behaviour one: exp(60) would dominate
    (or, at 100, overflow); the ratio is exp(LOG_RATIO_CLAMP) at most and the step stays finite."""
    logprobs = torch.zeros(1, 3, requires_grad=True)
    old = torch.tensor([[-60.0, 0.0, -1000.0]])
    loss, stats = POLICY_LOSSES["clipped_surrogate"](logprobs, old, torch.tensor([[-1.0, -1.0, -1.0]]),
                                                     torch.ones(1, 3, dtype=torch.bool), clip_eps=0.2)
    loss.backward()
    assert stats["ratio_max"] == pytest.approx(torch.exp(torch.tensor(LOG_RATIO_CLAMP)).item(), rel=1e-5)
    assert torch.isfinite(loss) and torch.isfinite(logprobs.grad).all()
    k3 = kl_estimate(torch.tensor([0.0, 0.0]), torch.tensor([1000.0, -1000.0]), "k3")
    assert torch.isfinite(k3).all()
    clamp = torch.tensor(LOG_RATIO_CLAMP)
    assert k3.tolist() == pytest.approx([torch.expm1(clamp).item() - LOG_RATIO_CLAMP,
                                         torch.expm1(-clamp).item() + LOG_RATIO_CLAMP])
