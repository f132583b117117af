"""Waits for resources end with an error naming what is missing (actors/placement.py,
actors/runtime.py), on the session's Ray cluster (8 logical CPUs, 4 logical GPUs)."""
from __future__ import annotations

import time

import pytest
import ray

from alignray.actors.placement import launch_ppo_actors
from alignray.actors.runtime import PlacementTimeout, wait_for_capacity
from alignray.config import AlignrayConfig


def test_ppo_placement_times_out_naming_the_missing_gpus_and_frees_what_it_held(ray_cluster, tiny_base_model):
    cfg = AlignrayConfig()
    cfg.cluster.placement_timeout_s = 3
    ppo = cfg.ppo
    ppo.rollout.gpus = 1  # four model roles take the four GPUs: the two workers find none
    started = time.monotonic()
    with pytest.raises(PlacementTimeout) as error:
        launch_ppo_actors(ppo, cfg.cluster, 0, str(tiny_base_model), None, 16)
    assert time.monotonic() - started < 30
    message = str(error.value)
    assert "the PPO rollout workers" in message and "missing GPU 2" in message
    assert "cluster.placement_timeout_s=3" in message
    deadline = time.monotonic() + 10  # the model actors' group, reserved first, is given back
    while ray.available_resources().get("GPU", 0) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("GPU", 0) == 4


def test_ray_train_capacity_wait_names_what_no_node_has(ray_cluster):
    with pytest.raises(PlacementTimeout, match="missing GPU 1"):
        wait_for_capacity("5 Ray Train workers", [{"CPU": 1.0, "GPU": 1.0}] * 5, timeout_s=0)
    wait_for_capacity("4 Ray Train workers", [{"CPU": 1.0, "GPU": 1.0}] * 4, timeout_s=0)  # fits: returns
