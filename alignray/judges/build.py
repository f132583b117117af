"""A judge from its config (alignray.config.judge): the verdict cache, what identifies the
judge in every cache key, the endpoint judge, and the in-process local judge of ratings (the
scorer's) and of pairs (PPO's judge reward), both chosen by ``judge_asker``; the feedback
phase's local pairs run on the actor pool of actors/ai_labeller.py."""
from __future__ import annotations

import os
from pathlib import Path

from alignray.config.judge import JudgeConfig
from alignray.judges.cache import VerdictCache
from alignray.judges.endpoint import EndpointJudge
from alignray.judges.rubric import Rubric
from alignray.judges.verdicts import JUDGED, Answer

KINDS = ("local", "openai")
FORMS = ("pairwise", "rating", "thumbs")
CACHE_FILE = "judge-verdicts.sqlite"


def check_judge(cfg: JudgeConfig, key: str, default_model: str = "") -> None:
    """Refuse a judge config that cannot run, naming the key to set."""
    if cfg.kind not in KINDS:
        raise ValueError(f"{key}.kind must be one of {KINDS}, not {cfg.kind!r}")
    if cfg.kind == "local" and not (cfg.model_path or default_model):
        raise ValueError(f"{key}.kind=local needs {key}.model_path")
    if cfg.kind == "openai" and not (cfg.openai.base_url and cfg.openai.model):
        raise ValueError(f"{key}.kind=openai needs {key}.openai.base_url and {key}.openai.model")
    unknown = sorted(set(cfg.forms) - set(FORMS))
    if unknown or "pairwise" not in cfg.forms:
        raise ValueError(f"{key}.forms must hold pairwise and may add rating and thumbs, not {list(cfg.forms)}")
    if cfg.calibration.on_fail not in ("refuse", "zero_weight"):
        raise ValueError(f"{key}.calibration.on_fail must be refuse or zero_weight, not {cfg.calibration.on_fail!r}")


def open_cache(cfg: JudgeConfig, workdir: str | Path) -> VerdictCache:
    return VerdictCache(cfg.cache_path or Path(workdir).expanduser() / CACHE_FILE)


def local_identity(cfg: JudgeConfig, model_path: str) -> dict:
    path = os.path.realpath(model_path) if Path(model_path).exists() else model_path
    return {"kind": "local", "model": path, "max_reply_tokens": cfg.max_reply_tokens}


def describe_judge(cfg: JudgeConfig, model_path: str = "") -> str:
    if cfg.kind == "openai":
        return f"{cfg.openai.model} at {cfg.openai.base_url}"
    return cfg.model_path or model_path


def endpoint_judge(cfg: JudgeConfig) -> EndpointJudge:
    return EndpointJudge(cfg.openai)


def local_judge_model(cfg: JudgeConfig, device="cpu"):
    """A local judge's model (eval mode, no dropout) and tokenizer, in this process."""
    import torch

    from alignray.models.generation import disable_dropout
    from alignray.models.modeling import load_causal_lm, load_tokenizer

    return disable_dropout(load_causal_lm(cfg.model_path, torch.device(device))).eval(), load_tokenizer(cfg.model_path)


def in_process_pair_asker(cfg: JudgeConfig, rubric: Rubric, device="cpu"):
    """A local judge of pairs in this process (PPO's judge reward; the feedback phase labels on
    the actor pool of actors/ai_labeller.py): each order's margin log P(A) - log P(B)."""
    from alignray.feedback.rlaif import answer_margins, answer_token_ids, fitted_judge_texts
    from alignray.judges.verdicts import margin_answer
    from alignray.models.modeling import position_limit

    model, tokenizer = local_judge_model(cfg, device)
    limit, answer_ids = position_limit(model), answer_token_ids(tokenizer)

    def ask(questions, on_answer):
        texts = [fitted_judge_texts(tokenizer, p, first, second, limit, cfg.max_reply_tokens, rubric)[0]
                 for p, first, second in questions]
        answers = [margin_answer(m) for m in answer_margins(model, tokenizer, texts, answer_ids, cfg.batch_size)]
        for i, answer in enumerate(answers):
            on_answer(i, answer)
        return answers
    return ask


def local_rating_asker(cfg: JudgeConfig, rubric: Rubric, device="cpu"):
    """A local judge of ratings in this process: P(each digit) read after the answer prefix."""
    from alignray.feedback.rlaif import rate_replies

    model, tokenizer = local_judge_model(cfg, device)

    def ask(questions, on_answer):
        probs = rate_replies(model, tokenizer, [p for p, _ in questions], [r for _, r in questions],
                             cfg.batch_size, cfg.max_reply_tokens, rubric)
        answers = [Answer(JUDGED, probs=[float(x) for x in row]) for row in probs]
        for i, answer in enumerate(answers):
            on_answer(i, answer)
        return answers
    return ask


def judge_asker(cfg: JudgeConfig, rubric: Rubric, form: str, device="cpu"):
    """The judge ``cfg`` names, asked the rubric's ``form`` question (pairwise or rating) in this
    process or at its endpoint, and what identifies it in the verdict cache."""
    if cfg.kind == "openai":
        from alignray.judges.forms import endpoint_asker
        endpoint = endpoint_judge(cfg)
        return endpoint_asker(endpoint, rubric, form), endpoint.identity()
    local = in_process_pair_asker if form == "pairwise" else local_rating_asker
    return local(cfg, rubric, device), local_identity(cfg, cfg.model_path)
