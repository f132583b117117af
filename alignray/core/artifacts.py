"""The names of the files and folders one phase writes and another reads (a later phase, the
evaluation or the run report), each named once, and the mark of a finished phase folder.

| name | written by | read by |
|---|---|---|
| ``DONE_FILE``, ``SUMMARY_FILE`` | every phase, last | reuse of a finished phase; the run report |
| ``MODEL_DIR`` | pretraining, SFT, reward model, DPO (and each Ray Train checkpoint) | the next phases |
| ``POLICY_DIR`` | PPO | the evaluation |
| ``METRICS_FILE`` | every training loop (``alignray.core.metrics``) | the phase's plots; the run report |
| ``EVAL_FILE``, ``SAMPLES_FILE`` | reward model (eval only), evaluation | the run report |
| ``PROMPTS_FILE``, ``DEMONSTRATIONS_FILE`` | the embedded data | SFT, feedback, PPO, evaluation |
| the feedback files | feedback | reward model, DPO (``PAIRS_FILE``) |
| the figures | each phase | the run report |

Each phase's output folder is ``<workdir>/<prefix>-<key>``; ``PHASE_OUTPUTS`` declares, per
phase, what the key hashes (config paths, minus those that do not change the result, plus
the upstream folders it reads) and what the folder holds. ``alignray.workflows.common.phase_dir``
computes the key from it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DONE_FILE = "DONE"  # written last: a folder without it is an interrupted run
SUMMARY_FILE = "summary.json"  # a phase's headline figures and the paths it produced
MODEL_DIR = "model"  # a Hugging Face model folder
POLICY_DIR = "policy"  # PPO's final policy, a Hugging Face model folder
ADAPTER_DIR = "adapter"  # inside a model folder trained with LoRA: the peft adapter alone
METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step
EVAL_FILE = "eval.json"
SAMPLES_FILE = "samples.jsonl"  # the evaluation's responses side by side

# The embedded data, one file per split ("train", "heldout"): PROMPTS_FILE.format(split="train").
PROMPTS_FILE = "prompts_{split}.parquet"
DEMONSTRATIONS_FILE = "demonstrations_{split}.parquet"

FEEDBACK_FILE = "feedback.parquet"  # every accepted feedback row (FEEDBACK_SCHEMA)
PAIRS_FILE = "pairs.parquet"  # preference pairs for training (PAIRS_SCHEMA)
POINTWISE_FILE = "pointwise.parquet"  # pointwise targets for training (POINTWISE_SCHEMA)
HELDOUT_FEEDBACK_FILE = "heldout_feedback.parquet"  # held-out prompts, judged by both panels
HELDOUT_PAIRS_FILE = "heldout_pairs.parquet"  # the same, one row per pair with each panel's vote share

LOSS_FIGURE = "loss.png"  # pretraining, SFT, reward model, DPO
CALIBRATION_FIGURE = "calibration.png"  # reward model
AGREEMENT_FIGURE = "agreement.png"  # feedback
RATINGS_FIGURE = "ratings.png"  # feedback
ELO_FIGURE = "elo_vs_bradley_terry.png"  # feedback
CURVES_FIGURE = "curves.png"  # PPO
STAGE_TIMES_FIGURE = "stage_times.png"  # PPO
MONITOR_FILE = "monitor.json"  # PPO: the over-optimisation monitor's checks and alarms
OVEROPTIMISATION_FIGURE = "overoptimisation.png"  # PPO: proxy reward and judge against KL


REPORT_FILE = "report.md"  # feedback (and the run report, beside report.html)
RAY_TRAIN_DIR = "ray_train"  # a Ray Train run with its checkpoints (SFT, reward model)
CHECKPOINTS_DIR = "checkpoints"  # PPO's actor and coordinator checkpoints
UNFILTERED_DIR = "unfiltered"  # reward model retrained with the flagged annotators kept
PROMPTS_COPY_DIR = "data"  # the embedded prompts as PPO and the evaluation read them


@dataclass(frozen=True)
class Upstream:
    """One path a phase reads: given by hand at the config path ``key``, or else the output of
    the phase ``source`` ("base": the pretrained model), ``path`` inside its folder ("": the
    folder). ``needed_when``, a (config path, value) pair: only then is it read (None
    otherwise)."""
    name: str
    source: str
    path: str = ""
    key: str = ""
    needed_when: tuple[str, str] | None = None


@dataclass(frozen=True)
class PhaseOutput:
    """What names one phase's output folder, ``<workdir>/<prefix>-<key>``, and what it holds.

    ``settings``: config paths whose values decide the output (a group such as ``"sft"``
    stands for every key under it); ``ignored``: paths under them that do not change the
    result (run control, logging, evaluation sizes of a later phase, and config keys that
    only name an input); ``inputs``: the upstream paths the phase reads, where each comes
    from (the phase graph: ``alignray.workflows.phases`` resolves it); ``writes``: the files
    and folders it leaves there.
    """
    prefix: str
    settings: tuple[str, ...]
    ignored: tuple[str, ...] = ()
    inputs: tuple[Upstream, ...] = ()
    writes: tuple[str, ...] = ()

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(upstream.name for upstream in self.inputs)


FINISHED = (SUMMARY_FILE, DONE_FILE)
# What the `logger` group adds to any phase folder it tracks (alignray/core/tracking.py), as patterns.
TRACKING_PATTERNS = ("events.out.tfevents.*", "wandb")
# What cuts the embedded tweets into prompts and demonstrations (alignray.data.prompts.prepare_embedded_data).
DATA = PhaseOutput("data", settings=("data.prompt_words", "data.min_response_words", "data.min_confidence",
                                     "data.heldout_fraction"),
                   writes=(PROMPTS_FILE, DEMONSTRATIONS_FILE, *FINISHED))


def run_control(group: str) -> tuple[str, ...]:
    """The keys of the training loop's settings (alignray.config.training.TrainingConfig) under
    ``group`` that control a run without changing what it produces."""
    return tuple(f"{group}.{key}" for key in ("resume", "interrupt_after_steps", "log_every"))


SFT = PhaseOutput("sft", settings=("seed", "data", "sft"),
                  ignored=(*run_control("sft"), "data.prompts_path"),
                  inputs=(Upstream("base_model", "base"),),
                  writes=(MODEL_DIR, METRICS_FILE, LOSS_FIGURE, RAY_TRAIN_DIR, *FINISHED))
FEEDBACK = PhaseOutput("feedback", settings=("seed", "data", "feedback"),
                       ignored=("feedback.sft_model_path", "data.demonstrations_path"),
                       inputs=(Upstream("policy", "sft", MODEL_DIR, key="feedback.sft_model_path"),),
                       writes=(FEEDBACK_FILE, PAIRS_FILE, POINTWISE_FILE, HELDOUT_FEEDBACK_FILE, HELDOUT_PAIRS_FILE,
                               REPORT_FILE, AGREEMENT_FIGURE, RATINGS_FIGURE, ELO_FIGURE, *FINISHED))
REWARD = PhaseOutput("reward", settings=("seed", "reward_model"),
                     ignored=(*run_control("reward_model"), "reward_model.sft_model_path", "reward_model.feedback_dir"),
                     inputs=(Upstream("backbone", "sft", MODEL_DIR, key="reward_model.sft_model_path"),
                             Upstream("feedback", "feedback", key="reward_model.feedback_dir")),
                     writes=(MODEL_DIR, METRICS_FILE, LOSS_FIGURE, CALIBRATION_FIGURE, EVAL_FILE, RAY_TRAIN_DIR,
                             UNFILTERED_DIR, *FINISHED))
PPO = PhaseOutput("ppo", settings=("seed", "data", "ppo"),
                  ignored=("ppo.resume", "ppo.sft_model_path", "ppo.reward_model_path",
                           "data.demonstrations_path", "data.max_response_tokens"),
                  inputs=(Upstream("sft_model", "sft", MODEL_DIR, key="ppo.sft_model_path"),
                          Upstream("reward_model", "reward", MODEL_DIR, key="ppo.reward_model_path",
                                   needed_when=("ppo.reward.kind", "reward_model"))),
                  writes=(POLICY_DIR, CHECKPOINTS_DIR, METRICS_FILE, CURVES_FIGURE, STAGE_TIMES_FIGURE, PROMPTS_COPY_DIR,
                          MONITOR_FILE, OVEROPTIMISATION_FIGURE, *FINISHED))
# The evaluation samples with PPO's sampling settings; its sizes and its judge (the block eval.judge,
# and pairs_path, all under eval) are its own, not PPO's.
EVALUATION = PhaseOutput("eval", settings=("seed", "data", "eval", "ppo.rollout.max_new_tokens",
                                           "ppo.rollout.temperature", "ppo.rollout.top_p"),
                         ignored=("eval.policy_path", "data.demonstrations_path", "data.max_response_tokens"),
                         inputs=(Upstream("sft_model", "sft", MODEL_DIR, key="ppo.sft_model_path"),
                                 Upstream("policy", "ppo", POLICY_DIR, key="eval.policy_path"),
                                 Upstream("base_model", "base")),
                         writes=(EVAL_FILE, SAMPLES_FILE, PROMPTS_COPY_DIR, *FINISHED))
DPO = PhaseOutput("dpo", settings=("seed", "dpo", "data.max_prompt_tokens", "data.max_response_tokens"),
                  ignored=(*run_control("dpo"), "dpo.sft_model_path", "dpo.feedback_dir"),
                  inputs=(Upstream("sft_model", "sft", MODEL_DIR, key="dpo.sft_model_path"),
                          Upstream("feedback", "feedback", key="dpo.feedback_dir")),
                  writes=(MODEL_DIR, METRICS_FILE, LOSS_FIGURE, RAY_TRAIN_DIR, *FINISHED))
# A judge taught by people (workflows/judge.py): the SFT model (or any causal LM) fine-tuned on a
# human gold set drawn from the feedback folder.
JUDGE = PhaseOutput("judge", settings=("seed", "teach_judge"),
                    ignored=(*run_control("teach_judge"), "teach_judge.base_model_path", "teach_judge.feedback_dir"),
                    inputs=(Upstream("base_model", "sft", MODEL_DIR, key="teach_judge.base_model_path"),
                            Upstream("feedback", "feedback", key="teach_judge.feedback_dir")),
                    writes=(MODEL_DIR, METRICS_FILE, LOSS_FIGURE, EVAL_FILE, RAY_TRAIN_DIR, *FINISHED))
PHASE_OUTPUTS = (DATA, SFT, FEEDBACK, REWARD, PPO, DPO, JUDGE, EVALUATION)


def is_complete(out_dir: Path) -> bool:
    """A phase writes DONE last, so a folder without it is an interrupted run."""
    return (Path(out_dir) / DONE_FILE).exists()


def mark_complete(out_dir: Path, summary: dict) -> None:
    out_dir = Path(out_dir)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / DONE_FILE).write_text("ok\n")
