"""AI judges: reading answers, the rubric, the verdict cache, calibration and weights (pure);
the OpenAI-compatible judge against a real server on 127.0.0.1 (`transformers serve` with the
tiny model answering A or B, tests/judge_server.py) through a fault-injecting proxy: verdicts,
cache hits on a rerun, every fault, counts in = judged + unparsed + failed; the feedback phase
with an endpoint judge (calibration refusing it, zero weight, agreement weighting)."""
from __future__ import annotations

import json
import time

import pytest

from alignray.config.judge import EndpointJudgeConfig
from alignray.feedback.schema import feedback_table, pairwise_feedback
from alignray.judges.cache import VerdictCache
from alignray.judges.calibration import agreement_weight, calibrate, gold_items, length_bias, position_bias
from alignray.judges.endpoint import EndpointDown, EndpointJudge
from alignray.judges.forms import endpoint_asker, judge_pairs, judge_ratings
from alignray.judges.rubric import load_rubric
from alignray.judges.verdicts import FAILED, JUDGED, UNPARSED, Answer, logprob_choice, pair_verdict, parse_label
from tests.judge_server import FaultProxy, letter_judge_model, transformers_serve

# Short enough for the tiny model's 64 positions: a rubric file as a user would write one.
TINY_RUBRIC = """pairwise: "{prompt}\\nA: {reply_a}\\nB: {reply_b}"
pairwise_answer: The better reply is
pairwise_instruction: A or B?
rating: "{prompt} {reply}"
rating_answer: The rating is
rating_instruction: "{scale_min}-{scale_max}?"
scale: [1, 7]
flaws: [harmful, unhelpful]
"""
PAIRS = [("so happy", "love it", "hate it"), ("my phone", "broke again", "works great"),
         ("today is", "awful", "lovely"), ("good", "day", "night")]


# ----------------------------------------------------------------------------- pure
@pytest.mark.parametrize("reply, label", [("A", "A"), ("The better reply is B.", "B"), ("**B**", "B"),
                                          ("Reply A is better than B", "A"), ("#DeflateGate", None),
                                          ("", None), ("both are fine, A and B", None), ("b", None)])
def test_a_reply_naming_neither_answer_is_unparsed_never_a_guess(reply, label):
    assert parse_label(reply, ("A", "B")) == label


def test_answer_token_logprobs_are_read_when_the_server_returns_them():
    logprobs = {"content": [{"token": " A", "logprob": -0.2, "top_logprobs": [
        {"token": " A", "logprob": -0.2}, {"token": "B", "logprob": -1.8}, {"token": "The", "logprob": -3.0}]}]}
    p_a, p_b = logprob_choice(logprobs, ("A", "B"))
    assert p_a == pytest.approx(0.832, abs=1e-3) and p_a + p_b == pytest.approx(1.0)
    assert logprob_choice({"content": [{"token": "Hi", "logprob": -0.1, "top_logprobs": []}]}, ("A", "B")) is None


def test_both_orders_cancel_the_position_bias_and_a_missing_order_leaves_the_pair_unjudged():
    judged = Answer(JUDGED, probs=[1.0, 0.0])
    assert pair_verdict(judged, Answer(JUDGED, probs=[0.0, 1.0]))["preference_a"] > 0.99
    always_first = pair_verdict(judged, judged)
    assert always_first["preference_a"] == pytest.approx(0.5) and always_first["position_bias"] > 5
    assert pair_verdict(judged, Answer(UNPARSED, reason="meh"))["status"] == UNPARSED
    assert pair_verdict(Answer(FAILED, reason="http_500"), judged) == {"status": FAILED, "reason": "http_500"}


def test_rubrics_ship_and_an_edited_rubric_changes_its_digest(tmp_path):
    sentiment, chat = load_rubric("sentiment"), load_rubric("chat")
    assert sentiment.flaws == ("harmful", "unhelpful") and "helpful" in chat.pairwise
    path = tmp_path / "mine.yaml"
    path.write_text(TINY_RUBRIC)
    before = load_rubric(str(path)).digest
    path.write_text(TINY_RUBRIC.replace("A or B?", "Answer A or B."))
    assert load_rubric(str(path)).digest != before
    path.write_text(TINY_RUBRIC.replace("{prompt}", "{tweet}"))
    with pytest.raises(KeyError):
        load_rubric(str(path))


