"""The dashcam lane-keeping env: a gymnasium.Env holding a highway-env Road and vehicles.

Why not subclass highway-env's AbstractEnv: its observation types (Kinematics ~13 ms a
step in pandas), pygame rendering and per-step closest-lane search over the whole
network are the slow parts, and we use none of them. We keep what highway-env does
well: the road network (lanes give the privileged coordinates), the kinematic bicycle
(`highway_env.vehicle.kinematics.Vehicle.step`), and `Road.step` with its collision
checks. The ego only steers; a P controller holds its speed.

Contract (docs/architecture.md): obs {"image": uint8 (H,W,3), "speed": float32 (1,)},
action float32 (1,) steering in [-1, 1]; `step` returns the observation *after* the
step; info carries the privileged state, the expert's label and the depth image.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from highway_env.road.road import Road
from highway_env.vehicle.kinematics import Vehicle

from envs.appearance import (
    APPEARANCE_RANGES,
    Appearance,
    appearance_seed_for,
    check_split,
    sample_appearance,
    seed_in_split,
    split_combinations,
    validate_options,
)
from envs.camera import CameraSpec, DashcamRenderer
from envs.contract import lane_invasion
from envs.expert import pure_pursuit
from envs.scenery import sample_scenery
from envs.tracks import TRACK_NAMES, Track, _wrap, build_track


class EgoVehicle(Vehicle):
    """highway-env's kinematic bicycle without its per-step search over all lanes.

    The env tracks the ego's route position itself (`Track.locate`), which is O(1).
    """

    def on_state_update(self) -> None:  # noqa: D401 - highway-env hook
        pass


def _dynamic_ego_class():
    """highway-env's dynamic bicycle (tyre slip, RK4), imported lazily (it imports matplotlib)."""
    from highway_env.vehicle.dynamics import BicycleVehicle

    class DynamicEgoVehicle(BicycleVehicle):
        def on_state_update(self) -> None:
            pass

    return DynamicEgoVehicle


class RouteFollower(Vehicle):
    """Traffic: drives a lane of the route at constant speed (negative = oncoming)."""

    def __init__(self, road: Road, track: Track, s: float, lateral: float, speed: float):
        self.track, self.route_s, self.lateral = track, s, lateral
        pos, heading = track.pose_at(s, lateral)
        super().__init__(road, pos, heading + (math.pi if speed < 0 else 0.0), abs(speed))
        self.signed_speed = speed
        self.check_collisions = False  # only the ego's collisions matter
        self.color = (200, 40, 40)

    def on_state_update(self) -> None:
        pass

    def step(self, dt: float) -> None:
        self.route_s += self.signed_speed * dt
        if not self.track.closed:  # re-enter the open road at the other end
            self.route_s %= self.track.length
        pos, heading = self.track.pose_at(self.route_s, self.lateral)
        self.position = np.asarray(pos, dtype=np.float64)
        self.heading = heading + (math.pi if self.signed_speed < 0 else 0.0)


def _base_config() -> dict[str, Any]:
    return {
        "track": "racetrack",
        "track_kwargs": {},
        "camera": {"height": 78, "width": 200, "fov_deg": 60.0, "height_m": 1.3, "pitch_deg": 4.0},
        "policy_frequency": 10.0,  # Hz: `step` advances 1/policy_frequency seconds
        "simulation_frequency": 30.0,  # Hz: physics sub-steps
        "max_steps": 1000,  # truncation
        "speed_mps": [8.0, 10.0],  # target speed drawn per episode, held by a P controller
        "speed_gain": 1.0,  # 1/s
        "dynamics": "kinematic",  # or "dynamic": highway-env's BicycleVehicle (tyre slip)
        "max_steering_deg": 45.0,  # action 1 = this front-wheel angle (highway-env: pi/4)
        "start_lateral_m": 0.5,  # random start: |lateral offset| <= this
        "start_heading_deg": 5.0,  # random start: |heading error| <= this
        "terminate_off_road": False,  # evaluation counts crashes and goes on (recover)
        "randomize": True,  # domain randomisation of the look on every reset
        "object_density": 1.0,  # roadside objects (1 = one per 12 m per side)
        "shadows": True,
        "traffic": 2,  # other vehicles on the left lane
        "traffic_oncoming": False,
        "dart_noise": 0.0,  # std of Gaussian noise on the *executed* steering (label unchanged)
        "expert": {"lookahead_time_s": 0.45, "lookahead_min_m": 4.0},
        "lane_width_m": None,  # None: random roads draw it (appearance lane_width_m), tracks keep theirs
        "split": None,  # "train" | "test": appearance combinations and seeds (and RandomRoad's roads)
        "appearance": {},  # appearance options over envs.appearance.default_appearance_options()
        "appearance_seed": None,  # pin one look (must belong to the split); None = drawn per episode
    }


