"""The reward model: the loader's round trip keeps the normalisation, scores do not depend
on batching, and the Hydra app trains on feedback with Ray Train (one and two workers
agree within a stated tolerance), beats chance against the held-out annotators and, asked to,
trains a model per annotator group scored against every group."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from alignray.feedback.quality import annotator_quality, annotator_weights
from alignray.feedback.aggregate import build_training_tables
from alignray.feedback.schema import write_feedback
from alignray.feedback.simulated import BY_LENIENCY, HELD_OUT_JUDGE_RATERS, make_annotator_pool, simulate_feedback
from alignray.reward.model import (ENSEMBLE_FILE, MEAN_KEY, STD_KEY, RewardModel, encode_texts, init_reward_model,
                                   load_reward_model, reference_statistics, save_reward_model)
from alignray.core.metrics import read_metrics
from alignray.core.model_card import read_model_card
from alignray.workflows.common import compose_app_config

PROMPTS = ["i think", "today was", "my flight", "this phone"]
RESPONSES = ["a great day", "so bad and sad", "it is ok", "love it so much, happy", "terrible awful service"]
# Both runs train on the same global batches (actors/trainer.py) with the loss divided
# by the global batch's weight, so two workers differ from one only by the order of float
# sums. Early steps agree to float precision; over ~110 steps at this learning rate Adam
# amplifies the rounding differences, so the end result agrees within a looser tolerance.
EARLY_STEPS = 30
EARLY_LOSS_TOLERANCE = 1e-4
FINAL_LOSS_TOLERANCE = 0.05
HELDOUT_ACCURACY_TOLERANCE = 0.03


def test_loader_round_trip_keeps_normalisation_and_scores(tiny_base_model, tmp_path):
    model, tokenizer = init_reward_model(tiny_base_model, max_length=32)
    fresh = RewardModel([model], tokenizer)
    prompts, responses = PROMPTS + PROMPTS[:1], RESPONSES
    mean, std = reference_statistics(fresh, prompts, responses)
    raw = fresh.score(prompts, responses, normalize=False)
    save_reward_model(model, tokenizer, tmp_path / "rm", mean, std)

    loaded = load_reward_model(tmp_path / "rm", device="cpu")
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config[MEAN_KEY] == pytest.approx(mean) and config[STD_KEY] == pytest.approx(std)
    assert loaded.max_length == 32
    matter, body = read_model_card(tmp_path / "rm")
    assert matter["pipeline_tag"] == "text-classification" and "reward-model" in matter["tags"]
    assert f"(raw - model.config.{MEAN_KEY}) / model.config.{STD_KEY}" in body
    torch.testing.assert_close(loaded.score(prompts, responses, normalize=False), raw)
    normalized = loaded.score(prompts, responses)
    torch.testing.assert_close(normalized, (raw - mean) / std)
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert normalized.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    # Padding must not change a score: one at a time equals all at once.
    one_by_one = torch.cat([loaded.score([p], [r], batch_size=1) for p, r in zip(prompts, responses)])
    torch.testing.assert_close(one_by_one, normalized, atol=1e-5, rtol=1e-5)


def test_sum_pooling_adds_the_head_over_the_tokens_and_ignores_padding(tiny_base_model):
    torch.manual_seed(0)
    model, tokenizer = init_reward_model(tiny_base_model, max_length=32, pooling="sum")
    scorer = RewardModel([model], tokenizer)
    prompts, responses = PROMPTS + PROMPTS[:1], RESPONSES
    pooled = scorer.score(prompts, responses, normalize=False)
    for prompt, response, reward in zip(prompts, responses, pooled):
        batch = encode_texts(tokenizer, [prompt], [response], 32)
        with torch.no_grad():
            hidden = model.base_model(**batch).last_hidden_state
            assert reward.item() == pytest.approx(model.score(hidden)[0, :, 0].sum().item(), abs=1e-4)
    torch.testing.assert_close(torch.cat([scorer.score([p], [r], normalize=False) for p, r in zip(prompts, responses)]),
                               pooled, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(pooled, RewardModel([init_reward_model(tiny_base_model, 32)[0]], tokenizer)
                              .score(prompts, responses, normalize=False))
    with pytest.raises(ValueError, match="pooling must be one of"):
        init_reward_model(tiny_base_model, pooling="mean-ish")


def test_a_constant_head_cannot_be_normalised(tiny_base_model, tmp_path):
    model, tokenizer = init_reward_model(tiny_base_model)
    with pytest.raises(ValueError, match="constant"):
        save_reward_model(model, tokenizer, tmp_path / "rm", mean=0.0, std=0.0)


def test_a_batch_computes_each_distinct_text_once_and_prompts_can_travel_whole(tiny_base_model):
    from alignray.reward.losses import reward_loss_sums
    from alignray.reward.training import collate_reward_rows, reward_batch_loss
    from alignray.data.splits import training_order

    # three pairs and two pointwise rows of one prompt over three responses
    chosen, rejected = ["a great day", "so bad and sad", "a great day"], ["so bad and sad", "it is ok", "it is ok"]
    rows = {"is_pair": np.array([True] * 3 + [False] * 2), "prompt": np.array(["today was"] * 5, dtype=object),
            "chosen": np.array(chosen + ["it is ok", "a great day"], dtype=object),
            "rejected": np.array(rejected + ["", ""], dtype=object), "weight": np.array([1.0, 2.0, 0.5, 1.0, 3.0]),
            "margin": np.zeros(5), "target": np.array([0.0, 0.0, 0.0, 0.25, 1.0])}
    batch = collate_reward_rows(rows, torch.device("cpu"), str(tiny_base_model), 32)
    assert batch["input_ids"].shape[0] == 3
    torch.manual_seed(0)
    model, tokenizer = init_reward_model(tiny_base_model, max_length=32)
    loss, _ = reward_batch_loss(model, batch, margin_scale=0.0, pointwise_weight=0.5)
    scorer = RewardModel([model], tokenizer)
    with torch.no_grad():
        reward = {r: scorer.score(["today was"], [r], normalize=False)[0] for r in set(chosen + rejected)}
    expected, _ = reward_loss_sums(torch.stack([reward[c] for c in chosen]), torch.stack([reward[r] for r in rejected]),
                                   torch.zeros(3), torch.tensor([1.0, 2.0, 0.5]),
                                   torch.stack([reward["it is ok"], reward["a great day"]]), torch.tensor([0.25, 1.0]),
                                   torch.tensor([1.0, 3.0]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    prompts = [f"p{i % 7}" for i in range(40)]
    order = training_order(prompts, seed=3, by_prompt=True)
    assert sorted(order.tolist()) == list(range(40))
    runs = [prompts[i] for i in order]
    assert sum(a != b for a, b in zip(runs, runs[1:])) == 6  # each prompt's rows in one run
    assert not np.array_equal(order, training_order(prompts, seed=4, by_prompt=True))
    shuffled = [prompts[i] for i in training_order(prompts, seed=3, by_prompt=False)]
    assert sum(a != b for a, b in zip(shuffled, shuffled[1:])) > 6


WORDS = {"positive": ["good", "great", "love", "happy", "nice", "best", "thanks"],
         "negative": ["bad", "hate", "sad", "worst", "sorry", "awful", "angry"],
         "neutral": ["the", "flight", "today", "phone", "just", "it", "was"]}


def synthetic_feedback(tmp_path, num_prompts: int = 100, seed: int = 0, groups=None):
    """Training feedback by raters 1-5 (plus a bad-faith flipper) and held-out feedback by
    raters 1-5 and 6-10, on short texts made of lexicon words (``groups``: as in make_annotator_pool)."""
    rng = np.random.default_rng(seed)

    def response():
        words = [rng.choice(WORDS[kind]) for kind in rng.choice(list(WORDS), size=4)]
        return " ".join(words)

    prompts = [f"{rng.choice(WORDS['neutral'])} {i}" for i in range(2 * num_prompts)]
    candidates = [[response() for _ in range(3)] for _ in prompts]
    trainers = make_annotator_pool(bad_faith_share=0.15, bad_faith_behaviours=("flipper",), groups=groups, seed=seed)
    train = simulate_feedback(trainers, prompts[:num_prompts], candidates[:num_prompts],
                              forms=("pairwise", "thumbs"), annotators_per_item=3, seed=seed)
    judges = make_annotator_pool(groups=groups) + make_annotator_pool(HELD_OUT_JUDGE_RATERS, groups=groups)
    heldout = simulate_feedback(judges, prompts[num_prompts:], candidates[num_prompts:], forms=("pairwise",),
                                seed=seed + 1)
    tables = build_training_tables(train, annotator_weights(annotator_quality(train), "exclude"))
    folder = tmp_path / "feedback"
    folder.mkdir()
    write_feedback(train, folder / "feedback.parquet")
    write_feedback(heldout, folder / "heldout_feedback.parquet")
    pq.write_table(tables.pairs, folder / "pairs.parquet")
    pq.write_table(tables.pointwise, folder / "pointwise.parquet")
    return folder


def app_config(tmp_path, workers: int):
    return compose_app_config([
        f"workdir={tmp_path / f'runs-{workers}'}", f"cluster.num_workers={workers}", "cluster.cpus_per_worker=1",
        "reward_model.epochs=2", "reward_model.batch_size=32", "reward_model.lr=3e-3", "reward_model.log_every=5",
        "reward_model.max_length=16", "reward_model.deepspeed.zero_stage=0", "reward_model.compare_unfiltered=false"])


@pytest.fixture(scope="module")
def one_and_two_workers(ray_cluster, tiny_base_model, tmp_path_factory):
    """The app on the same feedback (annotators labelled by leniency group) with one and with two
    workers; the one-worker run also trains a model on each group's feedback alone
    (reward_model.cross_group), after its main model, which it leaves as it is."""
    from alignray.workflows.reward_model import run_reward_model

    tmp_path = tmp_path_factory.mktemp("app")
    feedback_dir = synthetic_feedback(tmp_path, groups=BY_LENIENCY)
    configs = {workers: app_config(tmp_path, workers) for workers in (1, 2)}
    configs[1].reward_model = dataclasses.replace(configs[1].reward_model, cross_group=True)
    return {workers: run_reward_model(cfg, str(tiny_base_model), feedback_dir) for workers, cfg in configs.items()}


def test_app_trains_normalises_and_evaluates_with_one_and_two_workers(one_and_two_workers, tiny_base_model):
    outs = one_and_two_workers
    evaluations = {w: json.loads((out / "eval.json").read_text())["model"] for w, out in outs.items()}
    for out in outs.values():
        for name in ("model/config.json", "metrics.jsonl", "calibration.png", "loss.png", "summary.json", "DONE"):
            assert (out / name).exists(), name
        matter, body = read_model_card(out / "model")
        assert matter["pipeline_tag"] == "text-classification" and f"Starts from `{tiny_base_model}`" in body
        accuracy = json.loads((out / "eval.json").read_text())["model"]["heldout"]["heldout_annotators"]["accuracy"]
        assert f"| `heldout_annotators_pair_accuracy` | {accuracy:.4g} |" in body

    heldout = {w: e["heldout"]["heldout_annotators"]["accuracy"] for w, e in evaluations.items()}
    assert heldout[1] > 0.65, evaluations[1]["heldout"]

    logs = {w: [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r] for w, out in outs.items()}
    early = [(a["loss"], b["loss"]) for a, b in zip(logs[1], logs[2]) if a["step"] <= EARLY_STEPS]
    final = [e["final_train_loss"] for e in evaluations.values()]
    print(f"1 vs 2 workers: early loss gap {max(abs(a - b) for a, b in early):.1e}, final train loss {final}, "
          f"held-out accuracy {heldout}")
    assert len(early) >= 5 and all(a == pytest.approx(b, abs=EARLY_LOSS_TOLERANCE) for a, b in early)
    assert final[0] == pytest.approx(final[1], abs=FINAL_LOSS_TOLERANCE)
    assert heldout[1] == pytest.approx(heldout[2], abs=HELDOUT_ACCURACY_TOLERANCE)


def test_app_trains_an_ensemble_scored_as_one_with_sum_pooling(ray_cluster, tiny_base_model, tmp_path):
    from alignray.workflows.reward_model import run_reward_model

    feedback_dir = synthetic_feedback(tmp_path)
    cfg = app_config(tmp_path, 1)
    cfg.reward_model = dataclasses.replace(cfg.reward_model, ensemble_size=2, ensemble_data="split", pooling="sum",
                                           epochs=1, max_steps=12, eval_every=0)
    out = run_reward_model(cfg, str(tiny_base_model), feedback_dir)
    manifest = json.loads((out / "model" / ENSEMBLE_FILE).read_text())
    assert manifest["members"] == ["member-0", "member-1"]
    for i in (0, 1):
        assert (out / f"member-{i}" / "loss.png").exists() and (out / "model" / f"member-{i}" / "config.json").exists()
    evaluation = json.loads((out / "eval.json").read_text())["model"]
    assert evaluation["ensemble_size"] == 2 and len(evaluation["member_heldout_accuracies"]) == 2
    assert evaluation["mean_disagreement"] > 0

    ensemble = load_reward_model(out / "model", device="cpu")
    assert (ensemble.mean, ensemble.std) == (manifest["mean"], manifest["std"])
    alone = [load_reward_model(out / "model" / f"member-{i}", device="cpu") for i in (0, 1)]
    raw = torch.stack([member.score(PROMPTS[:1] * 5, RESPONSES, normalize=False) for member in alone])
    scores = ensemble.score_with_disagreement(PROMPTS[:1] * 5, RESPONSES)
    torch.testing.assert_close(scores.reward, (raw.mean(dim=0) - ensemble.mean) / ensemble.std)
    torch.testing.assert_close(scores.disagreement, raw.std(dim=0, unbiased=False) / ensemble.std)
    assert not torch.allclose(raw[0], raw[1])  # the members learnt from different prompts
    matter, body = read_model_card(out / "model")
    assert "An ensemble of 2 sequence classifiers" in body


def test_unfiltered_tables_bring_back_excluded_annotators_and_are_none_when_nobody_was(tmp_path):
    from alignray.feedback.schema import read_feedback
    from alignray.reward.dataset import unfiltered_tables

    folder = synthetic_feedback(tmp_path, num_prompts=40)
    feedback = read_feedback(folder / "feedback.parquet")[0]
    pairs, pointwise = pq.read_table(folder / "pairs.parquet"), pq.read_table(folder / "pointwise.parquet")
    everyone_pairs, _ = unfiltered_tables(feedback, pairs, pointwise)
    assert "badfaith1-flipper" in everyone_pairs.column("annotator_id").to_pylist()
    assert "badfaith1-flipper" not in pairs.column("annotator_id").to_pylist()
    kept = build_training_tables(feedback, None)
    assert unfiltered_tables(feedback, kept.pairs, kept.pointwise) is None


def test_cross_group_models_are_scored_against_every_groups_majority(one_and_two_workers):
    out = one_and_two_workers[1]  # the run with reward_model.cross_group=true
    evaluation = json.loads((out / "eval.json").read_text())
    assert {"model", "trained_on:lenient", "trained_on:strict"} <= set(evaluation)
    # Rater 5 is the one lenient trainer; raters 1-4 strict. Every kept pair is in one group's model.
    assert evaluation["trained_on:lenient"]["pairs"] + evaluation["trained_on:strict"]["pairs"] == \
        evaluation["model"]["pairs"]
    assert evaluation["trained_on:strict"]["pairs"] > evaluation["trained_on:lenient"]["pairs"] > 0
    by_group = evaluation["accuracy_by_group"]
    assert by_group["lenient"]["strict"] == evaluation["trained_on:lenient"]["heldout"]["group:strict"]["accuracy"]
    assert set(by_group) == {"all", "lenient", "strict"} and all(set(v) == {"lenient", "strict"}
                                                                  for v in by_group.values())
    for group in ("lenient", "strict"):
        assert (out / f"group-{group}" / "model" / "config.json").exists()
    # only the run that asked for them trained group models
    assert not list(one_and_two_workers[2].glob("group-*"))


class StubEndpoint:
    """A loopback HTTP server answering POST /v1/score like the reward endpoint: reward =
    response length; the first ``failures`` requests get 503; a wrong token gets 401."""

    def __init__(self, token=None, failures=0):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        stub = self
        self.requests, self.failures = [], failures

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, self.headers.get("Authorization"), body))
                if token and self.headers.get("Authorization") != f"Bearer {token}":
                    return self._answer(401, {"detail": "invalid token"})
                if stub.failures:
                    stub.failures -= 1
                    return self._answer(503, {"detail": "busy"})
                self._answer(200, {"rewards": [float(len(r)) for r in body["responses"]],
                                   "model_name": "stub", "model_version": "v1"})

            def _answer(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_client_sends_the_token_chunks_requests_and_retries_busy_answers():
    from alignray.reward.client import RewardClient

    stub = StubEndpoint(token="s3cret-token", failures=1)
    try:
        client = RewardClient(stub.url, token="s3cret-token", timeout=5, retries=2, max_items_per_request=2,
                              backoff_s=0.01)
        assert client.score(["p"] * 3, ["a", "bb", "ccc"]) == [1.0, 2.0, 3.0]
        assert (client.model_name, client.model_version) == ("stub", "v1")
        paths = {path for path, _, _ in stub.requests}
        assert paths == {"/v1/score"} and {auth for _, auth, _ in stub.requests} == {"Bearer s3cret-token"}
        assert [len(body["prompts"]) for _, _, body in stub.requests] == [2, 2, 1]  # 503, retry, rest
    finally:
        stub.close()


def test_client_raises_at_once_on_a_refusal_and_after_retries_when_unreachable():
    from alignray.reward.client import RewardClient, RewardEndpointError

    stub = StubEndpoint(token="s3cret-token")
    try:
        with pytest.raises(RewardEndpointError, match="401"):
            RewardClient(stub.url, token="wrong", retries=3, backoff_s=0.01).score(["p"], ["a"])
        assert len(stub.requests) == 1
    finally:
        stub.close()
    with pytest.raises(RewardEndpointError, match="unreachable after 2 tries"):
        RewardClient(stub.url, timeout=1, retries=1, backoff_s=0.01).score(["p"], ["a"])


def test_evaluation_panels_separate_training_heldout_annotators_and_groups():
    from alignray.feedback.schema import feedback_table, pairwise_feedback
    from alignray.reward.heldout import evaluation_panels

    heldout = feedback_table([pairwise_feedback("p", "x", "y", "a", annotator, annotator_group=group)
                              for annotator, group in [("rater1", "north"), ("rater2", "south"), ("rater6", "north")]])
    assert evaluation_panels(heldout, {"rater1", "rater2", "badfaith1"}) == {
        "training_annotators": ["rater1", "rater2"], "heldout_annotators": ["rater6"],
        "group:north": ["rater1", "rater6"], "group:south": ["rater2"]}
