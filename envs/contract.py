"""The env contract every driving backend satisfies, stated once in code.

Why a Protocol: `driving/` drives any env the same way (the closed-loop drive, recording,
DAgger, evaluation, explanations). Instead of probing envs with `getattr`, callers take a
`DrivingEnv` from `make_env` or `as_driving_env`, which check the contract once and say what
is missing. The dashcam envs (`envs.base.DashcamDrivingEnv`), `envs.carla_env.CarlaEnv` and
the test fake (`tests/fake_drive_env.py`) satisfy it.

Observation: `{"image": uint8 (H, W, 3) RGB, "speed": float32 (1,) m/s}`; action: float32
(1,) steering in [-1, 1], positive = right. `info` after `reset`, `step`, `advance` and
`recover` holds the keys of `StepInfo`.
"""

import math
from collections.abc import Mapping
from typing import Any, NotRequired, Protocol, TypedDict, runtime_checkable

import numpy as np

#: The members `as_driving_env` checks (the names of `DrivingEnv`'s methods and attributes).
CONTRACT_MEMBERS = (
    "reset", "step", "advance", "recover", "expert_action",
    "nominal_dt", "image_hw", "camera", "config",
)


class StepInfo(TypedDict):
    """The documented `info` keys (docs/architecture.md: a public interface, never renamed).

    Lateral quantities are metres, positive to the driver's right, measured from the centre
    of the ego's own lane.

    - `cross_track_m`: lateral offset of the car's centre from its lane centre.
    - `heading_error_rad`: car heading minus lane heading, wrapped to [-pi, pi).
    - `curvature`: signed lane curvature, 1/m, positive = the lane turns right.
    - `on_road`: the car's centre lies on the road surface (any lane, either direction).
    - `off_road`: `not on_road`, the "left the road" intervention cause.
    - `distance_m`: odometer since `reset`.
    - `expert_steering`: the privileged expert's action for the state this info describes.
    - `depth`: float32 (H, W) planar depth, metres (sky = the camera's far value).
    - `time_s`, `dt_s`: simulated time since `reset`; length of the last step (0 after reset).
    - `crashed`: a collision or off-road this step (the lenient intervention rule).
    - `collision`: the ego touched another object this step.
    - `lap_progress`: fraction of the route driven (closed loops can exceed 1).
    - `speed_mps`: ego speed.
    - `executed_steering`: the steering the env really applied (after DART noise / clipping).
    - `lane_width_m`, `car_width_m`: width of the ego's lane and of the car.
    - `lane_invasion_m`: how far the car's edge is past its own lane's line, metres; negative
      while the car is wholly inside its lane. For the dashcam envs it is
      `|cross_track_m| + car_width_m / 2 - lane_width_m / 2`: the edge on the side the car
      drifts to (left: over the centre line into the next or oncoming lane; right: over the
      road's edge line). The strict intervention rule compares it with a threshold
      (default 0.5 m, about half the car in the next lane).
    - `route_complete` (open roads only): present and True on the step that ends the route.
    - `weather` (CARLA only): the `WeatherParameters` fields in use.
    """

    cross_track_m: float
    heading_error_rad: float
    curvature: float
    on_road: bool
    off_road: bool
    distance_m: float
    expert_steering: float
    depth: np.ndarray
    time_s: float
    dt_s: float
    crashed: bool
    collision: bool
    lap_progress: float
    speed_mps: float
    executed_steering: float
    lane_width_m: float
    car_width_m: float
    lane_invasion_m: float
    route_complete: NotRequired[bool]
    weather: NotRequired[dict]


#: Keys every info dict carries (`StepInfo` less its NotRequired keys).
REQUIRED_INFO_KEYS = tuple(sorted(StepInfo.__required_keys__))


