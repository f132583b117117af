"""Phase 4: PPO against the reward model."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from alignray.config.judge import JudgeConfig
from alignray.config.lora import LoRAConfig
from alignray.config.scorer import ScorerConfig
from alignray.config.training import DeepSpeedConfig


@dataclass
class KLConfig:
    # "adaptive" steers coef towards `target` nats per response (the Ziegler et al. controller),
    # so reward models of any scale are held to one KL budget; "fixed" keeps coef.
    controller: str = "adaptive"
    coef: float = 0.2  # the starting coefficient under "adaptive"
    target: float = 6.0  # 4.5 until 2026-12-07: README, "PPO's default profile"
    horizon: int = 640
    estimator: str = "k1"  # k1 | k2 | k3 (alignray/ppo/kl.py), wherever the KL is placed
    # "reward": -coef x KL on every token's reward, before the advantages (PPO, REINFORCE++);
    # "loss": coef x KL(policy || reference) added to the policy's loss, aggregated like it (GRPO).
    placement: str = "reward"


@dataclass
class RewardFunctionConfig:
    """A user's reward term, added to the scorer's: ``weight x function(prompts, responses)``."""
    function: str = ""  # "package.module:function", returning one float per response (TRL's convention)
    weight: float = 1.0
    name: Optional[str] = None  # logged as reward_parts/<name>; None: the function's own name


@dataclass
class PPORewardConfig:
    """What scores a response during PPO (the RewardActor)."""
    # The scorer (alignray/scoring, ScorerConfig's settings): "reward_model" (the trained reward
    # model, ppo.reward_model_path); "http": the reward endpoint at `url`; "training_annotators":
    # the oracle reward, the mean score of the simulated training annotators 1-5 (for
    # ablations, and before a reward model exists); "target_word": the share of words equal to
    # `target_word`, a rule with a known optimum (tests); "judge": AI feedback as the reward, the
    # AI judge of `judge` (a taught judge: workflows/judge.py) comparing each response with the
    # SFT model's answer to its prompt (`judge_against=sft`) or rating it (`none`).
    kind: str = "reward_model"
    url: Optional[str] = None
    target_word: str = "good"
    normalize: bool = True  # running mean/std normalisation, so the KL coef means the same for any RM
    clip: float = 5.0  # normalised scores are clipped to [-clip, clip]
    truncation_penalty: float = 0.0  # subtracted when a response hits max_new_tokens without an end token
    # The constraint rule set (alignray/ppo/constraints.py): a file of conf/constraints/ by
    # name ("tweets", "chat"), a path to a YAML rule set, or "none"; anything else is an error.
    constraints: str = "tweets"
    # The raw reward is weight x the scorer's score + the sum of the functions' weighted scores,
    # on the driver (e.g. rule checks, a length term beside the reward model); each part's mean
    # contribution is logged as reward_parts/<name> when there are functions. Normalised after.
    weight: float = 1.0
    functions: list[RewardFunctionConfig] = field(default_factory=list)
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # kind=judge: the judge (model_path, rubric, ...)
    judge_against: str = "sft"  # sft: log-odds of beating the SFT model's answer; none: the rating


@dataclass
class MonitorConfig:
    """The over-optimisation monitor (alignray/ppo/monitor.py, actors/monitor.py): every `every`
    policy updates (and before the first, and after the last) the policy answers a fixed probe
    set of held-out prompts, disjoint from the evaluation's, and a held-out judge compares the
    answers with the SFT model's."""
    every: int = 10  # updates between checks; 0: no monitor
    # A judge of the registry (alignray/scoring), as the evaluation's: "auto" is the held-out
    # annotators on the embedded default, and no monitor on other data (a warning says so);
    # "heldout_annotators" (6-10) on the embedded default or on `prompts_path`; "http" (a reward
    # endpoint at `judge.url`); "reward_model" (a folder at `judge.model_path` trained on
    # feedback PPO never saw).
    judge: ScorerConfig = field(default_factory=ScorerConfig)
    probe_prompts: int = 64
    # None: the last `probe_prompts` of the embedded held-out prompts (the evaluation takes the first)
    prompts_path: Optional[str] = None
    window: int = 3  # checks over which "proxy rises while the judge falls" is judged
    kl_budget: float = 8.0  # nats per response (the evaluation's guard uses the same default)
    min_length_ratio: float = 0.5  # answers' mean words against the SFT model's
    max_length_ratio: float = 2.0
    max_degenerate_share: float = 0.25
    on_alarm: str = "log"  # log | stop | rollback (restore the judge's best checkpoint, then stop)
    keep_checkpoints: int = 2  # the best checks by the judge keep a full checkpoint


