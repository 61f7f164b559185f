"""CARLA 0.9.16 backend with the same observation/action/info contract as our dashcam envs.

Why a separate backend: CARLA renders real 3-D towns, weather and traffic, but needs a GPU
server program that cannot run on the machines we develop on. This module therefore imports
without ``carla``; the client is imported when the env is built (``pip install
'liquid-drive[carla]'``), and every part that needs no server (image decoding, lane geometry,
the expert, configuration, teardown) is plain code tested without one.

Conventions (the same as the highway-env dashcam envs): steering, cross-track error, heading
error and curvature are positive to the RIGHT. CARLA's world frame is left-handed (x forward,
y right, z up, yaw clockwise seen from above), so a vehicle at yaw ``psi`` has forward
``(cos psi, sin psi)`` and right ``(-sin psi, cos psi)``, and ``VehicleControl.steer > 0``
turns right.

Expert label (``info["expert_steering"]``):

* ``autopilot=True`` (recording with the expert): the Traffic Manager drives the ego car
  along our route (``TrafficManager.set_path``); the action given to ``step`` is ignored and
  the label is the steer the autopilot applied in the last simulator tick
  (``Vehicle.get_control().steer``, read after ``World.tick``; it lags the returned frame by
  one tick, ``sim_dt_s``).
* ``autopilot=False`` (the policy drives, e.g. DAgger or evaluation): the Traffic Manager
  computes controls only for vehicles it drives, and its ``get_next_action`` gives a road
  option and a waypoint, not a steering value, so it cannot label a policy-driven car. The
  label is then pure pursuit on the route's lane-centre waypoints (``pure_pursuit_steer``),
  normalised by the vehicle's maximum front-wheel angle, as CARLA's ``steer`` is.
"""

from __future__ import annotations

import atexit
import functools
import math
import queue
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.carla_weather import check_corruption, get_preset, weather_dict, weather_for
from envs.contract import lane_invasion

CARLA_VERSION = "0.9.16"
INSTALL_HINT = "pip install 'liquid-drive[carla]'  (or: pip install carla==0.9.16)"
SERVER_HINT = (
    "start a CARLA 0.9.16 server on a machine with a GPU, e.g. "
    "`./CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}` or "
    "`docker run --gpus all --net=host carlasim/carla:0.9.16 bash CarlaUE4.sh -RenderOffScreen "
    "-carla-rpc-port={port}`, then set CARLA_HOST / CARLA_PORT (see docs/carla.md)"
)
DEPTH_FAR_M = 1000.0  # CARLA's depth camera encodes 0..1000 m in 24 bits
DEFAULT_CAR_WIDTH_M = 2.0  # highway_env Vehicle.WIDTH; used until the bounding box is read


class CarlaConnectionError(ConnectionError):
    """No CARLA server answered; the message names host:port and how to start one."""


# ----------------------------------------------------------------------------- pure helpers


def _as_uint8_buffer(raw: Any, height: int, width: int) -> np.ndarray:
    buf = np.frombuffer(raw, dtype=np.uint8)
    if buf.size != height * width * 4:
        raise ValueError(
            f"camera buffer has {buf.size} bytes, expected {height}x{width}x4 = "
            f"{height * width * 4} (BGRA); check the camera's image_size_x/y"
        )
    return buf.reshape(height, width, 4)


def bgra_to_rgb(raw: Any, height: int, width: int) -> np.ndarray:
    """CARLA camera ``raw_data`` (BGRA bytes, row-major) -> contiguous uint8 (H, W, 3) RGB."""
    return np.ascontiguousarray(_as_uint8_buffer(raw, height, width)[:, :, 2::-1])


def decode_depth(raw: Any, height: int, width: int) -> np.ndarray:
    """CARLA depth camera ``raw_data`` -> float32 (H, W) metres.

    ``depth = (R + G*256 + B*256**2) / (256**3 - 1) * 1000`` (CARLA sensor reference); the
    24-bit integer is exact in float32 (< 2**24).
    """
    bgra = _as_uint8_buffer(raw, height, width).astype(np.uint32)
    code = bgra[:, :, 2] | (bgra[:, :, 1] << 8) | (bgra[:, :, 0] << 16)
    return code.astype(np.float32) * np.float32(DEPTH_FAR_M / (256**3 - 1))


def wrap_angle(a: float) -> float:
    """Angle wrapped to [-pi, pi)."""
    return (a + math.pi) % (2.0 * math.pi) - math.pi


def lane_errors(
    x: float, y: float, yaw: float, cx: float, cy: float, cyaw: float
) -> tuple[float, float]:
    """(cross_track_m, heading_error_rad) of a pose against a lane-centre pose; right = +.

    Angles in radians, CARLA's left-handed frame (right of heading = (-sin, cos)).
    """
    dx, dy = x - cx, y - cy
    cross = -dx * math.sin(cyaw) + dy * math.cos(cyaw)
    return cross, wrap_angle(yaw - cyaw)