def lane_invasion(cross_track_m: float, lane_width_m: float, car_width_m: float) -> float:
    """`StepInfo.lane_invasion_m` for a car `cross_track_m` off its lane centre (see there)."""
    return float(abs(cross_track_m) + car_width_m / 2.0 - lane_width_m / 2.0)


@runtime_checkable
class DrivingEnv(Protocol):
    """What the closed-loop drive needs from an env (no wrappers: see `as_driving_env`).

    - `reset(seed=, options=) -> (obs, info)`.
    - `step(action)` = `advance(action, nominal_dt)`.
    - `advance(action, dt_s) -> (obs, reward, terminated, truncated, info)`: one policy step
      lasting `dt_s` seconds (frame-timing faults give irregular steps).
    - `recover() -> (obs, info)`: put the car back on its lane centre at the nearest point,
      heading along the lane; the episode goes on (how interventions are counted).
    - `expert_action() -> float`: the privileged expert's steering for the current state
      (the same value as `info["expert_steering"]`).
    - `nominal_dt`: seconds per `step`; `image_hw`: (height, width) of `obs["image"]`;
      `camera`: JSON-safe camera description (height, width, fov_deg, height_m, pitch_deg,
      ...); `config`: the env's settings (JSON-safe; stored with recordings).
    """

    config: dict

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]: ...

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]: ...

    def advance(self, action: Any, dt_s: float) -> tuple[dict, float, bool, bool, dict]: ...

    def recover(self) -> tuple[dict, dict]: ...

    def expert_action(self) -> float: ...

    @property
    def nominal_dt(self) -> float: ...

    @property
    def image_hw(self) -> tuple[int, int]: ...

    @property
    def camera(self) -> dict: ...


class ContractError(TypeError, ValueError):
    """An env that does not satisfy `DrivingEnv` (a ValueError too: the CLI exits 2)."""


def _unwrap(env: Any) -> Any:
    """The innermost env under gymnasium wrappers (`Wrapper.env` chains)."""
    seen = 0
    while hasattr(env, "env") and not _has_contract_methods(env) and seen < 64:
        env = env.env
        seen += 1
    return env


def _has_contract_methods(env: Any) -> bool:
    return all(callable(getattr(type(env), m, None)) for m in ("advance", "recover", "expert_action"))


def missing_members(env: Any) -> list[str]:
    """Names of `DrivingEnv` members that `env` lacks or gets wrong (empty = satisfied)."""
    missing = []
    for name in CONTRACT_MEMBERS:
        try:
            value = getattr(env, name)
        except Exception:  # a property that cannot answer yet counts as missing
            missing.append(name)
            continue
        if name in ("reset", "step", "advance", "recover", "expert_action"):
            if not callable(value):
                missing.append(name)
        elif name == "nominal_dt":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (ok and math.isfinite(value) and value > 0):
                missing.append(f"nominal_dt (got {value!r}, want seconds > 0)")
        elif name == "image_hw":
            ok = (isinstance(value, tuple) and len(value) == 2
                  and all(isinstance(v, int) and v > 0 for v in value))
            if not ok:
                missing.append(f"image_hw (got {value!r}, want a (height, width) tuple of ints)")
        elif name == "camera":
            if not (isinstance(value, Mapping) and "height" in value and "width" in value):
                missing.append(f"camera (got {type(value).__name__}, want a dict with height, width)")
        elif name == "config" and not isinstance(value, Mapping):
            missing.append(f"config (got {type(value).__name__}, want a dict)")
    return missing


def as_driving_env(env: Any) -> DrivingEnv:
    """Unwrap gymnasium wrappers and check the contract; ContractError names what is missing.

    Wrappers (TimeLimit, OrderEnforcing, PassiveEnvChecker, ...) do not forward `advance`
    or `recover` in gymnasium 1.x, so the drive talks to the base env directly.
    """
    base = _unwrap(env)
    missing = missing_members(base)
    if missing:
        raise ContractError(
            f"env {type(base).__name__} does not satisfy envs.contract.DrivingEnv: missing or "
            f"invalid {', '.join(missing)} (see envs/contract.py for what each must be)"
        )
    return base