@dataclass
class RolloutConfig:
    """The rollout workers (actors/rollout.py): how responses are sampled, and the pool."""
    max_new_tokens: int = 24
    temperature: float = 1.0
    top_p: float = 1.0
    # The generation path (alignray.models.static_decoder.make_decoder): "auto" (the project's
    # static KV cache for GPT-2 and the Llama-built families, CUDA graphs on a GPU; transformers'
    # static cache for the others), "static", "static_eager" (no graphs), "hf_static_cache", or
    # "hf" (the reference path). Each worker logs the path it takes.
    generation_engine: str = "auto"
    stop_at_eos: bool = True  # False: every response is max_new_tokens long (benchmarks)
    workers: int = 2
    gpus: float = 0.0  # GPUs per worker in the separate layout
    max_restarts: int = 3  # Ray restarts a dead worker; its prompts are generated again


@dataclass
class PolicyConfig:
    """The policy's update (actors/policy.py)."""
    lr: float = 2e-5
    # alignray/ppo/losses.py: "clipped_surrogate" (PPO's, per token) or "gspo" (the ratio of whole
    # responses, clipped per response; GSPO clips at ~3e-4, so set clip_eps with it).
    loss: str = "clipped_surrogate"
    # How a minibatch's token losses become one: "token_mean", "seq_mean" (each response's token
    # mean, then the mean over responses), "constant" (sum / (responses x max_new_tokens): Dr. GRPO).
    loss_aggregation: str = "token_mean"
    clip_eps: float = 0.2
    entropy_coef: float = 0.0
    # Data-parallel ranks; the group is one DeepSpeed world.
    actors: int = 1
    # With LoRA the reference is this policy with its adapter disabled (no reference actor),
    # and a weight sync sends the adapter alone.
    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass
class CriticConfig:
    """The critic (actors/critic.py); only the "gae" estimator places one."""
    lr: float = 1e-4
    value_clip_eps: float = 0.2
    # "sft": the critic starts from the SFT model's backbone; "reward_model": from the RM's.
    init: str = "sft"
    actors: int = 1  # data-parallel ranks, one DeepSpeed world
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # the value head trains whole either way


@dataclass
class SyncConfig:
    """How new policy weights reach the rollout pool (actors/weight_sync.py), and their check."""
    # "object_store" (ray.put once, every worker reads it), "broadcast" (a torch.distributed
    # group: gloo on CPU, NCCL between GPUs), "cuda_ipc" (workers on the policy's GPU copy from
    # its memory), or "auto": per worker, cuda_ipc on the policy's GPU, broadcast between GPUs,
    # the object store where either end is on a CPU.
    method: str = "auto"
    probe_prompts: int = 4  # after each sync the pool must reproduce the policy's log-probs on these
    tolerance: float = 1e-3  # max |log-prob difference| allowed on the probe


@dataclass
class RolloutCorrectionConfig:
    """Truncated importance sampling between the rollout workers' and the trainer's log-probs
    (alignray/ppo/rollout_correction.py). With a mode on, PPO's ratio is taken against the
    trainer's log-probs and each token's loss is weighted by the truncated ratio."""
    mode: str = "none"  # none | token_tis | token_mask | sequence_tis | sequence_mask
    cap: float = 2.0  # C: TIS weights are min(ratio, C); the mask modes keep ratios in [1/C, C]


