"""The privileged expert drives every registered env clean, over several seeds."""

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.expert import expert_steering, pure_pursuit
from envs.tracks import make_sine_road

TINY = {"camera": {"height": 8, "width": 16}, "object_density": 0.0}


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expert_completes_track_clean(env_id, seed):
    # a full lap of the racetrack; a whole (shortened, 300 m) sine road / procedural road
    kw = {} if env_id.endswith("Racetrack-v0") else {"track_kwargs": {"length": 300.0}}
    env = gym.make(env_id, **TINY, **kw, max_steps=1200)
    _, info = env.reset(seed=seed)
    ctes, steps = [], 0
    while True:
        _, _, term, trunc, info = env.step(np.array([info["expert_steering"]], np.float32))
        steps += 1
        ctes.append(abs(info["cross_track_m"]))
        assert info["on_road"] and not info["crashed"], (steps, info["cross_track_m"])
        if term or trunc:
            break
        if env_id.endswith("Racetrack-v0") and info["lap_progress"] >= 1.05:
            break
    assert np.mean(ctes) <= 0.4
    assert max(ctes) < env.unwrapped.track.lane_width / 2  # never left its lane
    if env_id.endswith("Racetrack-v0"):
        assert info["lap_progress"] >= 1.05
    else:
        assert info.get("route_complete") and info["lap_progress"] > 0.95


def test_expert_label_matches_function_and_steers_back():
    env = gym.make("liquid_drive/LaneKeeping-v0", **TINY)
    _, info = env.reset(seed=0)
    assert info["expert_steering"] == expert_steering(env)
    tr = make_sine_road(amplitude=0.0)  # straight along +x; lateral + = right = +y
    left = pure_pursuit(tr, 50.0, np.array([50.0, -1.0]), 0.0, 10.0, np.pi / 4)
    right = pure_pursuit(tr, 50.0, np.array([50.0, 1.0]), 0.0, 10.0, np.pi / 4)
    centred = pure_pursuit(tr, 50.0, np.array([50.0, 0.0]), 0.0, 10.0, np.pi / 4)
    assert left > 0.05 and right < -0.05 and centred == pytest.approx(0.0, abs=1e-9)
    assert left == pytest.approx(-right)


def test_expert_drives_dynamic_bicycle_on_racetrack():
    """highway-env's BicycleVehicle (tyre slip; LaneKeeping's default) on the tightest track."""
    from highway_env.vehicle.dynamics import BicycleVehicle

    env = gym.make("liquid_drive/Racetrack-v0", **TINY, dynamics="dynamic", traffic=0)
    _, info = env.reset(seed=4)
    assert isinstance(env.unwrapped.ego, BicycleVehicle)
    ctes = []
    while info["lap_progress"] < 1.05:
        _, _, _, trunc, info = env.step(np.array([info["expert_steering"]], np.float32))
        ctes.append(abs(info["cross_track_m"]))
        assert info["on_road"] and not trunc
    assert np.mean(ctes) <= 0.4
    lk = gym.make("liquid_drive/LaneKeeping-v0", **TINY)
    lk.reset(seed=0)
    assert isinstance(lk.unwrapped.ego, BicycleVehicle)
