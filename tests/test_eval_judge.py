"""The evaluation's judge (alignray/evaluation/eval_judge.py, eval.judge; its scorers from
alignray/scoring, the pairs measure from alignray/evaluation/implicit_reward.py): each kind on the tiny model,
through the real evaluation (alignray.workflows.evaluate), and the errors of a wrong choice."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from alignray.config.evaluation import EvaluationConfig
from alignray.config.scorer import ScorerConfig
from alignray.config import AlignrayConfig, typed_config
from alignray.evaluation.compare import IMPLICIT_REWARD_ACCURACY
from alignray.feedback.schema import pairwise_feedback, ranking_feedback, write_feedback
from alignray.evaluation.eval_judge import resolve_judge
from alignray.evaluation.implicit_reward import PreferencePairs, implicit_reward_accuracy, read_preference_pairs
from alignray.models.modeling import load_causal_lm, load_tokenizer
from alignray.workflows.evaluate import evaluate_policies
from alignray.workflows.report import evaluation_section, headline
from alignray.scoring import build_scorer
from tests.conftest import OPENINGS, score_endpoint

NUM_PROMPTS = 12


def eval_config(tmp_path, source: str = "files", pairs_path: str | None = None, **judge):
    cfg = OmegaConf.structured(AlignrayConfig)
    cfg.workdir, cfg.data.source = str(tmp_path), source
    cfg.ppo.rollout.max_new_tokens = 8
    cfg.eval.num_prompts, cfg.eval.samples_to_write = NUM_PROMPTS, 3
    cfg.eval.pairs_path = pairs_path
    for name, value in judge.items():
        cfg.eval.judge[name] = value
    return typed_config(cfg)


def eval_settings(pairs_path: str | None = None, **judge) -> EvaluationConfig:
    return EvaluationConfig(judge=ScorerConfig(**judge), pairs_path=pairs_path)


def self_evaluation(cfg, model, prompts_path, out) -> dict:
    """The tiny model judged against itself: every judge's known answer is a tie."""
    return evaluate_policies(cfg, str(model), str(model), str(prompts_path), out)


# -- which judge, and the errors of a wrong choice

