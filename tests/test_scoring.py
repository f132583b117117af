"""The scorer registry (alignray/scoring): each name's scorer on tiny inputs, what each needs,
where each may serve, the one ``auto`` rule and its consequence per use (the evaluation
stops, the monitor switches itself off), the data check, and PPO's reward refused as the
evaluation's judge."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from alignray.config.data import DataConfig
from alignray.config.evaluation import EvaluationConfig
from alignray.config.ppo import MonitorConfig, PPORewardConfig
from alignray.config.scorer import MOVED_SCORER_KEYS, ScorerConfig
from alignray.evaluation.eval_judge import resolve_judge
from alignray.feedback.simulated import HELD_OUT_JUDGE_RATERS, TRAINING_RATERS, judge_scores
from alignray.scoring import (EVAL_JUDGE, JUDGE, MONITOR_JUDGE, PPO_REWARD, REWARD, SCORERS, DataAtHand, build_scorer,
                              describe, refuse_reward_as_judge, reports_disagreement, resolve_scorer, reward_scorer,
                              same_scorer, target_word_share)
from alignray.scoring.registry import auto_scorer
from tests.conftest import score_endpoint

PROMPTS = ["I love the new", "Flying with"]
ANSWERS = ["phone, it is great", "delays again, awful the the"]
EMBEDDED, FILES = DataAtHand.of("embedded"), DataAtHand.of("files")


def choice(kind: str, **settings) -> ScorerConfig:
    return ScorerConfig(kind=kind, **settings)


# -- each name's scorer

def test_every_spec_names_real_settings_and_roles():
    settings = {f.name for f in dataclasses.fields(ScorerConfig)}
    for name, spec in SCORERS.items():
        assert set(spec.needs) <= settings, name
        assert spec.roles and set(spec.roles) <= {REWARD, JUDGE}, name
    assert [n for n in SCORERS if reports_disagreement(n)] == ["reward_model", "http"]


def test_the_panels_and_the_rule_score_as_their_functions():
    training = build_scorer(choice("training_annotators"), "training_annotators")
    heldout = build_scorer(choice("heldout_annotators"), "heldout_annotators")
    word = build_scorer(choice("target_word", target_word="the"), "target_word")
    assert training(PROMPTS, ANSWERS).tolist() == judge_scores(ANSWERS, TRAINING_RATERS).tolist()
    assert heldout(PROMPTS, ANSWERS).tolist() == judge_scores(ANSWERS, HELD_OUT_JUDGE_RATERS).tolist()
    assert word(PROMPTS, ANSWERS).tolist() == pytest.approx([0.0, 0.4])
    assert word(PROMPTS, ANSWERS).tolist() == target_word_share(ANSWERS, "the").tolist()
    scores, disagreement = training.score_with_disagreement(PROMPTS, ANSWERS)  # one scorer: no disagreement
    assert disagreement.tolist() == [0.0, 0.0] and scores.tolist() == training(PROMPTS, ANSWERS).tolist()


def test_the_http_scorer_reads_the_endpoint():
    with score_endpoint(lambda prompts, responses: [len(r) for r in responses]) as (url, received):
        scorer = build_scorer(choice("http", url=url), "http")
        assert scorer(PROMPTS, ANSWERS).tolist() == [float(len(a)) for a in ANSWERS]
        scores, disagreement = scorer.score_with_disagreement(PROMPTS, ANSWERS)
        assert scores.tolist() == [float(len(a)) for a in ANSWERS] and disagreement.tolist() == [0.0, 0.0]
    assert received == PROMPTS * 2


def test_the_reward_model_scorer_is_raw_for_ppo_and_normalised_as_a_judge(tiny_base_model, tmp_path):
    from alignray.reward.model import init_reward_model, load_reward_model, save_reward_model
    torch.manual_seed(0)
    model, tokenizer = init_reward_model(tiny_base_model)
    path = str(save_reward_model(model, tokenizer, tmp_path / "rm", mean=1.0, std=2.0))
    raw = load_reward_model(path).score(PROMPTS, ANSWERS, normalize=False)
    as_reward = build_scorer(choice("reward_model", model_path=path), "reward_model", raw=True)
    as_judge = build_scorer(choice("reward_model", model_path=path), "reward_model")
    assert as_reward(PROMPTS, ANSWERS) == pytest.approx(raw.tolist())
    assert as_judge(PROMPTS, ANSWERS) == pytest.approx(((raw - 1.0) / 2.0).tolist())
    scores, disagreement = as_reward.score_with_disagreement(PROMPTS, ANSWERS)
    assert scores == pytest.approx(raw.tolist()) and np.all(disagreement == 0.0)  # a single model


def test_descriptions_say_which_scorer_and_where():
    assert describe(choice("heldout_annotators"), "heldout_annotators") == "the mean of the held-out annotators 6-10"
    assert describe(choice("http", url="http://h:1"), "http") == "reward endpoint http://h:1"
    assert describe(choice("reward_model", model_path="/g"), "reward_model") == (
        "gold reward model /g (trained on held-out feedback)")
    assert describe(choice("reward_model", model_path="/r"), "reward_model", REWARD) == "the reward model /r"


# -- what a choice needs, and where it may serve

@pytest.mark.parametrize("cfg, use, message", [
    (reward_scorer(PPORewardConfig(), None), PPO_REWARD, "ppo.reward.kind=reward_model needs ppo.reward_model_path"),
    (reward_scorer(PPORewardConfig(kind="http"), None), PPO_REWARD, "ppo.reward.kind=http needs ppo.reward.url"),
    (reward_scorer(PPORewardConfig(kind="judge"), None), PPO_REWARD,
     "ppo.reward.judge.kind=local needs ppo.reward.judge.model_path"),
    (choice("target_word", target_word=""), PPO_REWARD, "ppo.reward.kind=target_word needs ppo.reward.target_word"),
    (choice("http"), MONITOR_JUDGE, "ppo.monitor.judge.kind=http needs ppo.monitor.judge.url"),
    (choice("reward_model"), EVAL_JUDGE, "eval.judge.kind=reward_model needs eval.judge.model_path"),
])
def test_a_choice_without_its_settings_is_refused_naming_the_key(cfg, use, message):
    with pytest.raises(ValueError, match=message):
        resolve_scorer(cfg, use, EMBEDDED)


@pytest.mark.parametrize("kind, use, message", [
    ("heldout_annotators", PPO_REWARD, "ppo.reward.kind=heldout_annotators cannot be a reward"),
    ("training_annotators", EVAL_JUDGE, "eval.judge.kind=training_annotators cannot be a judge"),
    ("target_word", MONITOR_JUDGE, "ppo.monitor.judge.kind=target_word cannot be a judge"),
    ("auto", PPO_REWARD, "ppo.reward.kind=auto chooses judges only"),
    ("vibes", PPO_REWARD, r"ppo.reward.kind must be one of \('reward_model', 'http', 'training_annotators', "
                          r"'judge', 'target_word'\), not 'vibes'"),
    ("judge", EVAL_JUDGE, "eval.judge.kind=judge cannot be a judge"),
    ("vibes", EVAL_JUDGE, r"eval.judge.kind must be one of \('auto', 'reward_model', 'http', "
                          r"'heldout_annotators', 'ai_judge', 'pairs'\)"),
])
def test_a_scorer_serves_only_where_it_may(kind, use, message):
    with pytest.raises(ValueError, match=message):
        resolve_scorer(choice(kind, url="http://h:1", model_path="/m"), use, EMBEDDED)


@pytest.mark.parametrize("old, use, new", [
    ("model", PPO_REWARD, "ppo.reward.kind=reward_model"),
    ("annotators", PPO_REWARD, "ppo.reward.kind=training_annotators"),
    ("annotators", EVAL_JUDGE, "eval.judge.kind=heldout_annotators"),
    ("annotators", MONITOR_JUDGE, "ppo.monitor.judge.kind=heldout_annotators"),
    ("gold_rm", EVAL_JUDGE, "eval.judge.kind=reward_model"),
])
def test_the_names_used_before_the_registry_are_refused_naming_todays(old, use, new):
    with pytest.raises(ValueError, match=f"{use.key}.kind={old} is now {new}"):
        resolve_scorer(choice(old), use, EMBEDDED)


def test_the_moved_judge_keys_name_their_new_home():
    assert MOVED_SCORER_KEYS["ppo.eval.judge_url"] == "eval.judge.url"
    assert MOVED_SCORER_KEYS["ppo.monitor.gold_reward_model_path"] == "ppo.monitor.judge.model_path"
    fields = {f.name for f in dataclasses.fields(ScorerConfig)}
    assert all(new.rsplit(".", 1)[1] in fields for new in MOVED_SCORER_KEYS.values())


# -- the data at hand, and the one auto rule

def test_the_panels_read_only_the_embedded_defaults_tweets():
    assert resolve_scorer(choice("heldout_annotators"), EVAL_JUDGE, EMBEDDED) == "heldout_annotators"
    with pytest.raises(ValueError, match="eval.judge.kind=heldout_annotators: the held-out annotators judge only "
                                         "the embedded default's tweets, not data.source=files; set eval.judge.kind "
                                         r"to reward_model \(with eval.judge.model_path\), http \(with "
                                         r"eval.judge.url\), ai_judge \(with eval.judge.ai_judge\) or pairs \(with "
                                         r"eval.pairs_path\)"):
        resolve_scorer(choice("heldout_annotators"), EVAL_JUDGE, FILES)
    # any data for the scorers that read any text; the reward's data is not known where it is built
    assert resolve_scorer(choice("http", url="http://h:1"), MONITOR_JUDGE, FILES) == "http"
    assert resolve_scorer(choice("training_annotators"), PPO_REWARD) == "training_annotators"


def test_auto_is_the_heldout_panel_where_it_can_judge_and_else_no_judge():
    assert auto_scorer(EVAL_JUDGE, EMBEDDED) == auto_scorer(MONITOR_JUDGE, EMBEDDED) == "heldout_annotators"
    assert auto_scorer(EVAL_JUDGE, FILES) is None and resolve_scorer(choice("auto"), MONITOR_JUDGE, FILES) is None
    assert auto_scorer(MONITOR_JUDGE, DataAtHand("files", tweets=True)) == "heldout_annotators"


def test_no_judge_for_this_data_stops_the_evaluation_and_switches_the_monitor_off(tmp_path, caplog):
    from alignray.actors.monitor import make_judge, monitor_judge_kind, monitor_probe_prompts
    with pytest.raises(ValueError, match="eval.judge.kind=auto is the held-out annotators"):
        resolve_judge(EvaluationConfig(), "files")
    eval_prompts = EvaluationConfig().num_prompts
    with caplog.at_level(logging.WARNING):
        assert monitor_probe_prompts(MonitorConfig(), eval_prompts, DataConfig(source="files"), tmp_path) is None
    assert "ppo.monitor is off" in caplog.text and "ppo.monitor.judge.kind=heldout_annotators" in caplog.text
    # probe prompts the user names are taken as fit for the panel, as before
    chosen = MonitorConfig(prompts_path="/probe.parquet")
    assert monitor_judge_kind(chosen, "files") == "heldout_annotators"
    assert make_judge(chosen, "files")(PROMPTS, ANSWERS).tolist() == judge_scores(ANSWERS).tolist()
    with pytest.raises(ValueError, match="ppo.monitor.judge.kind=http on your own data needs ppo.monitor.prompts_path"):
        monitor_probe_prompts(MonitorConfig(judge=choice("http", url="http://h:1")), eval_prompts,
                              DataConfig(source="files"), tmp_path)


# -- PPO's reward is no judge

def test_a_judge_that_is_ppos_reward_is_refused():
    reward = reward_scorer(PPORewardConfig(kind="http", url="http://h:1/"), None)
    assert same_scorer(choice("http", url="http://h:1"), reward)
    with pytest.raises(ValueError, match=r"eval.judge.kind=http \(eval.judge.url=http://h:1\) is PPO's reward "
                                         r"\(ppo.reward.kind=http\): a policy cannot be graded by what it was trained on"):
        refuse_reward_as_judge(choice("http", url="http://h:1"), EVAL_JUDGE, reward)
    refuse_reward_as_judge(choice("http", url="http://other:1"), EVAL_JUDGE, reward)  # another endpoint: fine
    rm = reward_scorer(PPORewardConfig(), "/runs/rm/model")
    judged_by_rm = EvaluationConfig(judge=choice("reward_model", model_path="/runs/rm/../rm/model"))
    with pytest.raises(ValueError, match="is PPO's reward"):
        resolve_judge(judged_by_rm, "embedded", rm)
    assert resolve_judge(judged_by_rm, "embedded", reward_scorer(PPORewardConfig(), "/runs/gold")) == "reward_model"
    assert resolve_judge(EvaluationConfig(), "embedded", rm) == "heldout_annotators"


def test_a_judge_reward_is_against_the_sft_answers_or_on_the_scale():
    reference = ("/runs/sft/model", {"max_new_tokens": 24, "temperature": 1.0, "top_p": 1.0, "max_prompt_tokens": 16})
    against_sft = reward_scorer(PPORewardConfig(kind="judge"), None, reference)
    assert against_sft.reference_model_path == "/runs/sft/model" and against_sft.reference_sampling["max_new_tokens"] == 24
    rating = reward_scorer(PPORewardConfig(kind="judge", judge_against="none"), None, reference)
    assert rating.reference_model_path is None and rating.reference_sampling == {}
    assert reward_scorer(PPORewardConfig(), "/rm", reference).reference_model_path is None  # only a judge reads it
    with pytest.raises(ValueError, match="ppo.reward.judge_against must be sft or none, not 'policy'"):
        reward_scorer(PPORewardConfig(kind="judge", judge_against="policy"), None, reference)
