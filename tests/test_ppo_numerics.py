"""Updates stay numerically sound: padding that holds -inf gives no NaN in any loss's value or
gradient, one extreme token's log-ratio is clamped instead of overflowing, and the gap between
the sampler's and the trainer's log-probs is corrected as the rollout correction says."""
import pytest
import torch

from alignray.ppo import POLICY_LOSSES, kl_estimate, kl_loss
from alignray.ppo.kl import KL_ESTIMATORS, LOG_RATIO_CLAMP
from alignray.ppo.experience import Rollout, build_experience
from alignray.ppo.losses import clipped_value_loss
from alignray.ppo.rollout_correction import correction_weights

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


# ---------------------------------------------------------------- rollout correction
def injected_gap() -> tuple[torch.Tensor, torch.Tensor]:
    """Trainer and sampler log-probs whose log-ratio is known token by token: ratios
    e^0.1, e^1, e^-1.5 on the first row, e^-0.2, e^0.3 on the second; -inf on padding."""
    gaps = torch.tensor([[0.1, 1.0, -1.5, 0.0], [-0.2, 0.3, 0.0, 0.0]])
    rollout = padded(torch.full(MASK.shape, -2.0), NEG_INF)
    return padded(rollout + gaps, NEG_INF), rollout


def test_token_tis_weighs_each_token_by_its_ratio_truncated_at_the_cap():
    trainer, rollout = injected_gap()
    weights, stats = correction_weights(trainer, rollout, MASK, "token_tis", cap=2.0)
    ratio = torch.exp(torch.tensor([[0.1, 1.0, -1.5], [-0.2, 0.3, 0.0]]))
    expected = torch.where(MASK, torch.nn.functional.pad(ratio, (0, 1)).clamp(max=2.0), torch.zeros(()))
    assert torch.allclose(weights, expected) and (weights[~MASK] == 0).all()
    assert stats["rollout_correction/truncated_share"] == pytest.approx(1 / 5)  # e^1 > 2 only


def test_the_mask_modes_drop_exactly_the_tokens_and_responses_outside_the_band():
    trainer, rollout = injected_gap()
    token, stats = correction_weights(trainer, rollout, MASK, "token_mask", cap=2.0)  # |log r| <= log 2 = 0.69
    assert token.tolist() == [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    assert stats["rollout_correction/dropped_share"] == pytest.approx(2 / 5)
    # row 1's mean log-ratio is (0.1 + 1 - 1.5) / 3 = -0.13, row 2's 0.05: both kept at cap 2;
    # at cap 1.1 (log 0.095) row 1 goes and row 2 stays
    kept, _ = correction_weights(trainer, rollout, MASK, "sequence_mask", cap=2.0)
    assert torch.equal(kept, MASK.float())
    tight, _ = correction_weights(trainer, rollout, MASK, "sequence_mask", cap=1.1)
    assert tight.tolist() == [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    sequence, _ = correction_weights(trainer, rollout, MASK, "sequence_tis", cap=2.0)
    assert torch.allclose(sequence[0, :3], torch.exp(torch.tensor(-0.4)).expand(3))
    assert torch.allclose(sequence[1, :2], torch.exp(torch.tensor(0.1)).expand(2))


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_a_dropped_token_gets_no_gradient_and_no_share_of_the_mean(name):
    logprobs, old = leaf(4), leaf(5, NEG_INF).detach()
    advantages = torch.ones(MASK.shape)
    weights = MASK.float().clone()
    weights[0, 1] = 0.0  # dropped by a mask mode
    loss, _ = POLICY_LOSSES[name](logprobs, old, advantages, MASK, clip_eps=0.2, weights=weights)
    loss.backward()
    kept = MASK.clone()
    kept[0, 1] = False
    reference, _ = POLICY_LOSSES[name](logprobs.detach(), old, advantages, kept, clip_eps=0.2)
    assert torch.isfinite(logprobs.grad).all() and loss.item() == pytest.approx(reference.item())
    assert logprobs.grad[0, 1] == 0


def test_with_a_correction_the_ratio_is_taken_against_the_trainers_logprobs():
    trainer, rollout_logprobs = injected_gap()
    rollout = Rollout(prompt_index=torch.arange(2), prompt_ids=torch.ones(2, 1, dtype=torch.long),
                      prompt_mask=torch.ones(2, 1, dtype=torch.long), response_ids=torch.ones(2, 4, dtype=torch.long),
                      response_mask=MASK, logprobs=rollout_logprobs, ended_with_eos=torch.tensor([True, True]))
    common = dict(ref_logprobs=padded(torch.full(MASK.shape, -2.0), NEG_INF), values=torch.zeros(MASK.shape),
                  scores=torch.tensor([1.0, -1.0]), kl_coef=0.1, policy_logprobs=trainer)
    plain, plain_stats = build_experience(rollout, **common)
    corrected, stats = build_experience(rollout, correction=("token_tis", 2.0), **common)
    assert torch.equal(plain.old_logprobs, rollout_logprobs) and torch.equal(plain.correction_weights, MASK.float())
    assert torch.equal(corrected.old_logprobs, trainer) and torch.equal(corrected.logprobs, rollout_logprobs)
    assert "rollout_correction/weight_mean" in stats and "rollout_correction/weight_mean" not in plain_stats
    assert stats["kl"] != plain_stats["kl"]  # the KL to the reference is the trainer's too


def test_an_unknown_correction_mode_or_a_cap_at_or_below_one_is_refused():
    trainer, rollout = injected_gap()
    with pytest.raises(ValueError, match="token_tis"):
        correction_weights(trainer, rollout, MASK, "tis", cap=2.0)
    with pytest.raises(ValueError, match="above 1"):
        correction_weights(trainer, rollout, MASK, "token_mask", cap=1.0)