@pytest.mark.parametrize("source, settings, message", [
    ("files", {}, "eval.judge.kind=auto is the held-out annotators, who judge only the embedded default"),
    ("files", {"kind": "heldout_annotators"},
     "eval.judge.kind=heldout_annotators: the held-out annotators judge only the embedded"),
    ("embedded", {"kind": "http"}, "eval.judge.kind=http needs eval.judge.url"),
    ("embedded", {"kind": "reward_model"}, "eval.judge.kind=reward_model needs eval.judge.model_path"),
    ("files", {"kind": "pairs"}, "eval.judge.kind=pairs needs eval.pairs_path"),
    ("embedded", {"kind": "panel"}, "eval.judge.kind must be one of"),
])
def test_a_judge_that_cannot_judge_this_run_is_an_error_naming_the_key(source, settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        resolve_judge(eval_settings(**settings), source)


def test_auto_is_the_annotators_on_the_embedded_default_and_a_set_judge_is_kept():
    assert resolve_judge(eval_settings(), "embedded") == "heldout_annotators"
    assert resolve_judge(eval_settings(kind="pairs", pairs_path="/p.parquet"), "files") == "pairs"


def test_the_evaluation_refuses_the_annotators_on_your_data_before_loading_a_model(tmp_path, prompts_path):
    cfg = eval_config(tmp_path, "files", kind="heldout_annotators")
    with pytest.raises(ValueError, match="eval.judge.kind=heldout_annotators"):
        evaluate_policies(cfg, str(tmp_path / "no-model"), str(tmp_path / "no-model"), str(prompts_path),
                          tmp_path / "eval")


# -- http: any reward endpoint

@pytest.fixture
def word_count_endpoint():
    """/v1/score: a response's word count; keeps the prompts it was sent."""
    with score_endpoint(lambda prompts, responses: [len(r.split()) for r in responses]) as (url, received):
        yield url, received


def test_the_http_judge_scores_both_policies_answers_at_the_endpoint(tmp_path, tiny_base_model, prompts_path,
                                                                    word_count_endpoint):
    judge_url, received = word_count_endpoint
    cfg = eval_config(tmp_path, kind="http", url=judge_url)
    result = self_evaluation(cfg, tiny_base_model, prompts_path, tmp_path / "eval")
    assert result["judge"] == "http" and result["judge_description"] == f"reward endpoint {judge_url}"
    assert result["measure"] == "win_rate"
    assert (result["win_rate"], result["ci_low"], result["ci_high"]) == (0.5, 0.5, 0.5)
    # each policy's answers to the held-out prompts, raw, in order
    assert received == (OPENINGS * 3)[:NUM_PROMPTS] * 2
    sample = json.loads((tmp_path / "eval" / "samples.jsonl").read_text().splitlines()[0])
    assert sample["judge_ppo"] == sample["judge_sft"] == len(sample["ppo"].split())
    assert "win_rate_training_annotators" not in result  # the panel is not this run's judge
    assert f"PPO vs SFT win-rate, judged by reward endpoint {judge_url} (95% CI)" in headline(result, {}, {}).table[1]
    assert (f"judged by reward endpoint {judge_url} (95% CI): 0.50 [0.50, 0.50], on {NUM_PROMPTS} held-out prompts."
            in evaluation_section(result).paragraphs[0])


def test_the_http_judge_also_speaks_openrlhfs_get_reward(word_count_endpoint):
    url, received = word_count_endpoint
    score = build_scorer(SimpleNamespace(url=url + "/get_reward"), "http")
    # the query is the prompt and the response joined by a space, read as it is
    assert score(["the cat", "a"], ["sat down", "b"]).tolist() == [4.0, 2.0]
    assert received == ["the cat", "a"]


# -- reward_model: a gold reward model trained on held-out feedback

@pytest.fixture(scope="module")
def gold_reward_model(tiny_base_model, tmp_path_factory):
    from alignray.reward.model import init_reward_model, save_reward_model
    torch.manual_seed(0)
    model, tokenizer = init_reward_model(tiny_base_model)
    return save_reward_model(model, tokenizer, tmp_path_factory.mktemp("gold") / "rm", mean=0.5, std=2.0)


def test_the_gold_reward_model_judge_scores_with_the_models_normalisation(tmp_path, tiny_base_model, prompts_path,
                                                                          gold_reward_model):
    cfg = eval_config(tmp_path, kind="reward_model", model_path=str(gold_reward_model))
    from alignray.reward.model import load_reward_model
    prompts, answers = ["I love the new", "My phone just"], ["phone is great", "died again today"]
    raw = load_reward_model(gold_reward_model, device="cpu").score(prompts, answers, normalize=False)
    assert build_scorer(cfg.eval.judge, "reward_model")(prompts, answers) == pytest.approx(
        ((raw - 0.5) / 2.0).tolist())
    result = self_evaluation(cfg, tiny_base_model, prompts_path, tmp_path / "eval")
    assert result["judge"] == "reward_model" and str(gold_reward_model) in result["judge_description"]
    assert (result["win_rate"], result["ci_low"], result["ci_high"]) == (0.5, 0.5, 0.5)
    assert result["verdict"].startswith("PASS: win-rate 0.50 [0.50, 0.50]")


# -- pairs: implicit-reward accuracy on held-out preference pairs

@pytest.fixture(scope="module")
def feedback_path(tmp_path_factory):
    """Pairwise rows (one a tie) and a ranking of three, as a user's held-out feedback."""
    rows = [pairwise_feedback(p, f"{p} is great fun", f"{p} is awful", "a", "u1") for p in OPENINGS[:6]]
    rows += [pairwise_feedback(p, f"{p} is great fun", f"{p} is awful", "b", "u2") for p in OPENINGS[6:]]
    rows.append(pairwise_feedback(OPENINGS[0], "same same", "other words", "tie", "u3"))
    rows.append(ranking_feedback(OPENINGS[1], ["best one here", "middle one", "worst one"], [0, 1, 2], "u4"))
    path = tmp_path_factory.mktemp("pairs") / "feedback_heldout.parquet"
    write_feedback(rows, path)
    return path


def test_a_feedback_file_gives_its_pairs_without_the_ties(feedback_path):
    pairs = read_preference_pairs(str(feedback_path))
    assert len(pairs.prompts) == len(OPENINGS) + 3  # the tie gives none, the ranking of three gives three
    assert [chosen.endswith("great fun") for chosen in pairs.chosen[:len(OPENINGS)]] == [True] * 6 + [False] * 6
    assert ("best one here", "worst one") in zip(pairs.chosen, pairs.rejected)


def test_a_pairs_table_reads_as_is_and_one_without_its_columns_is_an_error_naming_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "chosen": ["yes"], "rejected": ["no"], "weight": [1.0]}), path)
    pairs = read_preference_pairs(str(path))
    assert (pairs.prompts, pairs.chosen, pairs.rejected, pairs.conversations) == (["p"], ["yes"], ["no"], [None])
    pq.write_table(pa.table({"prompt": ["p", "q", "r"], "chosen": ["a", "b", "c"], "rejected": ["x", "y", "z"]}), path)
    assert read_preference_pairs(str(path), limit=2).chosen == ["a", "b"]  # eval.max_pairs: the first ones
    assert read_preference_pairs(str(path), limit=0).chosen == ["a", "b", "c"]
    pq.write_table(pa.table({"chosen": ["yes"], "rejected": ["no"]}), path)
    with pytest.raises(ValueError, match=f"{path}: a pairs table needs .*'prompt'"):
        read_preference_pairs(str(path))


