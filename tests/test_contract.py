"""envs/contract.py: the DrivingEnv protocol, StepInfo keys, as_driving_env and make_env.

CARLA's side of the contract is checked in tests/test_carla_env.py (through its fakes).
"""

from __future__ import annotations

import json

import fake_drive_env
import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.contract import (
    REQUIRED_INFO_KEYS,
    ContractError,
    DrivingEnv,
    StepInfo,
    as_driving_env,
    make_env,
    missing_members,
)

CAM = {"height": 16, "width": 40}


def _check_info(info: dict, hw: tuple[int, int]) -> None:
    missing = set(REQUIRED_INFO_KEYS) - set(info)
    assert not missing, f"info lacks {sorted(missing)}"
    assert info["depth"].shape == hw and info["depth"].dtype == np.float32
    assert info["off_road"] == (not info["on_road"])
    want = abs(info["cross_track_m"]) + info["car_width_m"] / 2 - info["lane_width_m"] / 2
    assert info["lane_invasion_m"] == pytest.approx(want, abs=1e-9)


def test_stepinfo_lists_the_documented_keys():
    keys = set(StepInfo.__annotations__)
    for k in ("cross_track_m", "heading_error_rad", "curvature", "on_road", "distance_m",
              "expert_steering", "depth", "time_s", "dt_s", "crashed", "collision",
              "lap_progress", "speed_mps", "executed_steering", "lane_width_m", "car_width_m",
              "lane_invasion_m", "off_road", "route_complete"):
        assert k in keys
    assert "route_complete" not in REQUIRED_INFO_KEYS and "lane_invasion_m" in REQUIRED_INFO_KEYS


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_dashcam_envs_satisfy_the_contract(env_id):
    env = make_env(env_id, camera=CAM)
    assert isinstance(env, DrivingEnv) and not isinstance(env, gym.Wrapper)
    assert missing_members(env) == []
    assert env.nominal_dt == pytest.approx(0.1) and env.image_hw == (16, 40)
    cam = json.loads(json.dumps(env.camera))  # JSON-safe
    assert {"height": 16, "width": 40}.items() <= cam.items()
    assert {"fov_deg", "height_m", "pitch_deg"} <= set(cam)
    json.dumps(env.config)
    obs, info = env.reset(seed=1)
    assert obs["image"].shape == (16, 40, 3)
    _check_info(info, (16, 40))
    assert info["expert_steering"] == pytest.approx(env.expert_action())
    _, _, _, _, info = env.step(np.array([0.2], np.float32))
    _check_info(info, (16, 40))
    assert info["dt_s"] == pytest.approx(env.nominal_dt)
    _, _, _, _, info = env.advance(np.array([0.0], np.float32), 0.037)
    assert info["dt_s"] == pytest.approx(0.037)
    _, info = env.recover()
    _check_info(info, (16, 40))
    assert abs(info["cross_track_m"]) < 1e-6
    env.close()


def test_steering_into_the_oncoming_lane_is_a_lane_invasion():
    env = make_env("liquid_drive/Racetrack-v0", {"traffic": 0, "start_lateral_m": 0.0,
                                                 "start_heading_deg": 0.0}, CAM)
    _, info = env.reset(seed=0)
    assert info["lane_invasion_m"] < 0  # the car starts inside its lane
    worst = -np.inf
    for _ in range(12):  # hard left: over the centre line, still on the road
        _, _, _, _, info = env.step(np.array([-0.3], np.float32))
        worst = max(worst, info["lane_invasion_m"])
        if info["cross_track_m"] < -2.5:
            break
    assert info["on_road"] and info["cross_track_m"] < 0
    assert worst > 0.5  # half the car in the oncoming lane


def test_fake_env_satisfies_the_contract():
    env = make_env(fake_drive_env.FAKE_ID, {"height": 6, "width": 10})
    # by name: other tests import the fake as `tests.fake_drive_env`, a second module object
    assert type(env).__name__ == fake_drive_env.FakeDriveEnv.__name__ and isinstance(env, DrivingEnv)
    assert env.image_hw == (6, 10) and env.nominal_dt == pytest.approx(0.1)
    _, info = env.reset(seed=2)
    _check_info(info, (6, 10))
    _, _, _, _, info = env.advance(np.array([0.5]), 0.2)
    _check_info(info, (6, 10))
    assert info["executed_steering"] == 0.5
    _, info = env.recover()
    assert info["cross_track_m"] == 0.0


def test_as_driving_env_unwraps_gym_wrappers():
    wrapped = gym.make("liquid_drive/Racetrack-v0", camera=CAM)
    assert isinstance(wrapped, gym.Wrapper) and not hasattr(wrapped, "advance")
    base = as_driving_env(wrapped)
    assert base is wrapped.unwrapped


def test_as_driving_env_names_what_is_missing():
    with pytest.raises(ContractError, match="advance.*recover.*expert_action.*nominal_dt"):
        as_driving_env(gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="does not satisfy"):  # a ValueError too: exit 2
        as_driving_env(object())


def test_make_env_bad_id_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown env id 'liquid_drive/Nope-v0'.*RandomRoad-v0"):
        make_env("liquid_drive/Nope-v0")


def test_make_env_bad_key_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['trafic'\].*traffic"):
        make_env("liquid_drive/Racetrack-v0", {"trafic": 1})
    with pytest.raises(ValueError, match="unknown config key"):
        make_env(envs.CARLA_ENV_ID, {"towns": "Town01"})  # checked before any connection
    with pytest.raises(ValueError, match="camera"):
        make_env("liquid_drive/Racetrack-v0", camera={"heigth": 10})
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        make_env("liquid_drive/Racetrack-v0", max_steps=0)


def test_make_env_max_steps_is_never_shorter():
    env = make_env("liquid_drive/Racetrack-v0", camera=CAM, max_steps=5000)
    assert env.config["max_steps"] == 5000
    env = make_env("liquid_drive/Racetrack-v0", {"max_steps": 9000}, CAM, max_steps=10)
    assert env.config["max_steps"] == 9000
    env = make_env("liquid_drive/Racetrack-v0", {"max_steps": 3}, CAM, max_steps=10)
    assert env.config["max_steps"] == 10
    env = make_env(fake_drive_env.FAKE_ID, max_steps=10)  # no max_steps key: nothing to raise
    assert "max_steps" not in env.config