#: Keys whose default is None (= "the track's own" / "any") but that take a number when given.
_NUMBER_OR_NONE = frozenset({"lane_width_m", "road_seed"})


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)


def _check_config_value(owner: str, key: str, value: Any, default: Any) -> None:
    """Refuse a value of the wrong type by the default's type, naming the key and the value
    (a JSON string where a number belongs used to end in float()'s bare message)."""
    if key in _NUMBER_OR_NONE:
        ok, want = value is None or _is_number(value), "a finite number (or null)"
    elif isinstance(default, bool):
        ok, want = isinstance(value, (bool, np.bool_)) or value in (0, 1), "true or false"
    elif isinstance(default, numbers.Real):
        ok, want = _is_number(value), "a finite number"
    elif isinstance(default, list) and default and all(_is_number(x) for x in default):
        ok = _is_number(value) or (isinstance(value, (list, tuple)) and all(_is_number(x) for x in value))
        want = "a finite number or a list of them"
    elif isinstance(default, dict):
        if isinstance(value, dict) and key in ("camera", "expert"):
            for k2, v2 in value.items():
                if k2 in default:
                    _check_config_value(owner, f"{key}.{k2}", v2, default[k2])
        ok, want = isinstance(value, dict), "a JSON object"
    else:
        return  # strings and free-form values are checked where they are used
    if not ok:
        hint = "; in JSON write numbers without quotes" if isinstance(value, str) else ""
        raise ValueError(f"config {key} = {value!r} for {owner}: must be {want} "
                         f"(default {default!r}){hint}")


