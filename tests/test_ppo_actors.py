"""The PPO actors on the session's Ray cluster (8 logical CPUs, 4 logical GPUs), real actors
and real DeepSpeed engines on CPU: placement, weight sync and its check, a rollout worker
killed mid-step, non-finite losses, a model actor that dies."""
from __future__ import annotations

import dataclasses

import pytest
import ray
import torch
from ray.util.placement_group import placement_group_table
from omegaconf import OmegaConf

from alignray.actors.base import ModelActorDied
from alignray.actors.reward import RewardActor
from alignray.scoring import target_word_share
from alignray.actors.weight_sync import WeightSyncError, named_weights
from alignray.config import AlignrayConfig, typed_config
from alignray.ppo.experience import Experience
from alignray.ppo.layout import choose_sync_method
from alignray.models.modeling import load_causal_lm
from alignray.workflows.ppo import PPOCoordinator


def small_config(model_path, prompts_path, placement: str = "separate"):
    cfg = OmegaConf.structured(AlignrayConfig)
    cfg.data.source, cfg.data.prompts_path = "files", str(prompts_path)
    cfg.cluster.placement = placement
    cfg.ppo.prompts_per_step, cfg.ppo.rollout.max_new_tokens = 8, 8
    cfg.ppo.epochs, cfg.ppo.minibatches, cfg.ppo.policy.lr = 1, 2, 1e-3
    # generation and training take turns, and the KL weight stays as set: a step's mechanics,
    # checked exactly (the lag has its own test in test_ppo_run.py)
    cfg.ppo.policy_lag, cfg.ppo.kl.controller = 0, "fixed"
    cfg.ppo.reward.kind, cfg.ppo.reward.target_word = "target_word", "the"
    return cfg


def make_coordinator(cfg, model_path, out) -> PPOCoordinator:
    cfg = typed_config(cfg)
    return PPOCoordinator(cfg.ppo, cfg.cluster, cfg.data, 0, str(model_path), None, out, cfg.eval.num_prompts)


def generate(coordinator, rows: torch.Tensor, step: int, group_size: int = 1):
    pool = coordinator.actors.pool
    return pool.collect(pool.submit(coordinator.prompt_batch(rows), step, group_size), coordinator.weights.restore)


def with_advantages(rollout, advantages: torch.Tensor) -> Experience:
    """An Experience for the policy's update alone, which reads no other scored field."""
    zeros = torch.zeros_like(rollout.logprobs)
    return Experience(**rollout.tensors(), ref_logprobs=zeros, old_logprobs=rollout.logprobs,
                      correction_weights=rollout.response_mask.float(), values=zeros, scores=torch.zeros(len(rollout)),
                      rewards=zeros, advantages=advantages, returns=zeros)


def as_cuda(placement: dict) -> dict:
    """A placement as it would read on a GPU machine, where the actor's device is CUDA."""
    return placement | {"device": "cuda:0"}


def gpu_ids(placements: list[dict]) -> list[tuple[str, ...]]:
    return [tuple(p["accelerator_ids"].get("GPU", [])) for p in placements]


def test_target_word_share_counts_whole_words_case_insensitively():
    shares = target_word_share(["The cat and the dog", "then theatre", "", "the the"], "the")
    assert shares.tolist() == pytest.approx([0.4, 0.0, 0.0, 1.0])


def test_reward_actor_scores_with_each_kind_and_the_critic_loads_an_rm_backbone(tiny_base_model, tmp_path):
    from alignray.actors.critic import ValueModel
    from alignray.config.ppo import PPORewardConfig
    from alignray.feedback.simulated import TRAINING_RATERS, judge_scores
    from alignray.reward.model import init_reward_model, load_reward_model, save_reward_model
    model, tokenizer = init_reward_model(tiny_base_model)
    save_reward_model(model, tokenizer, tmp_path / "rm", mean=1.0, std=2.0)
    prompts, responses = ["I love the new", "Flying with"], ["phone, it is great", "delays again, awful"]
    raw = load_reward_model(tmp_path / "rm").score(prompts, responses, normalize=False)
    scored = RewardActor(PPORewardConfig(kind="reward_model"), str(tmp_path / "rm")).score(prompts, responses)
    assert torch.allclose(scored, raw, atol=1e-6)  # raw: the coordinator normalises once
    oracle = RewardActor(PPORewardConfig(kind="training_annotators")).score(prompts, responses)
    assert oracle.tolist() == pytest.approx(judge_scores(responses, TRAINING_RATERS).tolist())
    assert oracle[0] > 0 > oracle[1]
    with pytest.raises(ValueError, match="kind"):
        RewardActor(PPORewardConfig(kind="vibes"))
    critic = ValueModel(str(tmp_path / "rm"))
    rm_embeddings = dict(model.named_parameters())["transformer.wte.weight"]
    assert torch.equal(critic.backbone.wte.weight, rm_embeddings)