@dataclass
class PPOConfig:
    # The standalone app's inputs (the pipeline passes its own): None means the base model
    # from `model` as the SFT policy, and no reward model (ppo.reward.kind must not be "reward_model").
    sft_model_path: Optional[str] = None
    reward_model_path: Optional[str] = None
    # 80 steps of 64 prompts: on the embedded default (oracle reward, CPU) 40 steps left
    # the held-out judge undecided (win-rate 0.56 [0.53, 0.59]); 80 reached 0.74 [0.71, 0.77]
    # at 2.6 nats of KL with no collapse.
    steps: int = 80
    prompts_per_step: int = 64
    # Responses sampled per prompt: a step trains on prompts_per_step x samples_per_prompt.
    # A prompt's responses form a group, sampled on one rollout worker and compared by the
    # group estimators (grpo, rloo, ...).
    samples_per_prompt: int = 1
    max_prompts: int = 0  # 0: every training prompt
    # The default profile was chosen by benchmarks/ppo_default_seeds.py on the embedded default
    # (README, "PPO's default profile"): 2 epochs at twice the learning rates, the next batch
    # generated while this one trains, the KL steered to 6 nats (4.5 until its worst seed's
    # lower bound missed 0.80). It replaced 4 epochs at lr 1e-5 / 5e-5, a fixed KL coefficient
    # 0.2 and generation in turn.
    # 1: the next batch is generated while this one trains (one update of policy lag; the
    # ratio uses the rollout log-probs; a resumed run samples its first batch again, so it is
    # not bit-identical to an uninterrupted one). 0: generation and training take turns.
    policy_lag: int = 1
    # The update of every trained role (policy, critic): epochs x minibatches of the step's batch.
    epochs: int = 2
    minibatches: int = 4
    # Gradient accumulation: a minibatch is cut into micro-batches of at most this many padded
    # tokens (rows sorted by length, each trimmed of padding); 0: the whole minibatch at once.
    micro_batch_tokens: int = 0
    target_kl: Optional[float] = None  # stop a step's remaining policy epochs above 1.5 x this approx KL
    gamma: float = 1.0
    lam: float = 0.95
    # alignray/ppo/advantages.py: "gae" (reads the critic), or a critic-free one, "grpo", "dr_grpo",
    # "rloo", "reinforce_pp_baseline" (these compare a prompt's responses: samples_per_prompt >= 2),
    # "reinforce_pp". Without a critic none is placed, loaded or trained (ppo.critic is unused).
    advantage_estimator: str = "gae"
    # Whiten the estimator's advantages over the batch's valid tokens; None: the estimator's
    # default (alignray/ppo/advantages.py: only gae's; the critic-free ones scale their own).
    whiten_advantages: Optional[bool] = None
    checkpoint_every: int = 10  # steps; 0 only at the end
    resume: bool = True
    max_nonfinite_in_a_row: int = 3
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    reward: PPORewardConfig = field(default_factory=PPORewardConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=lambda: DeepSpeedConfig(zero_stage=0))

    def update_settings(self) -> UpdateSettings:
        """What the trained roles read of the PPO-wide settings."""
        return UpdateSettings(rows_per_step=self.prompts_per_step * self.samples_per_prompt, epochs=self.epochs,
                              minibatches=self.minibatches, micro_batch_tokens=self.micro_batch_tokens,
                              deepspeed=self.deepspeed)

    def judge_reference_sampling(self, max_prompt_tokens: int, seed: int) -> dict:
        """How ppo.reward.kind=judge samples the SFT model's answers: as the rollout samples."""
        rollout = self.rollout
        return {"max_new_tokens": rollout.max_new_tokens, "temperature": rollout.temperature, "top_p": rollout.top_p,
                "max_prompt_tokens": max_prompt_tokens, "seed": seed}

    def policy_objective(self) -> PolicyObjective:
        """What the policy's loss reads besides ppo.policy."""
        return PolicyObjective(temperature=self.rollout.temperature, max_new_tokens=self.rollout.max_new_tokens,
                               kl_loss_estimator=self.kl.estimator if self.kl.placement == "loss" else None,
                               target_kl=self.target_kl)


@dataclass(frozen=True)
class UpdateSettings:
    """The PPO-wide settings a trained role (policy, critic) needs, handed to it explicitly."""
    rows_per_step: int  # prompts_per_step x samples_per_prompt, over every rank
    epochs: int
    minibatches: int
    micro_batch_tokens: int
    deepspeed: DeepSpeedConfig


@dataclass(frozen=True)
class PolicyObjective:
    """The PPO-wide settings the policy's loss reads besides its own block."""
    temperature: float  # the pool's: log-probs of the tokens as they were sampled
    max_new_tokens: int  # the "constant" aggregation's normaliser
    kl_loss_estimator: Optional[str]  # ppo.kl.estimator where the KL is a loss term; None: it is in the reward
    target_kl: Optional[float]