def summed_logprob(model, tokenizer, prompt: str, response: str) -> float:
    """log pi(response + end token | prompt) from one forward pass over the whole text."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = prompt_ids + tokenizer(" " + response)["input_ids"] + [tokenizer.eos_token_id]
    logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    return sum(logprobs[t - 1, ids[t]].item() for t in range(len(prompt_ids), len(ids)))


@torch.no_grad()
def test_implicit_reward_accuracy_is_dpos_definition_on_a_policy_that_moved(tiny_base_model, feedback_path):
    reference = load_causal_lm(str(tiny_base_model), torch.device("cpu")).eval()
    policy = load_causal_lm(str(tiny_base_model), torch.device("cpu")).eval()
    generator = torch.Generator().manual_seed(0)
    for parameter in policy.parameters():  # a policy that moved away from its reference
        parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    tokenizer = load_tokenizer(str(tiny_base_model))
    pairs = read_preference_pairs(str(feedback_path))

    def implicit(response, prompt):
        return (summed_logprob(policy, tokenizer, prompt, response)
                - summed_logprob(reference, tokenizer, prompt, response))
    outcomes = [1.0 if implicit(c, p) > implicit(r, p) else 0.0
                for p, c, r in zip(pairs.prompts, pairs.chosen, pairs.rejected)]
    accuracy, low, high = implicit_reward_accuracy(policy, reference, tokenizer, pairs, 24, 36)
    assert accuracy == pytest.approx(sum(outcomes) / len(outcomes))
    assert 0.0 < accuracy < 1.0 and low < accuracy < high  # these pairs split, so the interval has width
    swapped = PreferencePairs(pairs.prompts, pairs.conversations, pairs.rejected, pairs.chosen)
    assert implicit_reward_accuracy(policy, reference, tokenizer, swapped, 24, 36)[0] == pytest.approx(1 - accuracy)


def test_the_pairs_judge_of_a_policy_against_itself_is_all_ties(tmp_path, tiny_base_model, prompts_path,
                                                                  feedback_path):
    cfg = eval_config(tmp_path, kind="pairs", pairs_path=str(feedback_path))
    result = self_evaluation(cfg, tiny_base_model, prompts_path, tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["judge"] == "pairs" and saved["measure"] == IMPLICIT_REWARD_ACCURACY
    # every pair's two implicit rewards are 0: ties, one half each
    assert (saved[IMPLICIT_REWARD_ACCURACY], saved["ci_low"], saved["ci_high"]) == (0.5, 0.5, 0.5)
    assert saved["num_pairs"] == len(OPENINGS) + 3 and "win_rate" not in saved
    assert saved["verdict"].startswith("PASS: implicit-reward accuracy 0.50 [0.50, 0.50]")
    assert abs(saved["mean_kl"]) < 1e-4 and saved["length_ratio"] == 1.0  # the guards still ran
    assert "judge_ppo" not in json.loads((tmp_path / "eval" / "samples.jsonl").read_text().splitlines()[0])
    section = " ".join(evaluation_section(result).paragraphs)
    assert f"implicit-reward accuracy on the held-out preference pairs in {feedback_path} (95% CI): 0.50" in section
    assert "an accuracy, not a win-rate" in section
    assert "an accuracy, not a win-rate" in headline(result, {}, {}).paragraphs[0]


def test_the_reward_the_policys_ppo_run_recorded_is_refused_as_its_judge(tmp_path, prompts_path):
    ppo_dir = tmp_path / "ppo-abc"
    (ppo_dir / "policy").mkdir(parents=True)
    (ppo_dir / "summary.json").write_text(json.dumps({"reward_model": str(tmp_path / "reward-x" / "model")}))
    cfg = eval_config(tmp_path, kind="reward_model", model_path=str(tmp_path / "reward-x" / "model"))
    with pytest.raises(ValueError, match="is PPO's reward"):  # before any model loads
        evaluate_policies(cfg, str(tmp_path / "no-model"), str(ppo_dir / "policy"), str(prompts_path), tmp_path / "e")