def route_curvature(yaws: np.ndarray, s: np.ndarray, i: int, half_window: int = 2) -> float:
    """Signed curvature (1/m, right = +) at route index ``i`` from neighbouring waypoints."""
    lo, hi = max(0, i - half_window), min(len(s) - 1, i + half_window)
    if hi <= lo or s[hi] - s[lo] <= 0:
        return 0.0
    return wrap_angle(float(yaws[hi] - yaws[lo])) / float(s[hi] - s[lo])


def pure_pursuit_steer(
    x: float,
    y: float,
    yaw: float,
    tx: float,
    ty: float,
    wheelbase_m: float,
    max_steer_rad: float,
) -> float:
    """Pure-pursuit steering towards target (tx, ty), normalised to [-1, 1] like CARLA's steer.

    Pose is the rear axle; ``delta = atan(2 L sin(alpha) / d)`` with alpha the target's bearing.
    """
    dx, dy = tx - x, ty - y
    d = math.hypot(dx, dy)
    if d < 1e-6:
        return 0.0
    alpha = wrap_angle(math.atan2(dy, dx) - yaw)
    delta = math.atan2(2.0 * wheelbase_m * math.sin(alpha), d)
    return float(np.clip(delta / max_steer_rad, -1.0, 1.0))


def vehicle_geometry(physics_control: Any) -> tuple[float, float] | None:
    """(wheelbase m, max front-wheel angle rad) from ``Vehicle.get_physics_control()``.

    Wheels are ordered front-left, front-right, rear-left, rear-right; their positions are
    world coordinates in centimetres, ``max_steer_angle`` in degrees. ``None`` when the values
    are implausible (e.g. read before the car's first tick).
    """
    wheels = list(physics_control.wheels)
    if len(wheels) < 4:
        return None
    f, r = wheels[:2], wheels[2:4]
    dx = (f[0].position.x + f[1].position.x - r[0].position.x - r[1].position.x) / 2.0
    dy = (f[0].position.y + f[1].position.y - r[0].position.y - r[1].position.y) / 2.0
    wheelbase = math.hypot(dx, dy) / 100.0
    max_steer = math.radians(float(f[0].max_steer_angle))
    if 1.0 < wheelbase < 10.0 and 0.0 < max_steer < math.pi / 2:
        return wheelbase, max_steer
    return None


class SpeedController:
    """PI throttle/brake to hold a target speed, so the policy only steers."""

    def __init__(self, kp: float, ki: float, integral_limit: float = 5.0) -> None:
        self.kp, self.ki, self.limit = kp, ki, integral_limit
        self.integral = 0.0

    def reset(self) -> None:
        self.integral = 0.0

    def __call__(self, target: float, speed: float, dt: float) -> tuple[float, float]:
        """(throttle, brake), both in [0, 1]."""
        err = target - speed
        self.integral = float(np.clip(self.integral + err * dt, -self.limit, self.limit))
        u = self.kp * err + self.ki * self.integral
        return float(np.clip(u, 0.0, 1.0)), float(np.clip(-u, 0.0, 1.0))


# ----------------------------------------------------------------------------- configuration


def default_config() -> dict[str, Any]:
    """Every setting of ``liquid_drive/Carla-v0``; override any key by keyword."""
    import os

    return {
        "host": os.environ.get("CARLA_HOST", "localhost"),
        "port": int(os.environ.get("CARLA_PORT", "2000")),
        "tm_port": 8000,  # Traffic Manager port
        "timeout_s": 10.0,  # client RPC timeout (connect, tick, sensor wait)
        "town": "Town04",  # loaded if different; None keeps the server's map
        "vehicle": "vehicle.tesla.model3",
        # as envs.camera.CameraSpec: horizontal FOV, pitch_deg > 0 looks down
        "camera": {"height": 78, "width": 200, "fov_deg": 60.0, "height_m": 1.3, "pitch_deg": 4.0},
        "camera_forward_m": 0.8,  # camera ahead of the vehicle origin
        "policy_frequency": 10.0,  # Hz; step() lasts 1/policy_frequency s
        "sim_dt_s": 0.05,  # largest fixed delta per tick (synchronous mode)
        "target_speed_mps": 8.0,
        "speed_kp": 0.4,
        "speed_ki": 0.1,
        "weather": "ClearNoon",  # carla.WeatherParameters preset, copied
        "corruption": None,  # None | "fog" | "rain": native weather (envs.carla_weather)
        "severity": 0,
        "autopilot": False,  # True: the Traffic Manager drives, the action is ignored
        "route_length_m": 1000.0,
        "route_step_m": 1.0,
        "lookahead_m": 6.0,  # pure-pursuit expert
        "wheelbase_m": 2.9,  # used when the vehicle's physics control is unreadable
        "max_steer_deg": 70.0,  # likewise
        "max_steps": 3000,
        # as the highway envs: False = a crash is reported in info and the drive goes on
        # (callers recover()); True = terminated when the car leaves the driving lanes
        "terminate_off_road": False,
        "dart_noise": 0.0,  # std of Gaussian noise on the executed steering (label unchanged)
        "num_npc_vehicles": 0,  # other traffic, driven by the Traffic Manager
        "seed_spawn_points": True,  # random spawn point per reset (seeded)
    }


