"""A tiny deterministic stand-in for the dashcam envs (same obs/info contract), for data tests.

The frame encodes (seed, step) in its pixels so tests can check that stored frames and labels
line up exactly with what the env produced. It satisfies `envs.contract.DrivingEnv`: the
"road" is one 4 m lane (on road while |x| < 2 m), the car 2 m wide.
"""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np

FAKE_ID = "liquid_drive_test/Fake-v0"


LANE_WIDTH_M = 4.0
CAR_WIDTH_M = 2.0


class FakeDriveEnv(gym.Env):
    """Lane offset x drifts with steering; the expert steers back: label = clip(-0.5 x, -1, 1)."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        height: int = 6,
        width: int = 10,
        step_sleep: float = 0.0,
        terminate_at: int | None = None,
        policy_frequency: int = 10,
    ) -> None:
        self.config = {
            "camera": {"height": height, "width": width, "fov_deg": 60.0},
            "policy_frequency": policy_frequency,
            "terminate_at": terminate_at,
        }
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, (height, width, 3), np.uint8),
                "speed": gym.spaces.Box(0, 50, (1,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
        self.step_sleep = step_sleep
        self.terminate_at = terminate_at
        self.dt = 1.0 / policy_frequency
        self.executed = 0.0

    # the contract (envs.contract.DrivingEnv)
    @property
    def nominal_dt(self) -> float:
        return self.dt

    @property
    def image_hw(self) -> tuple[int, int]:
        h, w = self.observation_space["image"].shape[:2]
        return int(h), int(w)

    @property
    def camera(self) -> dict:
        return dict(self.config["camera"])

    def expert_action(self) -> float:
        return float(np.clip(-0.5 * self.x, -1, 1))

    def recover(self):
        """Back on the lane centre; the episode goes on."""
        self.x = 0.0
        return self._obs(), self._info(self.last_dt)

    def _obs(self):
        img = np.empty(self.observation_space["image"].shape, np.uint8)
        img[..., 0] = self.seed_ % 256
        img[..., 1] = self.t % 256
        img[..., 2] = np.uint8(int(128 + 100 * np.tanh(self.x)) % 256)
        return {"image": img, "speed": np.array([5.0 + 0.01 * self.t], np.float32)}

    def _info(self, dt):
        return {
            "cross_track_m": float(self.x),
            "heading_error_rad": 0.0,
            "curvature": 0.01,
            "on_road": abs(self.x) < 2.0,
            "off_road": not abs(self.x) < 2.0,
            "distance_m": float(self.dist),
            "expert_steering": self.expert_action(),
            "depth": np.full(self.observation_space["image"].shape[:2], 7.0, np.float32),
            "time_s": float(self.time),
            "dt_s": float(dt),
            "crashed": False,
            "collision": False,
            "lap_progress": 0.0,
            "speed_mps": float(5.0 + 0.01 * self.t),
            "executed_steering": float(self.executed),
            "lane_width_m": LANE_WIDTH_M,
            "car_width_m": CAR_WIDTH_M,
            "lane_invasion_m": float(abs(self.x) + CAR_WIDTH_M / 2 - LANE_WIDTH_M / 2),
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_ = int(seed or 0)
        self.t = 0
        self.x = float(self.np_random.uniform(-1, 1))
        self.time = 0.0
        self.dist = 0.0
        self.executed = 0.0
        self.last_dt = 0.0
        return self._obs(), self._info(0.0)

    def advance(self, action, dt_s):
        if self.step_sleep:
            time.sleep(self.step_sleep)
        a = float(np.asarray(action).reshape(-1)[0])
        self.executed = a
        self.last_dt = float(dt_s)
        self.x = self.x + a * dt_s * 2.0 + 0.05
        self.t += 1
        self.time += dt_s
        self.dist += 5.0 * dt_s
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return self._obs(), 0.0, terminated, False, self._info(dt_s)

    def step(self, action):
        return self.advance(action, self.dt)


def register() -> None:
    if FAKE_ID not in gym.registry:
        gym.register(FAKE_ID, entry_point=FakeDriveEnv)


register()