def test_calibration_refuses_a_judge_at_chance_and_weights_follow_one_rule():
    gold = {(f"p{i}", "x", "y"): "a" if i % 2 else "b" for i in range(200)}
    coin = {item: {"status": JUDGED, "preference_a": 0.9 if i % 4 < 2 else 0.1} for i, item in enumerate(gold)}
    at_chance = calibrate(gold, coin, 0.05)
    assert at_chance["agreement"] == pytest.approx(0.5) and not at_chance["better_than_chance"]
    good = {item: {"status": JUDGED, "preference_a": 0.9 if w == "a" else 0.1} for item, w in gold.items()}
    assert calibrate(gold, good, 0.05)["better_than_chance"]
    ties = {item: {"status": JUDGED, "preference_a": 0.5} for item in gold}  # a tie is no agreement
    assert calibrate(gold, ties, 0.05)["agreement"] == 0.0
    assert [agreement_weight(a) for a in (0.3, 0.5, 0.75, 1.0)] == [0.0, 0.0, 0.5, 1.0]


def test_gold_items_are_peoples_majorities_outside_the_judges_share():
    rows = [pairwise_feedback("p", "x", "y", w, f"r{i}") for i, w in enumerate("aab")]
    rows += [pairwise_feedback("q", "x", "y", w, f"r{i}") for i, w in enumerate("ab")]  # no majority
    rows += [pairwise_feedback("s", "x", "y", "b", "r0"), pairwise_feedback("t", "u", "v", "a", "ai-judge",
                                                                            source="ai")]
    gold = gold_items(feedback_table(rows), exclude=[("s", "x", "y")], count=10, seed=0)
    assert gold == {("p", "x", "y"): "a"}


def test_length_bias_counts_how_often_the_longer_reply_wins():
    items = [("p", "a long reply here", "short"), ("p", "short", "a long reply here"), ("p", "same", "size")]
    verdicts = [{"status": JUDGED, "preference_a": 0.8}, {"status": JUDGED, "preference_a": 0.3},
                {"status": JUDGED, "preference_a": 0.9}]
    assert length_bias(items, verdicts, None)["judge"] == {"pairs": 2, "longer_preferred_share": 1.0}


def test_biases_with_nothing_decided_are_null_in_strict_json():
    items = [("p", "a long reply here", "short")]
    undecided = [{"status": JUDGED, "preference_a": 0.5, "first_chosen": [], "position_bias": 0.0}]
    stats = {"length": length_bias(items, undecided, None), "position": position_bias([])}
    assert stats["length"]["judge"] == {"pairs": 0, "longer_preferred_share": None}
    assert stats["position"] == {"first_reply_chosen_share": None, "mean_position_bias_log_odds": None}
    json.dumps(stats, allow_nan=False)  # NaN here would make the run's JSON unreadable to strict readers


def test_a_verdict_survives_a_crash_and_failures_are_not_stored(tmp_path):
    cache = VerdictCache(tmp_path / "v.sqlite")
    cache.put("k", Answer(JUDGED, probs=[0.7, 0.3], tokens_in=9))
    cache.put("f", Answer(FAILED, reason="timeout"))
    # no close: a second connection (another process after a crash) reads what was committed
    again = VerdictCache(tmp_path / "v.sqlite")
    assert again.get("k").probs == [0.7, 0.3] and again.get("f") is None and len(again) == 1


# ----------------------------------------------------------------------------- the real server
@pytest.fixture(scope="module")
def served_judge(tiny_base_model, tmp_path_factory):
    model = letter_judge_model(tiny_base_model, tmp_path_factory.mktemp("judge") / "letter-judge")
    with transformers_serve(model) as base:
        proxy = FaultProxy(base)
        try:
            yield model, proxy
        finally:
            proxy.close()


def endpoint_config(model, proxy, **settings) -> EndpointJudgeConfig:
    return EndpointJudgeConfig(**{"base_url": proxy.url, "model": str(model), "max_tokens": 2, "concurrency": 2,
                                  "timeout_s": 30.0, "max_retries": 2, "backoff_s": 0.05, "api_key_env": "",
                                  **settings})


def ask_pairs(cfg, rubric, cache, pairs=PAIRS):
    endpoint = EndpointJudge(cfg)
    try:
        return judge_pairs(endpoint_asker(endpoint, rubric, "pairwise"), endpoint.identity(), rubric, pairs, cache)
    finally:
        endpoint.close()