def test_colocated_data_parallel_roles_share_one_gpu_and_train(ray_cluster, tiny_base_model, prompts_path, tmp_path):
    """Two policy and two critic ranks (each role one DeepSpeed world) with micro-batches under
    a token budget, every actor on one GPU: the ranks stay identical after an update."""
    cfg = small_config(tiny_base_model, prompts_path, "colocated")
    cfg.ppo.policy.actors = cfg.ppo.critic.actors = 2
    cfg.ppo.micro_batch_tokens = 1  # a row per micro-batch: minibatches of 2 rows per rank in 2 parts
    coordinator = make_coordinator(cfg, tiny_base_model, tmp_path)
    try:
        actors = coordinator.actors
        placements = ray.get([a.placement.remote() for a in [*actors.model_actors().values(), *actors.pool.actors]])
        assert len(placements) == 8 and len(set(gpu_ids(placements))) == 1 and len(gpu_ids(placements)[0]) == 1
        assert {p["placement_group_id"] for p in placements} == {actors.placement_group.id.hex()}
        assert all(p["device"] == "cpu" for p in placements)  # a logical GPU, a CPU device
        assert coordinator.weights.methods == ["object_store"] * 2  # auto, on CPU devices
        # were these devices CUDA, the workers would share the policy's GPU: IPC, never NCCL
        policy, workers = as_cuda(placements[0]), [as_cuda(p) for p in placements[-2:]]
        assert [choose_sync_method("auto", policy, w) for w in workers] == ["cuda_ipc"] * 2
        with pytest.raises(ValueError, match="share one GPU"):
            choose_sync_method("broadcast", policy, workers[0])
        metrics = coordinator.step(0)
        assert metrics["policy_updates"] == 4 and metrics["probe_max_abs_diff"] <= 1e-5  # 2 ranks x 2
        assert metrics["micro_batches"] == 2
        probe = coordinator.weights.probe[:3]
        rank0, rank1 = ray.get(actors.policy.call("logprobs", *probe))
        assert torch.equal(rank0, rank1)  # gradients averaged over the world, one update on both
    finally:
        coordinator.actors.shutdown()


def test_a_critic_free_estimator_places_no_critic_and_trains_without_one(ray_cluster, tiny_base_model, prompts_path,
                                                                        tmp_path):
    """reinforce_pp reads no values: the model actors' placement group asks for three GPU
    bundles (policy, reference, reward), no critic runs, and a step trains the policy alone.
    Placed before the module's coordinator, which holds all four logical GPUs."""
    cfg = small_config(tiny_base_model, prompts_path)
    cfg.ppo.advantage_estimator = "reinforce_pp"
    coordinator = make_coordinator(cfg, tiny_base_model, tmp_path)
    try:
        actors = coordinator.actors
        bundles = placement_group_table(actors.placement_group)["bundles"]
        assert [bundle["GPU"] for bundle in bundles.values()] == [1.0] * 3
        placements = ray.get([a.placement.remote() for a in actors.model_actors().values()])
        assert [p["role"] for p in placements] == ["policy", "reference", "reward"] and len(actors.critic) == 0
        metrics = coordinator.step(0)
        assert metrics["policy_updates"] == 2 and "time/critic_values" not in metrics
        assert not {"value_loss", "explained_variance", "critic_train_tokens_per_s"} & metrics.keys()
        coordinator.save_checkpoint(1)  # the policy's alone
        assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["coordinator.pt", "policy"]
    finally:
        coordinator.actors.shutdown()


@pytest.fixture(scope="module")
def coordinator(ray_cluster, tiny_base_model, prompts_path, tmp_path_factory):
    coordinator = make_coordinator(small_config(tiny_base_model, prompts_path), tiny_base_model,
                                   tmp_path_factory.mktemp("ppo"))
    coordinator.weights.sync(version=0)
    yield coordinator
    coordinator.actors.shutdown()