def _check_number(cfg: dict, key: str, lo: float, hi: float, lo_open: bool = True) -> None:
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"config[{key!r}] must be a finite number, got {v!r}")
    if (v <= lo if lo_open else v < lo) or v > hi:
        raise ValueError(f"config[{key!r}]={v} is out of range ({lo}, {hi}]")


def validate_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``default_config()`` updated by ``overrides`` and checked; a clear ``ValueError`` otherwise."""
    cfg = default_config()
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown CARLA env config keys {unknown}; valid keys: {sorted(cfg)}")
    cam_over = overrides.pop("camera", None)
    cfg.update(overrides)
    if cam_over is not None:
        if not isinstance(cam_over, dict):
            raise ValueError("config['camera'] must be a dict")
        bad = sorted(set(cam_over) - set(cfg["camera"]))
        if bad:
            raise ValueError(f"unknown camera keys {bad}; valid: {sorted(cfg['camera'])}")
        cfg["camera"] = {**cfg["camera"], **cam_over}
    cam = cfg["camera"]
    for k in ("height", "width"):
        v = cam[k]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"camera {k} must be a positive int, got {v!r}")
        cam[k] = int(v)
    fov = cam["fov_deg"]
    if isinstance(fov, bool) or not isinstance(fov, (int, float)) or not 0 < fov < 180:
        raise ValueError(f"camera fov_deg must be in (0, 180), got {fov!r}")
    _check_number(cam, "height_m", 0.0, 10.0)
    _check_number(cam, "pitch_deg", -90.0, 90.0, lo_open=False)
    if not isinstance(cfg["host"], str) or not cfg["host"]:
        raise ValueError("config['host'] must be a non-empty host name (or set CARLA_HOST)")
    for k in ("port", "tm_port"):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 65536:
            raise ValueError(f"config[{k!r}] must be a TCP port 1-65535, got {v!r}")
    _check_number(cfg, "timeout_s", 0.0, 3600.0)
    _check_number(cfg, "policy_frequency", 0.0, 1000.0)
    # CARLA's physics substepping needs fixed_delta_seconds <= 0.1 s (10 substeps of 10 ms).
    _check_number(cfg, "sim_dt_s", 0.0, 0.1)
    _check_number(cfg, "target_speed_mps", 0.0, 40.0)
    _check_number(cfg, "speed_kp", 0.0, 100.0, lo_open=False)
    _check_number(cfg, "speed_ki", 0.0, 100.0, lo_open=False)
    _check_number(cfg, "route_length_m", 0.0, 1e6)
    _check_number(cfg, "route_step_m", 0.0, 10.0)
    _check_number(cfg, "lookahead_m", 0.0, 100.0)
    _check_number(cfg, "wheelbase_m", 0.0, 20.0)
    _check_number(cfg, "max_steer_deg", 0.0, 90.0)
    _check_number(cfg, "dart_noise", 0.0, 2.0, lo_open=False)
    if cfg["autopilot"] is True and cfg["dart_noise"] > 0:
        raise ValueError(
            "dart_noise needs autopilot=False: the autopilot's steering cannot be perturbed"
        )
    for k in ("autopilot", "terminate_off_road", "seed_spawn_points"):
        if not isinstance(cfg[k], bool):
            raise ValueError(f"config[{k!r}] must be True or False, got {cfg[k]!r}")
    for k in ("max_steps", "num_npc_vehicles"):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if k == "max_steps" else 0):
            raise ValueError(f"config[{k!r}] must be a non-negative int, got {v!r}")
    if cfg["town"] is not None and not isinstance(cfg["town"], str):
        raise ValueError("config['town'] must be a map name like 'Town04' or None")
    if not isinstance(cfg["weather"], str):
        raise ValueError("config['weather'] must be a WeatherParameters preset name")
    check_corruption(cfg["corruption"], cfg["severity"])
    return cfg


def _import_carla() -> Any:
    """The ``carla`` module, or an ImportError that says how to install it."""
    try:
        import carla
    except ImportError as e:
        raise ImportError(
            f"liquid_drive/Carla-v0 needs the CARLA {CARLA_VERSION} Python client: "
            f"{INSTALL_HINT}. The simulator itself is a separate server program, see docs/carla.md."
        ) from e
    return carla


# ----------------------------------------------------------------------------- the env


def _teardown_at_exit(ref: weakref.ref) -> None:
    env = ref()
    if env is not None:
        env._teardown()


class CarlaEnv(gym.Env):
    """Ego car in a CARLA town, front RGB + depth cameras, steering action, privileged info.

    Lifecycle: the constructor connects (fails fast with the address if no server answers);
    ``reset`` switches the world and the Traffic Manager to synchronous mode with fixed
    Δt, sets the weather, spawns the ego car and its sensors; ``close`` (also run on any
    exception or Ctrl-C inside ``reset``/``step``/``recover``, and at interpreter exit)
    destroys every actor we spawned and switches synchronous mode off again. ``close`` is
    idempotent; a later ``reset`` sets everything up again.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode: str | None = None, **config: Any) -> None:
        self.config = validate_config(config)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        cam = self.config["camera"]
        h, w = cam["height"], cam["width"]
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (h, w, 3), np.uint8),
                "speed": spaces.Box(0.0, 50.0, (1,), np.float32),  # m/s, as the highway envs
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._carla = _import_carla()
        self._client: Any = None
        self._world: Any = None
        self._map: Any = None
        self._tm: Any = None
        self._orig_settings: tuple[bool, float | None] | None = None
        self._actors: list[Any] = []  # spawned by us, destroyed in reverse order
        self._sensors: list[Any] = []
        self._vehicle: Any = None
        self._episode_live = False
        self._torn_down = True
        self._controller = SpeedController(self.config["speed_kp"], self.config["speed_ki"])
        self._atexit_cb: Callable[[], None] | None = None
        self._connect()

    # -- connection and teardown -------------------------------------------------------

    def _connect(self) -> None:
        c, cfg = self._carla, self.config
        where = f"{cfg['host']}:{cfg['port']}"
        try:
            self._client = c.Client(cfg["host"], cfg["port"])
            self._client.set_timeout(float(cfg["timeout_s"]))
            server = self._client.get_server_version()
            if cfg["town"] is not None:
                # loading a town takes tens of seconds: wait longer than for a tick
                self._client.set_timeout(max(60.0, float(cfg["timeout_s"])))
                self._client.load_world_if_different(cfg["town"])
                self._client.set_timeout(float(cfg["timeout_s"]))
            self._world = self._client.get_world()
        except RuntimeError as e:
            msg = str(e)
            if "time-out" in msg or "timeout" in msg.lower() or "connect" in msg.lower():
                raise CarlaConnectionError(
                    f"no CARLA server answered at {where} within {cfg['timeout_s']} s: "
                    + SERVER_HINT.format(port=cfg["port"])
                    + f" (client said: {msg})"
                ) from e
            raise
        client_version = self._client.get_client_version()
        if str(server).split("-")[0] != str(client_version).split("-")[0]:
            warnings.warn(
                f"CARLA server {server} at {where} differs from client {client_version}; "
                "use matching versions",
                stacklevel=2,
            )
        self._map = self._world.get_map()

    def _track(self, actor: Any) -> Any:
        self._actors.append(actor)
        return actor

    def _teardown(self) -> list[str]:
        """Destroy our actors, switch synchronous mode off; idempotent, never raises.

        Each part runs even if another fails (the server may be gone); failures come back
        as messages and as one warning.
        """
        errors: list[str] = []
        if self._torn_down:
            return errors
        self._torn_down = True
        self._episode_live = False
        for sensor in list(self._sensors):
            try:
                sensor.stop()
            except Exception as e:  # noqa: BLE001 - keep tearing down
                errors.append(f"stop sensor: {e}")
        if self._vehicle is not None and self.config["autopilot"] and self._tm is not None:
            try:
                self._vehicle.set_autopilot(False, self.config["tm_port"])
            except Exception as e:  # noqa: BLE001
                errors.append(f"autopilot off: {e}")
        for actor in reversed(self._actors):
            try:
                actor.destroy()
            except Exception as e:  # noqa: BLE001
                errors.append(f"destroy actor {getattr(actor, 'id', '?')}: {e}")
        self._actors.clear()
        self._sensors.clear()
        self._vehicle = None
        if self._tm is not None:
            try:
                self._tm.set_synchronous_mode(False)
            except Exception as e:  # noqa: BLE001
                errors.append(f"traffic manager sync off: {e}")
        if self._world is not None and self._orig_settings is not None:
            try:
                settings = self._world.get_settings()
                settings.synchronous_mode = False
                settings.fixed_delta_seconds = self._orig_settings[1]
                self._world.apply_settings(settings)
            except Exception as e:  # noqa: BLE001
                errors.append(f"synchronous mode off: {e}")
        if self._atexit_cb is not None:
            atexit.unregister(self._atexit_cb)
            self._atexit_cb = None
        if errors:
            warnings.warn("CARLA teardown incomplete: " + "; ".join(errors), stacklevel=2)
        return errors

    def close(self) -> None:
        """Destroy our actors and switch synchronous mode off (safe to call many times)."""
        self._teardown()

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn``; on any exception (KeyboardInterrupt included) tear down, then re-raise."""
        try:
            return fn(*args)
        except BaseException:
            self._teardown()
            raise

    # -- episode setup -------------------------------------------------------------------

    def _set_sync(self, delta: float) -> None:
        settings = self._world.get_settings()
        if self._orig_settings is None:
            self._orig_settings = (
                bool(settings.synchronous_mode),
                settings.fixed_delta_seconds,
            )
        settings.synchronous_mode = True
        settings.fixed_delta_seconds = delta
        self._world.apply_settings(settings)
        self._delta = delta

    def _setup_world(self) -> None:
        c, cfg = self._carla, self.config
        self._torn_down = False
        self._atexit_cb = functools.partial(_teardown_at_exit, weakref.ref(self))
        atexit.register(self._atexit_cb)
        self._tm = self._client.get_trafficmanager(cfg["tm_port"])
        self._set_sync(float(cfg["sim_dt_s"]))
        self._tm.set_synchronous_mode(True)
        preset = get_preset(c.WeatherParameters, cfg["weather"])
        self.weather = weather_for(preset, cfg["corruption"], cfg["severity"])
        self._world.set_weather(self.weather)

    def _destroy_episode_actors(self) -> None:
        for sensor in self._sensors:
            try:
                sensor.stop()
            except Exception:  # noqa: BLE001 - replaced below anyway
                pass
        for actor in reversed(self._actors):
            actor.destroy()
        self._actors.clear()
        self._sensors.clear()
        self._vehicle = None

    def _spawn(self, seed_int: int) -> None:
        c, cfg = self._carla, self.config
        lib = self._world.get_blueprint_library()
        spawn_points = list(self._map.get_spawn_points())
        if not spawn_points:
            raise RuntimeError("the CARLA map has no spawn points")
        order = (
            self.np_random.permutation(len(spawn_points))
            if cfg["seed_spawn_points"]
            else np.arange(len(spawn_points))
        )
        vbp = lib.find(cfg["vehicle"])
        if vbp.has_attribute("role_name"):
            vbp.set_attribute("role_name", "hero")
        vehicle = None
        for i in order:
            sp = spawn_points[int(i)]
            wp = self._map.get_waypoint(sp.location, True, c.LaneType.Driving)
            tf = c.Transform(
                c.Location(
                    wp.transform.location.x, wp.transform.location.y, wp.transform.location.z + 0.3
                ),
                c.Rotation(0.0, wp.transform.rotation.yaw, 0.0),
            )
            vehicle = self._world.try_spawn_actor(vbp, tf)
            if vehicle is not None:
                start_wp = wp
                break
        if vehicle is None:
            raise RuntimeError("no free spawn point for the ego vehicle (all occupied)")
        self._vehicle = self._track(vehicle)
        self._wheelbase = float(cfg["wheelbase_m"])  # until the first tick, see _reset
        self._max_steer = math.radians(cfg["max_steer_deg"])
        self._car_width = DEFAULT_CAR_WIDTH_M  # until the bounding box is read

        cam = cfg["camera"]
        cam_tf = c.Transform(
            c.Location(cfg["camera_forward_m"], 0.0, cam["height_m"]),
            c.Rotation(-cam["pitch_deg"], 0.0, 0.0),  # CARLA pitch > 0 looks up; ours looks down
        )
        self._queues: dict[str, queue.Queue] = {}
        for name, bp_id in (("rgb", "sensor.camera.rgb"), ("depth", "sensor.camera.depth")):
            bp = lib.find(bp_id)
            bp.set_attribute("image_size_x", str(cam["width"]))
            bp.set_attribute("image_size_y", str(cam["height"]))
            bp.set_attribute("fov", str(float(cam["fov_deg"])))
            sensor = self._track(self._world.spawn_actor(bp, cam_tf, attach_to=vehicle))
            self._sensors.append(sensor)
            q: queue.Queue = queue.Queue()
            self._queues[name] = q
            sensor.listen(q.put)
        self._events: queue.Queue = queue.Queue()  # (kind, event) from collision / lane invasion
        for kind, bp_id in (
            ("collision", "sensor.other.collision"),
            ("lane", "sensor.other.lane_invasion"),
        ):
            sensor = self._track(
                self._world.spawn_actor(lib.find(bp_id), c.Transform(), attach_to=vehicle)
            )
            self._sensors.append(sensor)
            sensor.listen(lambda ev, k=kind: self._events.put((k, ev)))

        self._plan_route(start_wp, seed_int)
        if cfg["autopilot"]:
            vehicle.set_autopilot(True, cfg["tm_port"])
            tm = self._tm
            tm.ignore_lights_percentage(vehicle, 100.0)
            tm.ignore_signs_percentage(vehicle, 100.0)
            tm.auto_lane_change(vehicle, False)
            tm.set_desired_speed(vehicle, cfg["target_speed_mps"] * 3.6)  # km/h
            step = max(1, int(round(10.0 / cfg["route_step_m"])))
            path = [
                c.Location(float(x), float(y), float(z))
                for x, y, z in zip(self._rx[::step], self._ry[::step], self._rz[::step])
            ]
            tm.set_path(vehicle, path)
        for _ in range(cfg["num_npc_vehicles"]):
            bp = lib.find(cfg["vehicle"])
            if bp.has_attribute("role_name"):
                bp.set_attribute("role_name", "autopilot")
            sp = spawn_points[int(self.np_random.integers(len(spawn_points)))]
            npc = self._world.try_spawn_actor(bp, sp)
            if npc is not None:
                self._track(npc).set_autopilot(True, cfg["tm_port"])

    def _read_vehicle_geometry(self) -> None:
        """Wheelbase and max steer angle from the physics control, else the config values."""
        try:
            geometry = vehicle_geometry(self._vehicle.get_physics_control())
        except Exception:  # noqa: BLE001 - fall back to the configured geometry
            geometry = None
        if geometry is not None:
            self._wheelbase, self._max_steer = geometry
        try:  # the car's width for the lane-invasion measure (half-extent y, metres)
            width = 2.0 * float(self._vehicle.bounding_box.extent.y)
        except Exception:  # noqa: BLE001 - not readable (e.g. fakes): highway-env's car width
            width = DEFAULT_CAR_WIDTH_M
        self._car_width = width if 0.5 < width < 5.0 else DEFAULT_CAR_WIDTH_M

    def _plan_route(self, start_wp: Any, seed_int: int) -> None:
        """Lane-centre waypoints every ``route_step_m`` from the start; branches chosen seeded."""
        cfg = self.config
        step = float(cfg["route_step_m"])
        n = int(math.ceil((cfg["route_length_m"] + 3.0 * cfg["lookahead_m"] + 10.0) / step)) + 1
        rng = np.random.default_rng(seed_int)
        wps = [start_wp]
        for _ in range(n - 1):
            nxt = list(wps[-1].next(step))
            if not nxt:
                break
            wps.append(nxt[int(rng.integers(len(nxt)))])
        loc = [w.transform.location for w in wps]
        self._rx = np.array([p.x for p in loc])
        self._ry = np.array([p.y for p in loc])
        self._rz = np.array([p.z for p in loc])
        self._ryaw = np.radians([w.transform.rotation.yaw for w in wps])
        self._rwidth = np.array([float(w.lane_width) for w in wps])
        seg = np.hypot(np.diff(self._rx), np.diff(self._ry))
        self._rs = np.concatenate([[0.0], np.cumsum(seg)])
        self._route_len = float(min(cfg["route_length_m"], self._rs[-1]))
        self._ridx = 0

    # -- measurement ---------------------------------------------------------------------

    def _pose(self) -> tuple[float, float, float, float]:
        tf = self._vehicle.get_transform()
        v = self._vehicle.get_velocity()
        speed = math.sqrt(v.x * v.x + v.y * v.y + v.z * v.z)
        return tf.location.x, tf.location.y, math.radians(tf.rotation.yaw), speed

    def _nearest_route_index(self, x: float, y: float, window: int | None = None) -> int:
        if window is None:
            lo, hi = 0, len(self._rx)
        else:
            lo = max(0, self._ridx - 5)
            hi = min(len(self._rx), self._ridx + window)
        d2 = (self._rx[lo:hi] - x) ** 2 + (self._ry[lo:hi] - y) ** 2
        return lo + int(np.argmin(d2))

    def _rear_axle(self, x: float, y: float, yaw: float) -> tuple[float, float]:
        # The vehicle origin is at its centre; the rear axle is half a wheelbase behind.
        return x - 0.5 * self._wheelbase * math.cos(yaw), y - 0.5 * self._wheelbase * math.sin(yaw)

    def pure_pursuit_steering(self) -> float:
        """The pure-pursuit expert's steer for the current state (lane centre of the route)."""
        x, y, yaw, _ = self._pose()
        rx, ry = self._rear_axle(x, y, yaw)
        i = self._nearest_route_index(x, y, window=60)
        s_target = self._rs[i] + self.config["lookahead_m"]
        j = min(int(np.searchsorted(self._rs, s_target)), len(self._rs) - 1)
        return pure_pursuit_steer(
            rx, ry, yaw, self._rx[j], self._ry[j], self._wheelbase, self._max_steer
        )

    def expert_action(self) -> float:
        """Same value as ``info['expert_steering']``; ``envs.expert.expert_steering`` calls it."""
        if self.config["autopilot"]:
            return float(self._last_autopilot_steer)
        return self.pure_pursuit_steering()

    expert_steering = expert_action

    def _read_sensor(self, name: str, frame: int) -> Any:
        q = self._queues[name]
        timeout = float(self.config["timeout_s"])
        while True:
            try:
                data = q.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(
                    f"no {name} camera frame {frame} from the CARLA server within {timeout} s"
                ) from None
            if data.frame >= frame:
                if data.frame > frame:
                    raise RuntimeError(f"{name} camera skipped frame {frame} (got {data.frame})")
                return data

    def _observe(self, frame: int, dt: float) -> tuple[dict, dict]:
        cam = self.config["camera"]
        h, w = cam["height"], cam["width"]
        rgb = bgra_to_rgb(self._read_sensor("rgb", frame).raw_data, h, w)
        depth = decode_depth(self._read_sensor("depth", frame).raw_data, h, w)
        collision, off_road_mark = False, False
        lmt = self._carla.LaneMarkingType
        off_types = {lmt.Curb, lmt.Grass}  # crossing these leaves the road
        while True:
            try:
                kind, ev = self._events.get_nowait()
            except queue.Empty:
                break
            if kind == "collision":
                collision = True
            elif any(m.type in off_types for m in getattr(ev, "crossed_lane_markings", [])):
                off_road_mark = True
        x, y, yaw, speed = self._pose()
        self._ridx = self._nearest_route_index(x, y, window=60)
        i = self._ridx
        cross, head = lane_errors(x, y, yaw, self._rx[i], self._ry[i], self._ryaw[i])
        loc = self._vehicle.get_transform().location
        on_road = self._map.get_waypoint(loc, False, self._carla.LaneType.Driving) is not None
        crashed = bool(collision or off_road_mark or not on_road)
        route_s = float(self._rs[i])
        info = {
            "cross_track_m": float(cross),
            "heading_error_rad": float(head),
            "curvature": float(route_curvature(self._ryaw, self._rs, i)),
            "on_road": bool(on_road),
            "distance_m": float(self._odometer),
            "expert_steering": float(self.expert_steering()),
            "depth": depth,
            "time_s": float(self._time),
            "dt_s": float(dt),
            "crashed": crashed,
            "collision": bool(collision),
            "executed_steering": float(self._vehicle.get_control().steer),
            "speed_mps": float(speed),
            "lap_progress": float(min(1.0, route_s / self._route_len))
            if self._route_len > 0
            else 0.0,
            "lane_width_m": float(self._rwidth[i]),
            "car_width_m": float(self._car_width),
            "off_road": not on_road,
            "lane_invasion_m": lane_invasion(cross, float(self._rwidth[i]), self._car_width),
            "weather": weather_dict(self.weather),
        }
        obs = {"image": rgb, "speed": np.array([speed], dtype=np.float32)}
        self._last_rgb = rgb
        return obs, info

    # -- simulation ----------------------------------------------------------------------

    def _tick(self, steer: float | None, delta: float) -> int:
        """One synchronous tick of ``delta`` s; apply our control first unless autopilot drives."""
        if abs(delta - self._delta) > 1e-9:
            self._set_sync(delta)
        if not self.config["autopilot"]:
            _, _, _, speed = self._pose()
            throttle, brake = self._controller(self.config["target_speed_mps"], speed, delta)
            self._vehicle.apply_control(
                self._carla.VehicleControl(
                    throttle=throttle, steer=float(steer or 0.0), brake=brake
                )
            )
        try:
            frame = int(self._world.tick(float(self.config["timeout_s"])))
        except RuntimeError as e:
            if "time-out" not in str(e):
                raise
            where = f"{self.config['host']}:{self.config['port']}"
            raise CarlaConnectionError(
                f"CARLA server at {where} stopped answering within {self.config['timeout_s']} s "
                f"(raise timeout_s for slow maps or a busy GPU): {e}"
            ) from e
        if self.config["autopilot"]:
            self._last_autopilot_steer = float(self._vehicle.get_control().steer)
        self._time += delta
        self._odometer += self._pose()[3] * delta
        return frame

    def _check_action(self, action: Any) -> float:
        a = np.asarray(action, dtype=np.float64)
        if a.shape not in ((1,), ()):
            raise ValueError(f"steering action must have shape (1,), got {a.shape}")
        v = float(a.reshape(-1)[0])
        if not math.isfinite(v):
            raise ValueError(f"steering action must be finite, got {v}")
        return float(np.clip(v, -1.0, 1.0))

    def _reset(self, seed: int | None) -> tuple[dict, dict]:
        if self._torn_down:
            self._setup_world()
        else:
            self._destroy_episode_actors()
        seed_int = int(self.np_random.integers(2**31))
        if self.config["autopilot"]:
            self._tm.set_random_device_seed(seed_int)
        self._controller.reset()
        self._time, self._steps, self._last_autopilot_steer = 0.0, 0, 0.0
        self._odometer = 0.0
        self._spawn(seed_int)
        frame = self._tick(0.0, float(self.config["sim_dt_s"]))
        self._read_vehicle_geometry()  # wheel positions are valid once the car was ticked
        self._time = self._odometer = 0.0
        self._episode_live = True
        return self._observe(frame, 1.0 / float(self.config["policy_frequency"]))

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        return self._guarded(self._reset, seed)

    def _advance(self, action: Any, dt_s: float) -> tuple[dict, float, bool, bool, dict]:
        if not self._episode_live:
            raise RuntimeError(
                "call reset() first (the env is closed or was torn down after an error)"
            )
        steer = self._check_action(action)
        noise = float(self.config["dart_noise"])
        if noise > 0:  # DART: perturb what is executed; info["expert_steering"] stays clean
            steer = float(np.clip(steer + self.np_random.normal(0.0, noise), -1.0, 1.0))
        if not (isinstance(dt_s, (int, float)) and math.isfinite(dt_s) and dt_s > 0):
            raise ValueError(f"dt_s must be a positive number of seconds, got {dt_s!r}")
        n = max(1, int(math.ceil(dt_s / self.config["sim_dt_s"] - 1e-9)))
        delta = dt_s / n  # exact elapsed time: n ticks of equal length <= sim_dt_s
        frame = 0
        for _ in range(n):
            frame = self._tick(steer, delta)
        self._steps += 1
        obs, info = self._observe(frame, dt_s)
        half = 0.5 * info["lane_width_m"]
        reward = 1.0 - min(1.0, (info["cross_track_m"] / half) ** 2) - float(info["crashed"])
        terminated = bool(self.config["terminate_off_road"] and not info["on_road"])
        if info["lap_progress"] >= 1.0:
            terminated = True  # the route is finished, as the highway envs' open roads
            info["route_complete"] = True
        truncated = self._steps >= self.config["max_steps"]
        return obs, float(reward), terminated, truncated, info

    def advance(self, action: Any, dt_s: float) -> tuple[dict, float, bool, bool, dict]:
        """One policy step lasting ``dt_s`` seconds (split into equal ticks <= ``sim_dt_s``)."""
        return self._guarded(self._advance, action, dt_s)

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        return self.advance(action, 1.0 / float(self.config["policy_frequency"]))

    def _recover(self) -> tuple[dict, dict]:
        if not self._episode_live:
            raise RuntimeError("call reset() first")
        c = self._carla
        x, y, _, _ = self._pose()
        i = self._nearest_route_index(x, y, window=60)
        self._ridx = i
        tf = c.Transform(
            c.Location(float(self._rx[i]), float(self._ry[i]), float(self._rz[i]) + 0.3),
            c.Rotation(0.0, math.degrees(float(self._ryaw[i])), 0.0),
        )
        self._vehicle.set_transform(tf)
        v, yaw = float(self.config["target_speed_mps"]), float(self._ryaw[i])
        # go on at the target speed along the lane, as a driver who took over would
        self._vehicle.set_target_velocity(c.Vector3D(v * math.cos(yaw), v * math.sin(yaw), 0.0))
        self._vehicle.set_target_angular_velocity(c.Vector3D(0.0, 0.0, 0.0))
        self._controller.reset()
        dt = float(self.config["sim_dt_s"])
        frame = self._tick(0.0, dt)
        while not self._events.empty():  # contacts caused by the teleport itself do not count
            self._events.get_nowait()
        return self._observe(frame, dt)

    def recover(self) -> tuple[dict, dict]:
        """Teleport to the nearest lane-centre waypoint of the route, heading along the lane."""
        return self._guarded(self._recover)

    # -- the contract (envs.contract.DrivingEnv) -------------------------------------------

    @property
    def nominal_dt(self) -> float:
        """Seconds per ``step``."""
        return 1.0 / float(self.config["policy_frequency"])

    @property
    def image_hw(self) -> tuple[int, int]:
        cam = self.config["camera"]
        return int(cam["height"]), int(cam["width"])

    @property
    def camera(self) -> dict[str, Any]:
        """JSON-safe camera description (as the dashcam envs', plus where it is mounted)."""
        return {**self.config["camera"], "forward_m": float(self.config["camera_forward_m"])}

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return getattr(self, "_last_rgb", None)
        return None

    def __del__(self) -> None:
        try:
            self._teardown()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
