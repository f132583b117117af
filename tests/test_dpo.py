"""DPO, IPO and cDPO: the losses on hand-computed cases, a response's sequence log-prob
against the SFT loss, and a short real run of the Hydra app's phase (Ray Data reference
pass, Ray Train + DeepSpeed) whose implicit-reward accuracy on its training pairs rises."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from alignray.dpo.training import dpo_loss, pair_logprobs, pair_tensors, sequence_logprobs, tokenize_pairs_batch
from alignray.feedback.aggregate import PAIRS_SCHEMA
from alignray.core.metrics import read_metrics
from alignray.core.model_card import read_model_card
from alignray.models.modeling import load_causal_lm
from alignray.sft.training import response_token_loss
from alignray.workflows.common import compose_app_config

# Two pairs. Pair 1: the policy moved +1 nat on chosen, -1 on rejected (h = 2); pair 2: it
# moved +1 on rejected only (h = -1).
POLICY_CHOSEN, POLICY_REJECTED = torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -4.0])
REF_CHOSEN, REF_REJECTED = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -5.0])
BETA = 0.5


def softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


def losses(**options):
    return dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, BETA, **options)


def test_sigmoid_dpo_known_answer():
    loss, metrics = losses()
    # beta h = 1 and -0.5: -log sigmoid(1) = softplus(-1), -log sigmoid(-0.5) = softplus(0.5)
    assert float(loss) == pytest.approx((softplus(-1.0) + softplus(0.5)) / 2)
    # implicit rewards: pair 1 chosen 0.5, rejected -0.5; pair 2 chosen 0, rejected 0.5
    assert metrics["reward_accuracy"] == pytest.approx(0.5)
    assert metrics["reward_margin"] == pytest.approx((1.0 - 0.5) / 2)
    assert metrics["chosen_reward"] == pytest.approx(0.25)
    assert metrics["rejected_reward"] == pytest.approx(0.0)


def test_weights_make_a_weighted_mean():
    loss, metrics = losses(weights=torch.tensor([3.0, 1.0]))
    assert float(loss) == pytest.approx((3 * softplus(-1.0) + softplus(0.5)) / 4)
    assert metrics["reward_accuracy"] == pytest.approx(0.75)
    assert metrics["reward_margin"] == pytest.approx((3 * 1.0 - 0.5) / 4)
    # a pair of weight 0 does not count at all
    only_first, _ = losses(weights=torch.tensor([1.0, 0.0]))
    assert float(only_first) == pytest.approx(softplus(-1.0))


def test_cdpo_label_smoothing_known_answer():
    loss, _ = losses(label_smoothing=0.2)
    # -(1-e) log sigmoid(bh) - e log sigmoid(-bh) = (1-e) softplus(-bh) + e softplus(bh)
    pair1 = 0.8 * softplus(-1.0) + 0.2 * softplus(1.0)
    pair2 = 0.8 * softplus(0.5) + 0.2 * softplus(-0.5)
    assert float(loss) == pytest.approx((pair1 + pair2) / 2)
    # cDPO stops pushing at beta h = log((1 - e) / e): its gradient there is zero
    h = torch.tensor([math.log(0.8 / 0.2) / BETA], requires_grad=True)
    zero = torch.zeros(1)
    dpo_loss(h, zero, zero, zero, BETA, label_smoothing=0.2)[0].backward()
    assert float(h.grad) == pytest.approx(0.0, abs=1e-6)


def test_ipo_known_answer():
    loss, metrics = losses(loss_type="ipo")
    # target margin 1 / (2 beta) = 1: (2 - 1)^2 and (-1 - 1)^2
    assert float(loss) == pytest.approx((1.0 + 4.0) / 2)
    assert metrics["reward_accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize("options, key", [({"loss_type": "hinge"}, "dpo.loss_type"),
                                          ({"loss_type": "ipo", "label_smoothing": 0.1}, "dpo.label_smoothing"),
                                          ({"label_smoothing": 0.5}, "dpo.label_smoothing")])
def test_undefined_settings_are_refused_by_name(options, key):
    with pytest.raises(ValueError, match=key):
        losses(**options)


def test_sequence_logprob_is_the_sft_loss_of_the_response(tiny_base_model):
    model = load_causal_lm(tiny_base_model, device=torch.device("cpu")).eval()
    pairs = {"prompt": np.array(["my flight", "this phone is"]), "chosen": np.array(["was great", "the best"]),
             "rejected": np.array(["was late and bad", "awful"]), "weight": np.array([1.0, 1.0]),
             "example_id": np.array([0, 1])}
    rows = tokenize_pairs_batch(pairs, str(tiny_base_model), max_prompt_tokens=8, max_response_tokens=8)
    batch = pair_tensors(rows, "cpu")
    with torch.no_grad():
        logps = sequence_logprobs(model, batch)
        sft_loss_sum, sums = response_token_loss(model, batch)
        chosen, rejected = pair_logprobs(model, batch)
        alone = pair_logprobs(model, pair_tensors({k: v[:1] for k, v in rows.items()}, "cpu"))
    assert float(-logps.sum()) == pytest.approx(float(sft_loss_sum), rel=1e-5)
    assert sums["units"] == float(batch["loss_mask"][:, 1:].sum())
    torch.testing.assert_close(torch.cat([chosen, rejected]), logps)
    # padding does not change a row's log-prob: the first pair alone equals it in the batch
    torch.testing.assert_close(torch.cat(alone), torch.stack([chosen[0], rejected[0]]), atol=1e-4, rtol=1e-5)


def test_reference_pass_covers_only_the_rows_the_step_budget_reaches():
    from alignray.core.train_loop import rows_within_budget

    assert rows_within_budget(66_000, 32, 300) == 9_600  # training ends inside epoch 1: its first 300 batches
    assert rows_within_budget(9_000, 32, 300) == 9_000  # the budget goes past one epoch: every row
    assert rows_within_budget(66_000, 32, 0) == 66_000  # no step cap: every epoch


# ----------------------------------------------------------------------------- a real run
POSITIVE = ["good", "great", "love", "happy", "nice", "best"]
NEGATIVE = ["bad", "hate", "sad", "worst", "awful", "angry"]
STEPS = 6


def preference_folder(tmp_path, num_prompts: int = 40, seed: int = 0):
    """A pairs table in the feedback phase's schema: chosen responses of positive words,
    rejected of negative ones; one pair of weight 0 (an excluded annotator)."""
    rng = np.random.default_rng(seed)
    rows = [{"prompt": f"review {i}:", "chosen": " ".join(rng.choice(POSITIVE, 3)),
             "rejected": " ".join(rng.choice(NEGATIVE, 3)), "weight": float(rng.choice([0.5, 1.0])),
             "margin": 0.0, "kind": "pairwise", "source": "human", "annotator_id": f"a{i % 5}"}
            for i in range(num_prompts)]
    rows[0]["weight"] = 0.0
    folder = tmp_path / "feedback"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA), folder / "pairs.parquet")
    return folder


def test_dpo_app_raises_implicit_reward_accuracy_on_its_pairs(ray_cluster, tiny_base_model, tmp_path):
    from alignray.workflows.dpo import run_dpo

    cfg = compose_app_config([
        f"workdir={tmp_path / 'runs'}", "cluster.num_workers=1", "cluster.cpus_per_worker=1",
        "data.max_prompt_tokens=8", "data.max_response_tokens=8", "dpo.heldout_fraction=0.2",
        "dpo.batch_size=8", "dpo.epochs=2", f"dpo.max_steps={STEPS}", "dpo.lr=1e-3", "dpo.warmup_steps=0",
        "dpo.beta=0.5", "dpo.log_every=1", "dpo.eval_every=0", "dpo.checkpoint_every=0",
        "dpo.deepspeed.zero_stage=0"])
    out = run_dpo(cfg, str(tiny_base_model), preference_folder(tmp_path))

    summary = json.loads((out / "summary.json").read_text())
    data = summary["data"]
    assert data["pairs_read"] == 40 and data["pairs_weight_zero"] == 1
    assert data["train"]["pairs"] + data["heldout"]["pairs"] == data["pairs_kept"] == 39
    assert data["train_pairs_beyond_max_steps"] == 0  # 2 epochs of the pairs fit in the steps
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if "reward_accuracy" in r and "loss" in r]
    assert len(train) == STEPS
    first, last = train[0], train[-1]
    # step 1 is scored before its update: the policy is the reference, every margin 0, loss log 2
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert summary["heldout_loss_start"] == pytest.approx(math.log(2), abs=1e-4)
    print(f"train implicit-reward accuracy {first['reward_accuracy']:.3f} -> {last['reward_accuracy']:.3f}, "
          f"margin {last['reward_margin']:.3f}; held-out accuracy {summary['heldout_reward_accuracy']:.3f}")
    assert last["reward_accuracy"] >= 0.9 > first["reward_accuracy"]
    assert last["reward_margin"] > 0 and last["loss"] < math.log(2)
    for name in ("model/config.json", "loss.png", "DONE"):
        assert (out / name).exists(), name
    matter, body = read_model_card(out / "model")
    assert "dpo" in matter["tags"] and f"Starts from `{tiny_base_model}`" in body