def test_model_actors_sit_on_four_gpus_of_one_placement_group(coordinator):
    actors = coordinator.actors
    placements = ray.get([a.placement.remote() for a in actors.model_actors().values()])
    assert [p["role"] for p in placements] == ["policy", "critic", "reference", "reward"]
    assert len(set(gpu_ids(placements))) == 4 and all(len(ids) == 1 for ids in gpu_ids(placements))
    # the sync method per pair, were the devices CUDA: another GPU (the critic's stands in for a
    # rollout worker with a GPU of its own) is NCCL's; a worker without a GPU reads the object store
    policy, other_gpu = as_cuda(placements[0]), as_cuda(placements[1])
    workers = ray.get(actors.pool.call("placement"))
    assert choose_sync_method("auto", policy, other_gpu) == "broadcast"
    assert [choose_sync_method("auto", policy, w) for w in workers] == ["object_store"] * 2
    with pytest.raises(ValueError, match="NCCL vs gloo"):
        choose_sync_method("broadcast", policy, workers[0])
    with pytest.raises(ValueError, match="policy's GPU"):
        choose_sync_method("cuda_ipc", policy, other_gpu)
    assert {p["placement_group_id"] for p in placements} == {actors.placement_group.id.hex()}
    assert len({p["pid"] for p in placements}) == 4


def probe_logprobs(coordinator):
    prompt_ids, prompt_mask, response_ids, mask = coordinator.weights.probe
    sequences = (prompt_ids, prompt_mask, response_ids)
    policy = ray.get(coordinator.actors.policy.actors[0].logprobs.remote(*sequences))
    reference = ray.get(coordinator.actors.reference.logprobs.remote(*sequences))
    pool = ray.get(coordinator.actors.pool.call("logprobs", *sequences))
    return policy[mask], reference[mask], [p[mask] for p in pool]


@pytest.mark.parametrize("weight_sync", ["object_store", "broadcast", "auto"])
def test_pool_reproduces_the_trained_policy_after_sync(coordinator, weight_sync, tiny_base_model):
    coordinator.ppo.sync.method = weight_sync
    step = coordinator.actors.pool.version
    metrics = coordinator.step(step)  # the weights of `step` updates reach the pool first
    coordinator.weights.sync(step + 1)  # as they would before the next step's batch
    assert coordinator.actors.pool.version == step + 1
    assert ray.get(coordinator.actors.pool.call("version")) == [step + 1] * 2
    policy, reference, pool = probe_logprobs(coordinator)
    assert (policy - reference).abs().max() > 1e-3  # training moved the policy
    for worker in pool:
        assert (worker - policy).abs().max() <= 1e-5
    assert metrics["probe_max_abs_diff"] <= 1e-5
    assert metrics["rollout_logprob_gap_max"] < 1e-4  # the batch was sampled with the policy's weights
    expected_bytes = sum(t.numel() * 4 for _, t in named_weights(load_causal_lm(tiny_base_model, torch.device("cpu"))))
    assert metrics["sync/bytes_per_worker"] == expected_bytes  # fp32 weights, tied ones once
    assert metrics["sync/gb_per_s"] > 0 and metrics["time/sync"] > 0


def test_a_worker_with_stale_weights_fails_the_sync_check(coordinator, tiny_base_model):
    sft_state = dict(named_weights(load_causal_lm(tiny_base_model, torch.device("cpu"))))
    version = coordinator.actors.pool.version
    ray.get(coordinator.actors.pool.actors[1].load_weights.remote(sft_state, version))
    with pytest.raises(WeightSyncError, match="rollout worker 1"):
        coordinator.weights.check_probe()
    coordinator.ppo.sync.method = "object_store"
    coordinator.weights.sync(version)  # put things right for the next tests
    assert coordinator.weights.check_probe() <= 1e-5


def test_a_rollout_worker_killed_mid_step_loses_and_duplicates_nothing(coordinator):
    pool = coordinator.actors.pool
    expected = generate(coordinator, torch.arange(12), step=100)
    ray.kill(pool.actors[0], no_restart=False)  # Ray restarts it with the SFT weights
    got = generate(coordinator, torch.arange(12), step=100)
    assert pool.restarts == 1
    assert got.prompt_index.tolist() == list(range(12))  # each prompt once, in order
    assert torch.equal(got.response_ids, expected.response_ids)
    assert torch.allclose(got.logprobs, expected.logprobs, atol=1e-5)  # current weights, not SFT's
    assert ray.get(pool.actors[0].version.remote()) == pool.version
    coordinator.ppo.sync.method = "broadcast"  # the restarted worker joins a new group
    coordinator.weights.sync(pool.version)