class DashcamDrivingEnv(gym.Env):
    """Lane keeping from a first-person camera on a highway-env road."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return _base_config()

    def __init__(self, config: dict | None = None, render_mode: str | None = None, **overrides):
        cfg = self.default_config()
        for src in (config or {}), overrides:
            for k, v in src.items():
                if k not in cfg:
                    raise ValueError(
                        f"unknown config key {k!r} for {type(self).__name__}; "
                        f"known keys: {', '.join(sorted(cfg))}"
                    )
                _check_config_value(type(self).__name__, k, v, cfg[k])
                if k == "camera" and v is not None:
                    cfg["camera"] = {**cfg["camera"], **dict(v)}
                else:
                    cfg[k] = copy.deepcopy(v)
        self.config = cfg
        self._validate_config()
        self.camera_spec = CameraSpec.from_config(cfg["camera"])
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        H, W = self.camera_spec.height, self.camera_spec.width
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (H, W, 3), np.uint8),
            "speed": spaces.Box(0.0, 50.0, (1,), np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.track: Track | None = None
        self.renderer: DashcamRenderer | None = None
        self._static_track: Track | None = None
        self.appearance: Appearance | None = None  # this episode's look (None: randomize=False)
        self.episode_camera: CameraSpec = self.camera_spec  # with this episode's mount variation
        if cfg["track"] != "random":
            self._make_track(np.random.default_rng(0))  # bad track/track_kwargs fail here, at make

    # ------------------------------------------------------------- config
    def _validate_config(self) -> None:
        c = self.config
        if c["track"] not in TRACK_NAMES:
            raise ValueError(f"unknown track {c['track']!r}; choose one of {', '.join(TRACK_NAMES)}")
        for k in ("policy_frequency", "simulation_frequency"):
            if not float(c[k]) > 0:
                raise ValueError(f"config {k} must be > 0 Hz, got {c[k]!r}")
        if int(c["max_steps"]) <= 0:
            raise ValueError(f"config max_steps must be a positive integer, got {c['max_steps']!r}")
        sp = c["speed_mps"]
        sp = [float(sp), float(sp)] if np.isscalar(sp) else [float(x) for x in sp]
        if len(sp) != 2 or not 0 < sp[0] <= sp[1] <= 40:
            raise ValueError(f"config speed_mps must be a speed or a [low, high] range in (0, 40] m/s, got {c['speed_mps']!r}")
        c["speed_mps"] = sp
        if not 0 <= float(c["dart_noise"]) <= 2:
            raise ValueError(f"config dart_noise must be a std in [0, 2], got {c['dart_noise']!r}")
        if c["dynamics"] not in ("kinematic", "dynamic"):
            raise ValueError(f"config dynamics must be 'kinematic' or 'dynamic', got {c['dynamics']!r}")
        if not 0 < float(c["max_steering_deg"]) < 90:
            raise ValueError(f"config max_steering_deg must be in (0, 90), got {c['max_steering_deg']!r}")
        check_split(c["split"])
        if not isinstance(c["appearance"], dict):
            raise ValueError(f"config appearance must be a dict of appearance options, got {c['appearance']!r}")
        opts = validate_options(c["appearance"])
        split_combinations(c["split"], opts)  # a split left empty by the options fails here
        lw = c["lane_width_m"]
        if lw is not None:
            lo, hi = APPEARANCE_RANGES["lane_width_m"]
            if isinstance(lw, bool) or not isinstance(lw, (int, float)) or not lo <= float(lw) <= hi:
                raise ValueError(f"config lane_width_m must be None or in [{lo:g}, {hi:g}] m, got {lw!r}")
        a = c["appearance_seed"]
        if a is not None:
            if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or a < 0:
                raise ValueError(f"config appearance_seed must be None or an integer >= 0, got {a!r}")
            if not seed_in_split(int(a), c["split"]):
                raise ValueError(f"appearance_seed {a} is not in the {c['split']} split: train looks have "
                                 "even seeds, test looks odd seeds")

    def _make_track(self, rng: np.random.Generator, appearance: Appearance | None = None) -> Track:
        """The track of the next episode (static tracks are built once, with their own lane width)."""
        if self._static_track is None:
            kw = dict(self.config["track_kwargs"])
            if self.config["lane_width_m"] is not None:
                kw["lane_width"] = float(self.config["lane_width_m"])
            self._static_track = build_track(self.config["track"], **kw)
        return self._static_track

    # ---------------------------------------------------------------- API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        cfg = self.config
        app = None
        if cfg["randomize"]:
            seed_a = cfg["appearance_seed"]
            seed_a = appearance_seed_for(rng, cfg["split"]) if seed_a is None else int(seed_a)
            app = sample_appearance(seed_a, cfg["split"], cfg["appearance"])
        self.appearance = app
        track = self._make_track(rng, app)
        self.track = track
        # the look comes from the appearance seed alone (with the track), not the episode seed
        scene_rng = np.random.default_rng([app.seed, 1]) if app is not None else rng
        self.scenery = sample_scenery(track, scene_rng, randomize=bool(cfg["randomize"]),
                                      object_density=float(cfg["object_density"]),
                                      shadows=bool(cfg["shadows"]), appearance=app)
        spec = self.camera_spec
        if app is not None:  # camera mount variation of this episode
            spec = dataclasses.replace(spec, height_m=spec.height_m + app.camera_height_offset_m,
                                       pitch_deg=spec.pitch_deg + app.camera_pitch_offset_deg,
                                       roll_deg=spec.roll_deg + app.camera_roll_deg)
        self.episode_camera = spec
        self.renderer = DashcamRenderer(track, self.scenery, spec)
        self.road = Road(network=track.network, vehicles=[], np_random=np.random.RandomState(
            int(rng.integers(2**31))), record_history=False)
        # random start pose (seeded)
        if track.closed:
            s0 = float(rng.uniform(0, track.length))
        else:
            s0 = float(rng.uniform(0, min(0.2 * track.length, 100.0)))
        lat0 = float(rng.uniform(-1, 1) * self.config["start_lateral_m"])
        dh = math.radians(float(rng.uniform(-1, 1) * self.config["start_heading_deg"]))
        pos, heading = track.pose_at(s0, lat0)
        lo, hi = self.config["speed_mps"]
        self.target_speed = float(rng.uniform(lo, hi))
        ego_cls = EgoVehicle if self.config["dynamics"] == "kinematic" else _dynamic_ego_class()
        self.ego = ego_cls(self.road, pos, heading + dh, self.target_speed)
        self.road.vehicles.append(self.ego)
        n_traffic = int(self.config["traffic"]) if track.n_lanes > 1 else 0
        for i in range(n_traffic):
            s = s0 + 25.0 + (i + rng.uniform(0, 1)) * track.length / max(n_traffic, 1) * 0.8
            s %= track.length
            v = float(rng.uniform(0.4, 0.8) * self.target_speed)
            if self.config["traffic_oncoming"]:
                v = -v
            car = RouteFollower(self.road, track, s, -track.lane_width, v)
            car.color = tuple(int(x) for x in rng.integers(30, 230, 3))
            self.road.vehicles.append(car)
        self._seg, _, _ = track.nearest(self.ego.position)
        self.steps = 0
        self.time_s = 0.0
        self.distance_m = 0.0
        self.progress_m = 0.0
        self.recoveries = 0
        self._last_dt = 0.0
        self._update_lane_state()
        self._prev_route_s = self.route_s
        obs, info = self._observe(crashed=False)
        return obs, info

    def step(self, action):
        return self.advance(action, 1.0 / float(self.config["policy_frequency"]))

    def advance(self, action, dt_s: float):
        """One policy step lasting `dt_s` seconds (jittered frame intervals)."""
        if self.track is None:
            raise RuntimeError("call reset() before step()")
        steer = self._check_action(action)
        dt_s = float(dt_s)
        if not (dt_s > 0 and math.isfinite(dt_s)):
            raise ValueError(f"dt_s must be a positive number of seconds, got {dt_s!r}")
        noise = float(self.config["dart_noise"])
        if noise > 0:
            steer = float(np.clip(steer + self.np_random.normal(0.0, noise), -1.0, 1.0))
        self.executed_steering = steer
        n = max(1, math.ceil(dt_s * float(self.config["simulation_frequency"]) - 1e-9))
        h = dt_s / n
        max_steer = math.radians(float(self.config["max_steering_deg"]))
        collided = False
        for _ in range(n):
            acc = float(self.config["speed_gain"]) * (self.target_speed - self.ego.speed)
            self.ego.action = {"steering": steer * max_steer, "acceleration": acc}
            self.road.step(h)
            if self.ego.crashed:
                collided = True
                self.ego.crashed = False  # evaluation counts it and goes on
                self.ego.impact = None
        self.steps += 1
        self.time_s += dt_s
        self._last_dt = dt_s
        self.distance_m += abs(self.ego.speed) * dt_s
        self._update_lane_state()
        ds = self.route_s - self._prev_route_s
        if self.track.closed:
            ds = (ds + self.track.length / 2) % self.track.length - self.track.length / 2
        self.progress_m += ds
        self._prev_route_s = self.route_s
        crashed = collided or not self.on_road
        obs, info = self._observe(crashed=crashed)
        info["collision"] = collided
        terminated = bool(self.config["terminate_off_road"] and not self.on_road)
        if not self.track.closed and self.route_s >= self.track.length - 15.0:
            terminated = True  # the open road is finished
            info["route_complete"] = True
        truncated = self.steps >= int(self.config["max_steps"])
        half = self.track.lane_width / 2
        reward = 1.0 - min(1.0, (self.cross_track / half) ** 2) - (1.0 if crashed else 0.0)
        return obs, float(reward), terminated, truncated, info

    def recover(self):
        """Put the car on the lane centre at the nearest point, heading along the lane."""
        if self.track is None:
            raise RuntimeError("call reset() before recover()")
        seg, s, _ = self.track.nearest(self.ego.position)
        lane = self.track.route[seg]
        self.ego.position = np.asarray(lane.position(s, 0.0), dtype=np.float64)
        self.ego.heading = float(lane.heading_at(s))
        self.ego.crashed = False
        self._seg = seg
        self.recoveries += 1
        self._update_lane_state()
        self._prev_route_s = self.route_s
        return self._observe(crashed=False)

    # ------------------------------------------------------- the contract
    @property
    def nominal_dt(self) -> float:
        """Seconds per `step` (envs.contract.DrivingEnv)."""
        return 1.0 / float(self.config["policy_frequency"])

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.camera_spec.height), int(self.camera_spec.width)

    @property
    def camera(self) -> dict[str, Any]:
        """JSON-safe description of the dashcam (every `CameraSpec` field)."""
        return dataclasses.asdict(self.camera_spec)

    @property
    def vehicle(self) -> Vehicle:
        """The ego vehicle (highway-env's name for it)."""
        return self.ego

    def render(self):
        if self.render_mode != "rgb_array" or self.track is None:
            return None
        from envs.topdown import debug_panel

        return debug_panel(self)

    # ---------------------------------------------------------- internals
    def _check_action(self, action) -> float:
        a = np.asarray(action, dtype=np.float64)
        if a.shape not in ((1,), ()):
            raise ValueError(
                f"action must be a steering array of shape (1,) in [-1, 1], got shape {a.shape}"
            )
        v = float(a.reshape(-1)[0])
        if not math.isfinite(v):
            raise ValueError(f"steering action must be finite, got {v}")
        return float(np.clip(v, -1.0, 1.0))

    def _update_lane_state(self) -> None:
        tr = self.track
        seg, s, lat = tr.locate(self.ego.position, self._seg)
        self._seg, self._s, self.cross_track = seg, s, lat
        self.route_s = tr.route_s(seg, s)
        lane = tr.route[seg]
        s_c = min(max(s, 0.0), lane.length)
        self.heading_error = float(_wrap(self.ego.heading - lane.heading_at(s_c)))
        self.curvature = tr.curvature(seg, s_c)
        self.on_road = bool(tr.left_edge <= lat <= tr.right_edge)

    def expert_action(self) -> float:
        e = self.config["expert"]
        return pure_pursuit(self.track, self.route_s, self.ego.position, self.ego.heading,
                            self.ego.speed, math.radians(float(self.config["max_steering_deg"])),
                            float(e["lookahead_time_s"]), float(e["lookahead_min_m"]))

    def _vehicles_for_camera(self) -> list[tuple]:
        return [(v.position, v.heading, v.LENGTH, v.WIDTH, v.color)
                for v in self.road.vehicles if v is not self.ego]

    def _observe(self, crashed: bool):
        img, depth = self.renderer.render(self.ego.position, self.ego.heading,
                                          self._vehicles_for_camera())
        self._last_frame = img
        obs = {"image": img, "speed": np.array([self.ego.speed], dtype=np.float32)}
        closed = self.track.closed
        info = {
            "cross_track_m": float(self.cross_track),
            "heading_error_rad": float(self.heading_error),
            "curvature": float(self.curvature),
            "on_road": bool(self.on_road),
            "distance_m": float(self.distance_m),
            "expert_steering": float(self.expert_action()),
            "depth": depth,
            "time_s": float(self.time_s),
            "dt_s": float(self._last_dt),
            "crashed": bool(crashed),
            "lap_progress": float(self.progress_m / self.track.length) if closed
            else float(min(1.0, self.route_s / self.track.length)),
            "speed_mps": float(self.ego.speed),
            "executed_steering": float(getattr(self, "executed_steering", 0.0)),
            "lane_width_m": float(self.track.lane_width),
            "car_width_m": float(self.ego.WIDTH),
            "off_road": not self.on_road,
            "lane_invasion_m": lane_invasion(self.cross_track, self.track.lane_width, self.ego.WIDTH),
            "collision": False,
        }
        return obs, info
