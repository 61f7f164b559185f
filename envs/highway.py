"""The registered environments: racetrack, highway-env's sine road, procedural roads."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.appearance import Appearance
from envs.base import DashcamDrivingEnv
from envs.tracks import Track, build_track


class RacetrackEnv(DashcamDrivingEnv):
    """`liquid_drive/Racetrack-v0`: a closed 2-lane loop, curves of radius 10-35 m."""

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(track="racetrack", max_steps=1000, traffic=2)
        return cfg


class LaneKeepingEnv(DashcamDrivingEnv):
    """`liquid_drive/LaneKeeping-v0`: highway-env's lane-keeping sine road (A = 5 m, 100 m period)
    with its dynamic bicycle (`BicycleVehicle`: tyre slip, RK4), as its lane-keeping-v0."""

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(track="sine", max_steps=1000, traffic=1, traffic_oncoming=True, dynamics="dynamic")
        return cfg


class RandomRoadEnv(DashcamDrivingEnv):
    """`liquid_drive/RandomRoad-v0`: a new seeded road of straights and arcs every episode.

    Road seeds are even for `split="train"` and odd for `split="test"`, so the two sets
    never share a road; `road_seed` pins one road (it must belong to the split). The
    appearance follows the same split (envs/appearance.py); the lane width is drawn from
    the appearance's `lane_width_m` range (3.0-4.5 m) unless `lane_width_m` is set.
    """

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update(track="random", split="train", road_seed=None, max_steps=1000, traffic=2,
                   traffic_oncoming=True, track_kwargs={"length": 800.0})
        return cfg

    def _validate_config(self) -> None:
        split = self.config["split"]
        if split not in ("train", "test"):
            raise ValueError(f"config split must be 'train' or 'test' for random roads, got {split!r}")
        super()._validate_config()
        rs = self.config["road_seed"]
        if rs is not None:
            if int(rs) < 0 or int(rs) % 2 != (split == "test"):
                raise ValueError(
                    f"road_seed {rs} is not in the {split} range: train roads have even seeds, "
                    "test roads odd seeds"
                )

    def road_seed_for(self, rng: np.random.Generator) -> int:
        if self.config["road_seed"] is not None:
            return int(self.config["road_seed"])
        return 2 * int(rng.integers(0, 2**30)) + (1 if self.config["split"] == "test" else 0)

    def _make_track(self, rng: np.random.Generator, appearance: Appearance | None = None) -> Track:
        kw = dict(self.config["track_kwargs"])
        if self.config["lane_width_m"] is not None:
            kw["lane_width"] = float(self.config["lane_width_m"])
        elif appearance is not None and "lane_width" not in kw:
            kw["lane_width"] = round(appearance.lane_width_m, 3)
        seed = self.road_seed_for(rng)
        cached = getattr(self, "_cache", None)
        if cached is not None and cached[0] == (seed, tuple(sorted(kw.items()))):
            return cached[1]
        track = build_track("random", seed=seed, **kw)
        self._cache = ((seed, tuple(sorted(kw.items()))), track)
        return track