@pytest.fixture()
def tiny_rubric(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_RUBRIC)
    return load_rubric(str(tmp_path / "tiny.yaml"))


def test_endpoint_verdicts_are_cached_and_a_rerun_pays_nothing(served_judge, tiny_rubric, tmp_path):
    model, proxy = served_judge
    cache = VerdictCache(tmp_path / "verdicts.sqlite")
    before = proxy.requests
    judging, answers = ask_pairs(endpoint_config(model, proxy), tiny_rubric, cache)
    assert judging.counts["in"] == len(PAIRS) == judging.counts["judged"] + judging.counts["unparsed"]
    assert judging.counts["judged"] > 0 and proxy.requests - before == 2 * len(PAIRS)
    assert all(a.tokens_in > 0 for a in answers if a.status == JUDGED)
    rerun, _ = ask_pairs(endpoint_config(model, proxy), tiny_rubric, cache)
    assert proxy.requests - before == 2 * len(PAIRS)  # nothing asked again
    assert rerun.verdicts == judging.verdicts and rerun.counts["answers_from_cache"] == 2 * len(PAIRS)
    edited = tiny_rubric.__class__(**{**tiny_rubric.__dict__, "digest": "edited"})
    ask_pairs(endpoint_config(model, proxy), edited, cache, PAIRS[:1])
    assert proxy.requests - before == 2 * len(PAIRS) + 2  # an edited rubric is asked afresh


def test_every_fault_is_survived_counted_and_no_verdict_is_lost(served_judge, tiny_rubric, tmp_path):
    model, proxy = served_judge
    cache = VerdictCache(tmp_path / "verdicts.sqlite")
    # the timeout is short, but not so short that a busy machine's real answers run past it
    cfg = endpoint_config(model, proxy, concurrency=1, timeout_s=4.0, max_retries=1)
    # in request order (one at a time): 429 then fine; 503 then fine; 401; a timeout twice
    # (retried once); garbage; an empty choice; the rest pass
    proxy.push(("status", 429, {"Retry-After": "1"}), None, ("status", 503, {}), None, ("status", 401, {}),
               ("sleep", 5.0), ("sleep", 5.0), ("garbage",), ("empty_choice",))
    started = time.monotonic()
    pairs = PAIRS + [("i just", "won", "lost"), ("mondays", "ugh", "yay")]
    judging, _ = ask_pairs(cfg, tiny_rubric, cache, pairs)
    assert time.monotonic() - started >= 1.0  # Retry-After honoured
    counts = judging.counts
    assert counts["in"] == len(pairs) == counts["judged"] + counts["unparsed"] + counts["failed"]
    # a pair fails with the first of its orders that failed; every order is counted too
    assert counts["failed_by_reason"] == {"http_401": 1, "garbage_or_empty_choice": 1}
    assert counts["answers_failed_by_reason"] == {"http_401": 1, "timeout": 1, "garbage_or_empty_choice": 2}
    assert counts["judged"] == len(pairs) - 2  # the 429 and the 503 were retried into verdicts
    # every answer obtained is kept: a rerun without faults asks only the four failed orders
    before = proxy.requests
    rerun, _ = ask_pairs(cfg, tiny_rubric, cache, pairs)
    assert proxy.requests - before == 4 and rerun.counts["failed"] == 0