def test_a_prompts_responses_stay_on_one_worker_and_survive_its_loss_whole(coordinator):
    """Three prompts x 4 responses on two workers: no group is cut between workers (a cut
    at 6 rows would split prompt 1's); a worker killed mid-step answers its groups again,
    identically, so each prompt keeps exactly its 4 responses, in order."""
    pool, rows = coordinator.actors.pool, torch.arange(3).repeat_interleave(4)
    pending = pool.submit(coordinator.prompt_batch(rows), 400, group_size=4)
    assert [s.prompt_index.tolist() for s in pending.shards] == [[0] * 4 + [1] * 4, [2] * 4]
    expected = pool.collect(pending, coordinator.weights.restore)
    restarts = pool.restarts
    ray.kill(pool.actors[1], no_restart=False)
    got = generate(coordinator, rows, step=400, group_size=4)
    assert pool.restarts == restarts + 1
    assert got.prompt_index.tolist() == rows.tolist()
    assert torch.equal(got.response_ids, expected.response_ids)
    group = got.response_ids[:4]
    assert len({tuple(r.tolist()) for r in group}) > 1  # a group's responses are separate samples
    with pytest.raises(ValueError, match="whole groups of 4"):
        pool.submit(coordinator.prompt_batch(torch.arange(6)), 400, group_size=4)
    coordinator.ppo.sync.method = "broadcast"  # the restarted worker joins a new group
    coordinator.weights.sync(pool.version)


def test_nonfinite_losses_skip_the_update_and_stop_the_run(coordinator):
    before, _, _ = probe_logprobs(coordinator)
    rollout = generate(coordinator, torch.arange(8), step=200)
    exp = with_advantages(rollout, torch.full_like(rollout.logprobs, float("nan")))
    stats = ray.get(coordinator.actors.policy.actors[0].train.remote(exp, 200))
    assert stats.nonfinite_updates == 2 and stats.policy_updates == 0
    after, _, _ = probe_logprobs(coordinator)
    assert torch.equal(before, after)
    coordinator.ppo.max_nonfinite_in_a_row = 2
    coordinator.count_nonfinite(200, [stats])
    with pytest.raises(FloatingPointError, match="2 steps in a row"):
        coordinator.count_nonfinite(201, [stats])


def test_a_dead_model_actor_stops_the_run_with_its_name(coordinator):
    ray.kill(coordinator.actors.reference)
    with pytest.raises(ModelActorDied, match="reference"):
        coordinator.step(coordinator.actors.pool.version)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_micro_batches_under_a_token_budget_give_the_whole_minibatch_update(coordinator, tiny_base_model, aggregation):
    """Gradient accumulation over length-sorted, trimmed micro-batches is the same step,
    whether the loss is a mean over tokens (micro-batches weigh by tokens) or over responses
    (they weigh by rows)."""
    from alignray.actors.policy import PolicyActor
    rollout = generate(coordinator, torch.arange(16), step=300)
    # responses of 1 to 8 tokens, so that weighing micro-batches by tokens or by rows differs
    rollout.response_mask &= torch.arange(rollout.response_mask.shape[1]) < 1 + torch.arange(16).unsqueeze(1) % 8
    exp = with_advantages(rollout, torch.randn(rollout.logprobs.shape, generator=torch.Generator().manual_seed(0)))
    ppo = dataclasses.replace(coordinator.ppo, prompts_per_step=16, epochs=2, minibatches=2,
                              policy=dataclasses.replace(coordinator.ppo.policy, loss_aggregation=aggregation))
    budget = int(exp.sequence_lengths().max()) * 3  # micro-batches of about three rows
    policies = [ray.remote(PolicyActor).options(num_cpus=1).remote(
        str(tiny_base_model), ppo.policy, dataclasses.replace(ppo, micro_batch_tokens=b).update_settings(),
        ppo.policy_objective()) for b in (0, budget)]
    try:
        for policy in policies:
            ray.get(policy.setup.remote(*ray.get(policy.rendezvous.remote())))
        whole, micro = ray.get([p.train.remote(exp, 0) for p in policies])
        assert whole.micro_batches == 1 and micro.micro_batches >= 2
        assert micro.policy_loss == pytest.approx(whole.policy_loss, abs=1e-5)
        assert micro.train_tokens_per_s > 0
        after = ray.get([p.logprobs.remote(exp.prompt_ids, exp.prompt_mask, exp.response_ids) for p in policies])
        moved = (after[0] - exp.logprobs)[exp.response_mask].abs().max()
        assert moved > 1e-2 and (after[0] - after[1])[exp.response_mask].abs().max() < 1e-4
    finally:
        for policy in policies:
            ray.kill(policy)
