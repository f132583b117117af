"""The PPO algorithm as pure tensor functions: no models, no Ray.

masked       statistics over valid tokens of padded [batch, T] tensors
kl           per-token KL estimators and the KL coefficient controllers
rewards      a user's reward functions summed with the scorer; sequence scores to per-token
             rewards; normalisation, clipping, truncation
constraints  rule-based penalties on response texts
advantages   GAE and critic-free estimators, registered by name
losses       policy losses (clipped surrogate, GSPO) and their aggregation, KL as a loss term,
             the value loss, entropy, explained variance
minibatch    shuffled minibatch epochs with early stop on KL; token-budget micro-batches
checks       settings that cannot work together, refused before any actor starts
flops        the arithmetic of a step, counted per stage (benchmarks/ppo_cpu.py)
"""
from alignray.ppo.advantages import (
    ADVANTAGE_ESTIMATORS,
    Estimator,
    discounted_returns,
    estimator_spec,
    gae_advantages,
    get_advantage_estimator,
    grpo_advantages,
    needs_critic,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    whitens,
)
from alignray.ppo.constraints import (
    TWEET_CONSTRAINTS_EXAMPLE,
    ConstraintPenalty,
    DegenerateTextRule,
    RegexRule,
    banned_phrase_rule,
)
from alignray.ppo.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    KLController,
    kl_estimate,
    make_kl_controller,
)
from alignray.ppo.losses import (
    AGGREGATIONS,
    POLICY_LOSSES,
    aggregate,
    clipped_surrogate_loss,
    clipped_value_loss,
    entropy_from_logprobs,
    explained_variance,
    get_policy_loss,
    gspo_loss,
    kl_loss,
)
from alignray.ppo.masked import masked_mean, masked_sum, masked_var, masked_whiten, valid_only
from alignray.ppo.minibatch import EarlyStopOnKL, length_sorted_parts, micro_batch_count, minibatch_indices
from alignray.ppo.rewards import (
    RewardTerm,
    RunningRewardNormalizer,
    WeightedReward,
    load_reward_function,
    clip_rewards,
    last_valid_index,
    token_level_rewards,
    truncation_penalty,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS", "AGGREGATIONS", "AdaptiveKLController", "ConstraintPenalty", "DegenerateTextRule",
    "EarlyStopOnKL", "Estimator", "FixedKLController", "KLController", "KL_ESTIMATORS", "POLICY_LOSSES",
    "RegexRule", "RewardTerm", "RunningRewardNormalizer", "TWEET_CONSTRAINTS_EXAMPLE", "WeightedReward",
    "aggregate", "banned_phrase_rule", "clip_rewards", "clipped_surrogate_loss", "clipped_value_loss",
    "discounted_returns", "entropy_from_logprobs", "estimator_spec", "explained_variance", "gae_advantages",
    "get_advantage_estimator", "get_policy_loss", "grpo_advantages", "gspo_loss", "kl_estimate", "kl_loss",
    "last_valid_index", "length_sorted_parts", "load_reward_function", "make_kl_controller", "masked_mean",
    "masked_sum", "masked_var", "masked_whiten", "micro_batch_count", "minibatch_indices", "needs_critic",
    "reinforce_pp_advantages", "reinforce_pp_baseline_advantages", "rloo_advantages", "token_level_rewards",
    "truncation_penalty", "valid_only", "whitens"
]
