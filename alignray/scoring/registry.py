"""Scorers chosen by config, registered by name with what each needs, like the advantage
estimators (alignray/ppo/advantages.py). One registry serves every place a scorer is chosen:
PPO's reward (actors/reward.py), the evaluation's judge (alignray/evaluation/eval_judge.py)
and the over-optimisation monitor's judge (actors/monitor.py).

A spec says what a scorer needs to run (settings of ScorerConfig), where it may serve (as a
reward, as a judge, or both: the held-out panel must never train a policy), whether it reads
only the embedded default's tweets (the simulated annotators), and whether it reports an
ensemble's disagreement. ``resolve_scorer`` checks a choice against a use and the data at
hand, and resolves ``auto`` with the one rule (``auto_scorer``); what "no judge for this data"
leads to is the caller's: the evaluation stops, the monitor switches itself off.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from alignray.config.scorer import ScorerConfig
from alignray.judges.build import check_judge
from alignray.feedback.simulated import HELD_OUT_JUDGE_RATERS, TRAINING_RATERS
from alignray.scoring.judge_reward import judge_reward
from alignray.scoring.scorers import (AIJudgeScorer, AnnotatorPanel, EndpointScorer, RewardModelScorer, Scorer,
                                     TargetWordScorer)

REWARD, JUDGE = "reward", "judge"
AUTO = "auto"


@dataclass(frozen=True)
class ScorerSpec:
    build: Callable[[ScorerConfig, object, bool], Scorer]  # (config, device, raw) -> scorer
    describe: Callable[[ScorerConfig, str], str]  # (config, role) -> the scorer in words
    roles: tuple[str, ...] = (REWARD, JUDGE)
    needs: tuple[str, ...] = ()  # ScorerConfig settings that must be set
    tweets_only: bool = False  # reads only the embedded default's tweets
    who: str = ""  # who scores, in words, for messages
    disagreement: bool = False  # may report how much an ensemble's members disagree
    check: Callable[[ScorerConfig, str], None] | None = None  # (config, its key) -> refuses what cannot run


def _panel(raters: tuple[int, ...], which: str) -> ScorerSpec:
    return ScorerSpec(lambda cfg, device, raw: AnnotatorPanel(raters),
                      lambda cfg, role: f"the mean of the {which} annotators {raters[0]}-{raters[-1]}",
                      roles=(JUDGE,) if which == "held-out" else (REWARD,), tweets_only=True,
                      who=f"the {which} annotators")


def _describe_reward_model(cfg: ScorerConfig, role: str) -> str:
    if role == JUDGE:
        return f"gold reward model {cfg.model_path} (trained on held-out feedback)"
    return f"the reward model {cfg.model_path}"


def _judge_in_words(cfg: ScorerConfig) -> str:
    judge = cfg.ai_judge
    where = f"{judge.openai.model} at {judge.openai.base_url}" if judge.kind == "openai" else judge.model_path
    return f"the AI judge {where} (rubric {judge.rubric})"


def _describe_ai_judge(cfg: ScorerConfig, role: str) -> str:
    return f"{_judge_in_words(cfg)}, rating each answer"


def _describe_judge_reward(cfg: ScorerConfig, role: str) -> str:
    if not cfg.reference_model_path:
        return _describe_ai_judge(cfg, role)
    return f"{_judge_in_words(cfg)}, against {cfg.reference_model_path}'s answers"


SCORERS: dict[str, ScorerSpec] = {
    "reward_model": ScorerSpec(lambda cfg, device, raw: RewardModelScorer(cfg.model_path, device, raw),
                               _describe_reward_model, needs=("model_path",), disagreement=True),
    "http": ScorerSpec(lambda cfg, device, raw: EndpointScorer(cfg.url),
                       lambda cfg, role: f"reward endpoint {cfg.url}", needs=("url",), disagreement=True),
    "training_annotators": _panel(TRAINING_RATERS, "training"),
    "heldout_annotators": _panel(HELD_OUT_JUDGE_RATERS, "held-out"),
    # A language-model judge rating answers on its rubric (alignray/judges); a judge only: as
    # PPO's reward it would grade a policy by what trained it.
    "ai_judge": ScorerSpec(lambda cfg, device, raw: AIJudgeScorer(cfg.ai_judge, device), _describe_ai_judge,
                           roles=(JUDGE,), needs=("ai_judge",), who="the AI judge",
                           check=lambda cfg, key: check_judge(cfg.ai_judge, f"{key}.ai_judge")),
    # AI feedback as PPO's reward (alignray/scoring/judge_reward.py): a judge against the SFT
    # model's answers, or on its scale.
    "judge": ScorerSpec(lambda cfg, device, raw: judge_reward(cfg, device), _describe_judge_reward,
                        roles=(REWARD,), needs=("ai_judge",), who="the AI judge",
                        check=lambda cfg, key: check_judge(cfg.ai_judge, f"{key}.judge")),
    "target_word": ScorerSpec(lambda cfg, device, raw: TargetWordScorer(cfg.target_word),
                              lambda cfg, role: f"the share of the word {cfg.target_word!r}",
                              roles=(REWARD,), needs=("target_word",)),
}
AUTO_JUDGE = "heldout_annotators"  # what `auto` is, where it can judge the data
# Names used before the registry, by role (one of them meant two panels): today's name for each.
RENAMED = {"model": {REWARD: "reward_model", JUDGE: "reward_model"},
           "gold_rm": {REWARD: "reward_model", JUDGE: "reward_model"},
           "annotators": {REWARD: "training_annotators", JUDGE: "heldout_annotators"}}


@dataclass(frozen=True)
class ScorerUse:
    """Where a scorer is chosen: the role it plays, its config block (for messages), settings
    read from another key, and choices the place handles itself (the evaluation's pairs)."""
    role: str
    key: str
    setting_keys: dict[str, str] = field(default_factory=dict)
    own_choices: dict[str, str] = field(default_factory=dict)  # name -> the key it needs

    def setting_key(self, setting: str) -> str:
        return self.setting_keys.get(setting, f"{self.key}.{setting}")

    def names(self) -> tuple[str, ...]:
        """Every value ``<key>.kind`` may take here."""
        auto = (AUTO,) if self.role == JUDGE else ()
        return auto + tuple(n for n, s in SCORERS.items() if self.role in s.roles) + tuple(self.own_choices)


PPO_REWARD = ScorerUse(REWARD, "ppo.reward", {"model_path": "ppo.reward_model_path"})
EVAL_JUDGE = ScorerUse(JUDGE, "eval.judge", own_choices={"pairs": "eval.pairs_path"})
MONITOR_JUDGE = ScorerUse(JUDGE, "ppo.monitor.judge")


@dataclass(frozen=True)
class DataAtHand:
    """What the scorer would read: ``tweets`` when the answers reply to the embedded default's
    tweets (or to probe prompts the user chose for this judge)."""
    source: str  # data.source, for messages
    tweets: bool

    @classmethod
    def of(cls, source: str) -> "DataAtHand":
        return cls(source, source == "embedded")


def scorer_spec(kind: str, use: ScorerUse) -> ScorerSpec:
    """The spec of ``kind``, refused with a message naming the key when it cannot serve ``use``."""
    if kind in RENAMED:
        raise ValueError(f"{use.key}.kind={kind} is now {use.key}.kind={RENAMED[kind][use.role]}")
    if kind not in SCORERS:
        raise ValueError(f"{use.key}.kind must be one of {use.names()}, not {kind!r}")
    spec = SCORERS[kind]
    if use.role not in spec.roles:
        raise ValueError(f"{use.key}.kind={kind} cannot be a {use.role} (it serves as: {', '.join(spec.roles)}); "
                         f"{use.key}.kind must be one of {use.names()}")
    return spec


def can_run(kind: str, data: DataAtHand | None) -> bool:
    """Whether ``kind`` can score the data at hand (None: not known here, not checked)."""
    return data is None or data.tweets or not SCORERS[kind].tweets_only


def auto_scorer(use: ScorerUse, data: DataAtHand) -> str | None:
    """The one ``auto`` rule: the held-out annotators where they can judge the data, else
    None (no judge for this data)."""
    if use.role != JUDGE:
        raise ValueError(f"{use.key}.kind=auto chooses judges only; {use.key}.kind must be one of {use.names()}")
    return AUTO_JUDGE if can_run(AUTO_JUDGE, data) else None


def choose_instead(use: ScorerUse) -> str:
    """The choices that read any data, with the key each needs, for a message."""
    choices = [f"{name} (with {', '.join(use.setting_key(s) for s in spec.needs)})"
               for name, spec in SCORERS.items() if use.role in spec.roles and not spec.tweets_only]
    choices += [f"{name} (with {key})" for name, key in use.own_choices.items()]
    listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
    return f"set {use.key}.kind to {listed}"


def check_needs(cfg: ScorerConfig, kind: str, use: ScorerUse) -> None:
    for setting in SCORERS[kind].needs:
        if not getattr(cfg, setting):
            raise ValueError(f"{use.key}.kind={kind} needs {use.setting_key(setting)}")
    if SCORERS[kind].check is not None:
        SCORERS[kind].check(cfg, use.key)


def resolve_scorer(cfg: ScorerConfig, use: ScorerUse, data: DataAtHand | None = None) -> str | None:
    """The scorer ``cfg`` names for ``use``, checked (name, role, data, settings), with ``auto``
    resolved; None when ``auto`` finds no judge for this data. Choices the use handles itself
    are the caller's to check first."""
    if cfg.kind == AUTO:
        return auto_scorer(use, data)
    spec = scorer_spec(cfg.kind, use)
    if not can_run(cfg.kind, data):
        raise ValueError(f"{use.key}.kind={cfg.kind}: {spec.who} judge only the embedded default's "
                         f"tweets, not data.source={data.source}; {choose_instead(use)}")
    if spec.needs:
        check_needs(cfg, cfg.kind, use)
    return cfg.kind


def reward_scorer(reward, reward_model_path: str | None, reference: tuple[str, dict] | None = None) -> ScorerConfig:
    """PPO's reward (``ppo.reward``, typed or not) as a scorer choice; its reward model is PPO's
    input. ``reference``: the SFT model and PPO's sampling settings, for a judge against it."""
    if reward.kind == "judge" and reward.judge_against not in ("sft", "none"):
        raise ValueError(f"ppo.reward.judge_against must be sft or none, not {reward.judge_against!r}")
    against = reference if reward.kind == "judge" and reward.judge_against == "sft" else None
    return ScorerConfig(kind=reward.kind, url=reward.url, model_path=reward_model_path, target_word=reward.target_word,
                        ai_judge=reward.judge, reference_model_path=against[0] if against else None,
                        reference_sampling=dict(against[1]) if against else {})


def build_scorer(cfg: ScorerConfig, kind: str, *, device="cpu", raw: bool = False) -> Scorer:
    """The scorer ``kind`` (resolved) with the settings of ``cfg``; ``raw``: a reward model's
    output without its own normalisation, for PPO's reward."""
    return SCORERS[kind].build(cfg, device, raw)


def describe(cfg: ScorerConfig, kind: str, role: str = JUDGE) -> str:
    return SCORERS[kind].describe(cfg, role)


def reports_disagreement(kind: str) -> bool:
    return SCORERS[kind].disagreement


def _canonical(setting: str, value) -> str:
    text = str(value).rstrip("/")
    return os.path.realpath(text) if setting.endswith("path") else text


def same_scorer(a: ScorerConfig, b: ScorerConfig) -> bool:
    """Whether two choices are one scorer: the same kind with the same settings it reads."""
    if a.kind != b.kind or a.kind not in SCORERS:
        return False
    return all(_canonical(s, getattr(a, s)) == _canonical(s, getattr(b, s)) for s in SCORERS[a.kind].needs)


def refuse_reward_as_judge(judge: ScorerConfig, use: ScorerUse, reward: ScorerConfig) -> None:
    """A judge that is PPO's reward is refused: a policy cannot be graded by what it was trained on."""
    if same_scorer(judge, reward):
        settings = ", ".join(f"{use.setting_key(s)}={getattr(judge, s)}" for s in SCORERS[judge.kind].needs)
        raise ValueError(f"{use.key}.kind={judge.kind} ({settings}) is PPO's reward ({PPO_REWARD.key}.kind="
                         f"{reward.kind}): a policy cannot be graded by what it was trained on; choose a judge "
                         "PPO never saw")