def test_an_endpoint_failing_every_request_stops_naming_the_url_and_last_answer(served_judge, tiny_rubric):
    model, proxy = served_judge
    proxy.always = ("status", 403, {})
    try:
        with pytest.raises(EndpointDown, match=rf"{proxy.url}/chat/completions failed every request.*http_403"):
            ask_pairs(endpoint_config(model, proxy, give_up_after=3), tiny_rubric, None, PAIRS * 3)
    finally:
        proxy.always = None
    down = endpoint_config(model, proxy, base_url="http://127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(EndpointDown, match=r"127\.0\.0\.1:9/v1.*connection"):
        ask_pairs(down, tiny_rubric, None)


def test_ratings_from_the_endpoint_are_on_the_rubric_scale_or_unparsed(served_judge, tiny_rubric):
    model, proxy = served_judge
    endpoint = EndpointJudge(endpoint_config(model, proxy))
    try:
        judging, _ = judge_ratings(endpoint_asker(endpoint, tiny_rubric, "rating"), endpoint.identity(), tiny_rubric,
                                   [("so happy", "love it"), ("so sad", "hate it")])
    finally:
        endpoint.close()
    # the letter judge answers letters, never a digit: unparsed, not a guessed rating
    assert judging.counts == {"in": 2, JUDGED: 0, UNPARSED: 2, FAILED: 0, "failed_by_reason": {},
                              "answers_from_cache": 0}


def _files_feedback(tmp_path):
    """Five raters on 24 glad-vs-glum pairs: people agree, the letter judge (mostly "A") cannot."""
    from alignray.feedback.simulated import make_annotator_pool, simulate_feedback
    import pyarrow.parquet as pq
    glad, glum = ["love this", "great fun", "so happy"], ["hate this", "awful mess", "so sad"]
    prompts = [f"tweet {i}" for i in range(24)]
    responses = [[f"{glad[i % 3]}", f"{glum[i % 3]}"] for i in range(24)]
    feedback = simulate_feedback(make_annotator_pool(), prompts, responses, forms=("pairwise",))
    pq.write_table(feedback, tmp_path / "feedback.parquet")
    # as the collection server's compact writes it (workflows/collect.py)
    (tmp_path / "feedback.parquet.cost.json").write_text(json.dumps(
        {"labels": 120, "hours": 1.0, "cost": 30.0, "currency": "USD", "seconds_per_label": 30.0,
         "cost_per_label": 0.25}))
    return tmp_path / "feedback.parquet"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One verdict cache for the feedback runs below: the second pays for nothing."""
    return tmp_path_factory.mktemp("cache") / "verdicts.sqlite"


def _feedback_config(tmp_path, model, proxy, cache, *extra):
    from alignray.workflows.common import compose_app_config
    (tmp_path / "tiny.yaml").write_text(TINY_RUBRIC)
    return compose_app_config([
        f"workdir={tmp_path}", "feedback=files", f"feedback.path={_files_feedback(tmp_path)}", "feedback.ai_share=0.5",
        "feedback.ai_judge.kind=openai", f"feedback.ai_judge.openai.base_url={proxy.url}",
        f"feedback.ai_judge.openai.model={model}", "feedback.ai_judge.openai.max_tokens=2",
        "feedback.ai_judge.openai.api_key_env=", f"feedback.ai_judge.rubric={tmp_path / 'tiny.yaml'}",
        "feedback.ai_judge.openai.price_per_million_input_tokens=0.5",
        "feedback.ai_judge.calibration.gold_pairs=12", f"feedback.ai_judge.cache_path={cache}", *extra])


def test_the_feedback_phase_refuses_an_endpoint_judge_at_chance(served_judge, shared_cache, tmp_path):
    from alignray.feedback.ai_judge import JudgeNotTrusted
    from alignray.workflows.feedback import run_feedback
    model, proxy = served_judge
    with pytest.raises(JudgeNotTrusted, match=r"not better than chance.*refused"):
        run_feedback(_feedback_config(tmp_path, model, proxy, shared_cache), "unused-policy")


def test_a_mixed_run_weights_people_and_judge_by_agreement(served_judge, shared_cache, tmp_path):
    from alignray.workflows.feedback import run_feedback
    model, proxy = served_judge
    out = run_feedback(_feedback_config(tmp_path, model, proxy, shared_cache, "feedback.annotator_policy=agreement",
                                        "feedback.ai_judge.calibration.on_fail=zero_weight",
                                        "feedback.ai_judge.forms=[pairwise,rating,thumbs]"), "unused-policy")
    summary = json.loads((out / "summary.json").read_text())
    rlaif, weights = summary["rlaif"], summary["annotator_weights"]
    counts = rlaif["counts"]
    assert counts["in"] == counts["judged"] + counts["unparsed"] + counts["failed"] and counts["judged"] > 0
    assert rlaif["calibration"]["weight"] == 0.0 and weights["ai-judge"] == 0.0
    assert rlaif["position_bias"]["first_reply_chosen_share"] > 0.5  # it mostly answers "A"
    assert counts["answers_from_cache"] == 2 * counts["in"]  # all asked by the previous test's run
    people = {a: w for a, w in weights.items() if a != "ai-judge"}
    assert len(people) == 5 and all(0.0 < w <= 1.0 for w in people.values())  # max(0, 2a - 1), a > 0.5
    assert rlaif["cost"]["tokens_per_label"] > 0 and "money_per_label" in rlaif["cost"]
    report = (out / "report.md").read_text()
    assert "Pairs in = judged + unparsed + failed" in report and "weighted zero" in report
    assert "people on the collection server: 30.0 s and 0.2500 USD per label" in report
    # the files hold no ratings or thumbs: nothing for those forms to replace
    assert rlaif["forms"]["rating"] == {"items_for_ai": 0, "items_replaced": 0}


# ----------------------------------------------------------------------------- the scorer registry
def test_the_ai_judge_scores_for_the_evaluation_and_the_monitor_never_for_ppo(tiny_base_model, tmp_path):
    from types import SimpleNamespace

    import numpy as np

    from actors.monitor import make_judge
    from alignray.config.judge import JudgeConfig
    from alignray.config.ppo import MonitorConfig
    from alignray.config.scorer import ScorerConfig
    from alignray.evaluation.eval_judge import describe, resolve_judge
    from alignray.scoring import PPO_REWARD, build_scorer, resolve_scorer
    judge = ScorerConfig(kind="ai_judge", ai_judge=JudgeConfig(model_path=str(tiny_base_model),
                                                               cache_path=str(tmp_path / "v.sqlite")))
    eval_cfg = SimpleNamespace(judge=judge, pairs_path=None)
    assert resolve_judge(eval_cfg, "files", ScorerConfig(kind="reward_model", model_path="/rm")) == "ai_judge"
    assert "AI judge" in describe("ai_judge", eval_cfg)
    scorer = build_scorer(judge, "ai_judge")
    scores = scorer(["so happy", "my phone"], ["love it", "broke again"])
    assert np.isfinite(scores).all() and ((1 <= scores) & (scores <= 7)).all()
    assert scorer.counts["judged"] == 2 and build_scorer(judge, "ai_judge")(["so happy"], ["love it"]) == \
        pytest.approx(scores[:1])  # the second scorer reads the first's verdicts from the cache
    monitor = make_judge(MonitorConfig(judge=judge, prompts_path="probes.parquet"), "files")
    assert type(monitor).__name__ == "AIJudgeScorer"
    with pytest.raises(ValueError, match="cannot be a reward"):
        resolve_scorer(judge, PPO_REWARD)
    with pytest.raises(ValueError, match=r"eval\.judge\.ai_judge\.kind=openai needs eval\.judge\.ai_judge\.openai"):
        resolve_judge(SimpleNamespace(judge=ScorerConfig(kind="ai_judge", ai_judge=JudgeConfig(kind="openai")),
                                      pairs_path=None), "files")


def test_a_win_rate_leaves_out_answers_the_judge_could_not_rate():
    from alignray.evaluation.compare import win_rate
    assert win_rate([3.0, float("nan"), 1.0], [2.0, 5.0, 4.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="rated no pair"):
        win_rate([float("nan")], [1.0])


def test_a_local_judge_rates_its_share_as_rating_and_thumbs_rows_people_would_give(tiny_base_model):
    from alignray.config.judge import JudgeConfig
    from alignray.feedback.schema import validate_feedback
    from alignray.feedback.ai_judge import AIJudgeRun, judged_single_forms
    from alignray.feedback.simulated import make_annotator_pool, simulate_feedback
    from alignray.judges.build import local_rating_asker
    rubric = load_rubric("sentiment")
    feedback = simulate_feedback(make_annotator_pool(), ["so happy", "my phone", "today is", "mondays"],
                                 [["love it"], ["broke again"], ["lovely"], ["ugh"]], forms=("rating", "thumbs"))
    ask = local_rating_asker(JudgeConfig(model_path=str(tiny_base_model)), rubric)
    mixed, stats = judged_single_forms(feedback, ["rating", "thumbs"],
                                       AIJudgeRun(None, {"kind": "local"}, rubric, None, "tiny", ask), 0.5, 0)
    assert stats["rating"] == {"items_for_ai": 2, "items_replaced": 2} and stats["counts"]["judged"] >= 2
    ai = [row for row in mixed.to_pylist() if row["source"] == "ai"]
    assert {row["kind"] for row in ai} <= {"rating", "thumbs"} and len([r for r in ai if r["kind"] == "rating"]) == 2
    assert all(row["scale_min"] == 1 and row["scale_max"] == 7 for row in ai if row["kind"] == "rating")
    _, report = validate_feedback(mixed, "mixed", strict=False)
    assert report.rejected == 0