# ----------------------------------------------------------------------------- make_env


def _env_ids() -> list[str]:
    import gymnasium as gym

    import envs

    own = list(envs.ENV_IDS) + [envs.CARLA_ENV_ID]
    others = sorted(k for k in gym.registry if k.startswith("liquid_drive") and k not in own)
    return own + others


def _entry_class(env_id: str) -> Any:
    import gymnasium as gym

    ep = gym.registry[env_id].entry_point
    if callable(ep):
        return ep
    mod, _, attr = str(ep).partition(":")
    import importlib

    return getattr(importlib.import_module(mod), attr)


def _default_config(cls: Any) -> dict | None:
    """The env class's full default config, if it publishes one (`default_config`)."""
    fn = getattr(cls, "default_config", None)
    if fn is None:
        mod = __import__(cls.__module__, fromlist=["default_config"])
        fn = getattr(mod, "default_config", None)
    try:
        return dict(fn()) if callable(fn) else None
    except Exception:
        return None


def make_env(env_id: str, overrides: Mapping[str, Any] | None = None,
             camera: Mapping[str, Any] | None = None, *, max_steps: int | None = None) -> DrivingEnv:
    """Build a registered driving env and return it as a checked `DrivingEnv` (no wrappers).

    - `overrides`: config keys of that env (`Env.default_config()`); unknown keys raise
      ValueError listing the valid ones.
    - `camera`: camera keys merged over the env's camera (e.g. `{"height": 78, "width": 200}`).
    - `max_steps`: the env's own truncation (`config["max_steps"]`) is raised to at least
      this many steps, so that a drive of `max_steps` steps is never cut short.
    Bad ids raise ValueError listing the registered ones.
    """
    import gymnasium as gym

    import envs  # noqa: F401  (registers liquid_drive/*)

    if isinstance(env_id, str) and ":" in env_id:  # gymnasium's "module:EnvId": import, then make
        import importlib

        module, _, env_id = env_id.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"cannot import {module!r} for env {env_id!r}: {exc}") from exc
    ids = _env_ids()
    if not isinstance(env_id, str) or env_id not in gym.registry:
        raise ValueError(f"unknown env id {env_id!r}; choose one of {', '.join(ids)}")
    kw = dict(overrides or {})
    if camera is not None:
        if not isinstance(camera, Mapping):
            raise ValueError(f"camera must be a dict of camera keys, got {type(camera).__name__}")
        kw["camera"] = {**dict(kw.get("camera") or {}), **dict(camera)}
    cls = _entry_class(env_id)
    defaults = _default_config(cls)
    if defaults is not None:
        bad = sorted(set(kw) - set(defaults) - {"render_mode"})
        if bad:
            raise ValueError(f"unknown config key(s) {bad} for {env_id}; valid keys: "
                             f"{', '.join(sorted(defaults))}")
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps <= 0:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        base = kw.get("max_steps", (defaults or {}).get("max_steps"))
        if base is not None or defaults is not None:
            kw["max_steps"] = max(int(base or 0), int(max_steps))
    try:
        env = gym.make(env_id, disable_env_checker=True, **kw)
    except TypeError as exc:  # an env without default_config: bad keyword arguments
        raise ValueError(f"cannot make {env_id} with {sorted(kw)}: {exc}") from exc
    except gym.error.Error as exc:
        raise ValueError(f"cannot make env {env_id!r}: {exc}; choose one of {', '.join(ids)}") from exc
    base_env = as_driving_env(env)
    cfg = getattr(base_env, "config", None)
    if max_steps is not None and isinstance(cfg, dict) and "max_steps" in cfg:
        cfg["max_steps"] = max(int(cfg["max_steps"]), int(max_steps))  # envs without the key in kwargs
    return base_env
