"""Closed-loop evaluation under corruptions and timing faults → report.json / report.md / plots.

The policy drives the env with its recurrent state carried from frame to frame; each
camera frame is corrupted (using the env's depth map) before the policy sees it. When the
car leaves the road or collides it counts a crash, ``env.unwrapped.recover()`` puts it
back on the lane centre and the run goes on — the paper counted manual recoveries the
same way. Episodes (corruption × severity × episode) are independent tasks run in worker
processes; every task's randomness comes from seeds derived from ``seed``, the corruption,
severity and episode index, so the same seed gives the same report whatever the number of
workers. The same episodes (same env seeds) are used for every corruption: conditions are
paired. The expert drives the clean episodes and the timing-fault ones as a reference
(image corruptions do not reach it: it steers from privileged lane state).

Timing faults: under ``dropped_frames`` a dropped frame never reaches the policy, which
holds its last action; the next delivered frame comes with the true elapsed time since the
previous delivered one. Under ``jitter`` the world advances by a random interval
(``env.unwrapped.advance``). Policies with ``uses_time`` get the true elapsed seconds;
the others get only the frames.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from driving import corruptions as C
from driving.metrics import EpisodeRecorder, aggregate, lane_departure_threshold

DEFAULT_LANE_WIDTH_M = 4.0  # highway-env's default lane width
DEFAULT_CAR_WIDTH_M = 2.0  # highway-env's Vehicle.WIDTH


# ------------------------------------------------------------------------------ spec


@dataclass(frozen=True)
class EvalSpec:
    """Everything that determines an evaluation (and so its report)."""

    checkpoint: str | None
    env_id: str
    env_kwargs: dict = field(default_factory=dict)
    episodes: int = 5
    corruptions: tuple[str, ...] = ("none", "fog", "rain", "noise")
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    steps: int = 300
    seed: int = 0
    expert_reference: bool = True
    # Test hooks: picklable zero-argument callables that build the policy / env instead of
    # loading ``checkpoint`` / ``gym.make(env_id)``.
    policy_factory: Callable[[], Any] | None = None
    env_factory: Callable[[], Any] | None = None

    def validate(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {self.episodes}")
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        for name in self.corruptions:
            if name not in C.all_names():
                raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(C.all_names())}")
        if not self.severities:
            raise ValueError("no severities given; e.g. --severities 1,2,3,4,5")
        for s in self.severities:
            C.check_severity(s)


@dataclass(frozen=True)
class Task:
    driver: str  # "policy" or "expert"
    corruption: str
    severity: int
    episode: int


def conditions(spec: EvalSpec) -> list[tuple[str, int]]:
    """(corruption, severity) pairs: ``none`` once at 0; the others at each severity."""
    out: list[tuple[str, int]] = []
    for name in spec.corruptions:
        if name == "none":
            out.append(("none", 0))
        else:
            out.extend((name, s) for s in spec.severities if s > 0)
            if 0 in spec.severities and ("none", 0) not in out:
                out.insert(0, ("none", 0))
    return out


def expert_conditions(spec: EvalSpec) -> list[tuple[str, int]]:
    """The expert sees no image corruption: clean plus every requested timing fault."""
    out = [("none", 0)]
    out.extend(c for c in conditions(spec) if c[0] in C.TIMING_FAULTS)
    return out


def tasks(spec: EvalSpec) -> list[Task]:
    out = [Task("policy", c, s, i) for c, s in conditions(spec) for i in range(spec.episodes)]
    if spec.expert_reference:
        out += [Task("expert", c, s, i) for c, s in expert_conditions(spec) for i in range(spec.episodes)]
    return out


def episode_seed(seed: int, episode: int) -> int:
    """Env seed of episode ``episode``: shared by every corruption (paired conditions)."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


def fault_rng(seed: int, task: Task) -> np.random.Generator:
    """The corruption's random stream for one task (stable across runs and processes)."""
    return np.random.default_rng([seed, task.episode, zlib.crc32(task.corruption.encode()), task.severity])


# ------------------------------------------------------------------------------ drivers


class PolicyDriver:
    """Runs a `policies.Policy` one frame at a time, carrying its state."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.uses_time = bool(getattr(policy, "uses_time", False))
        self.h = None

    def reset(self) -> None:
        self.h = self.policy.initial_state(1)

    def act(self, frame: np.ndarray, dt_s: float, info: dict) -> float:
        steering, self.h = self.policy.step(frame, self.h, dt_s if self.uses_time else None)
        return float(np.asarray(steering, dtype=np.float64).reshape(-1)[0])


class ExpertDriver:
    """The privileged expert (``info["expert_steering"]``), acting at frame arrivals."""

    uses_time = False

    def reset(self) -> None:
        pass

    def act(self, frame: np.ndarray, dt_s: float, info: dict) -> float:
        return float(info["expert_steering"])


# ------------------------------------------------------------------------------ episode


def _lane_threshold(env: Any, info: dict | None = None) -> float:
    """Half lane width minus half car width: ``info["lane_width_m"]`` / ``info["car_width_m"]``
    if the env reports them, else its vehicle's lane and size, else highway-env defaults."""
    u = getattr(env, "unwrapped", env)
    lane_w, car_w = DEFAULT_LANE_WIDTH_M, DEFAULT_CAR_WIDTH_M
    vehicle = getattr(u, "vehicle", None)
    info = info or {}
    if "lane_width_m" in info:
        lane_w = float(info["lane_width_m"])
        car_w = float(info.get("car_width_m", getattr(vehicle, "WIDTH", car_w)))
    elif getattr(u, "track", None) is not None and hasattr(u.track, "lane_width"):
        lane_w = float(u.track.lane_width)  # liquid_drive envs: the track's lane width
        car_w = float(getattr(getattr(u, "ego", None), "WIDTH", car_w))
    elif vehicle is not None:
        car_w = float(getattr(vehicle, "WIDTH", car_w))
        lane = getattr(vehicle, "lane", None)
        if lane is not None and hasattr(lane, "width_at") and hasattr(lane, "local_coordinates"):
            try:
                s, _ = lane.local_coordinates(vehicle.position)
                lane_w = float(lane.width_at(s))
            except Exception:  # an exotic lane: keep the documented default
                pass
    return lane_departure_threshold(lane_w, car_w)


def _nominal_dt(env: Any, info: dict) -> float:
    dt = info.get("dt_s")
    if dt:
        return float(dt)
    cfg = getattr(getattr(env, "unwrapped", env), "config", {}) or {}
    return 1.0 / float(cfg.get("policy_frequency", 10))


def _crashed(info: dict) -> bool:
    return bool(info.get("crashed", False)) or not bool(info.get("on_road", True))


def run_episode(
    env: Any,
    driver: Any,
    corruption: str,
    severity: int,
    steps: int,
    env_seed: int,
    rng: np.random.Generator,
    frame_hook: Callable[[np.ndarray], None] | None = None,
) -> dict:
    """Drive one closed-loop episode of ``steps`` control steps; per-episode metrics.

    ``frame_hook`` (optional) sees every frame the driver receives (after corruption).
    """
    obs, info = env.reset(seed=env_seed)
    nominal = _nominal_dt(env, info)
    rec = EpisodeRecorder(_lane_threshold(env, info))
    driver.reset()
    image_corruption = corruption in C.CORRUPTIONS and severity > 0
    use_advance = corruption in C.TIMING_FAULTS and corruption == "jitter" and severity > 0
    gap = nominal  # elapsed since the previous delivered frame (the first: one interval)
    action = 0.0
    prev_distance = float(info.get("distance_m", 0.0))
    held = 0
    for k in range(steps):
        timing = C.timing_step(corruption, severity, rng, nominal)
        if timing.delivered or k == 0:
            frame = obs["image"]
            if image_corruption:
                frame = C.apply(corruption, frame, info["depth"], severity, rng)
            if frame_hook is not None:
                frame_hook(frame)
            action = float(np.clip(driver.act(frame, gap, info), -1.0, 1.0))
            gap = 0.0
        else:
            held += 1
        act = np.array([action], dtype=np.float32)
        if use_advance:
            obs, _, terminated, truncated, info = env.unwrapped.advance(act, timing.dt_s)
        else:
            obs, _, terminated, truncated, info = env.step(act)
        dt = float(info.get("dt_s") or timing.dt_s)
        gap += dt
        distance = float(info.get("distance_m", prev_distance))
        rec.step(info["cross_track_m"], distance - prev_distance, dt, action)
        prev_distance = distance
        if _crashed(info):
            rec.crash()
            obs, info = env.unwrapped.recover()
            prev_distance = float(info.get("distance_m", prev_distance))
        elif truncated or terminated:
            break  # the env's own end (time limit): the episode is shorter, metrics still hold
    out = rec.summary()
    out["seed"] = int(env_seed)
    out["held_frames"] = held
    return out


# ------------------------------------------------------------------------------ workers

_WORKER: dict[str, Any] = {}


def make_env(spec: EvalSpec) -> Any:
    if spec.env_factory is not None:
        return spec.env_factory()
    import gymnasium as gym

    import envs  # noqa: F401  (registers liquid_drive/* ids)

    kwargs = dict(spec.env_kwargs)
    try:
        env = gym.make(spec.env_id, max_episode_steps=spec.steps + 1, **kwargs)
    except gym.error.Error as exc:
        raise ValueError(f"cannot make env {spec.env_id!r}: {exc}") from exc
    cfg = getattr(env.unwrapped, "config", None)
    if isinstance(cfg, dict) and "max_steps" in cfg and "max_steps" not in kwargs:
        # The env's own truncation must not cut an episode shorter than --steps.
        cfg["max_steps"] = max(int(cfg["max_steps"]), spec.steps + 1)
    return env


def load_policy(spec: EvalSpec) -> tuple[Any, dict]:
    if spec.policy_factory is not None:
        p = spec.policy_factory()
        return p, {"policy": getattr(p, "name", "policy"), "image_hw": list(getattr(p, "image_hw", ()))}
    from policies.checkpoint import load_policy as _load

    policy, config = _load(spec.checkpoint)
    policy.eval()
    return policy, config


def _init_worker(spec: EvalSpec) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER.clear()
    _WORKER["spec"] = spec
    _WORKER["env"] = make_env(spec)
    policy, _ = load_policy(spec)
    _WORKER["policy"] = PolicyDriver(policy)
    _WORKER["expert"] = ExpertDriver()


def _run_task(item: tuple[int, Task]) -> tuple[int, dict]:
    index, task = item
    spec: EvalSpec = _WORKER["spec"]
    driver = _WORKER["policy"] if task.driver == "policy" else _WORKER["expert"]
    result = run_episode(
        _WORKER["env"], driver, task.corruption, task.severity, spec.steps,
        episode_seed(spec.seed, task.episode), fault_rng(spec.seed, task),
    )
    return index, result


def run_tasks(spec: EvalSpec, task_list: list[Task], workers: int = 1, progress: bool = True) -> list[dict]:
    """Run tasks (in order of ``task_list`` in the result) on ``workers`` processes."""
    from tqdm import tqdm

    bar = tqdm(total=len(task_list), desc="eval episodes", unit="ep", disable=not progress, file=sys.stderr)
    results: list[dict | None] = [None] * len(task_list)
    items = list(enumerate(task_list))
    try:
        if workers <= 1:
            import torch

            threads = torch.get_num_threads()
            _init_worker(spec)
            try:
                for item in items:
                    i, r = _run_task(item)
                    results[i] = r
                    bar.update()
            finally:
                _WORKER.clear()
                torch.set_num_threads(threads)
        else:
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            ctx = mp.get_context(method)
            with ctx.Pool(min(workers, len(items)), initializer=_init_worker, initargs=(spec,)) as pool:
                for i, r in pool.imap_unordered(_run_task, items, chunksize=1):
                    results[i] = r
                    bar.update()
    finally:
        bar.close()
    return [r for r in results if r is not None]


# ------------------------------------------------------------------------------ top level


def _image_hw_of_env(env: Any) -> tuple[int, int] | None:
    cfg = getattr(getattr(env, "unwrapped", env), "config", None) or {}
    cam = cfg.get("camera") if isinstance(cfg, dict) else None
    if isinstance(cam, dict) and "height" in cam and "width" in cam:
        return int(cam["height"]), int(cam["width"])
    space = getattr(env, "observation_space", None)
    try:
        shape = space["image"].shape
        return int(shape[0]), int(shape[1])
    except Exception:
        return None


def check_camera(env: Any, image_hw: Any, env_id: str) -> None:
    """The checkpoint's camera size must be the env's, or the CNN sees the wrong image."""
    if not image_hw:
        return
    want = tuple(int(v) for v in image_hw)
    got = _image_hw_of_env(env)
    if got is not None and got != want:
        raise ValueError(
            f"env {env_id} renders {got[0]}x{got[1]} frames but the checkpoint was trained on "
            f"{want[0]}x{want[1]}; pass --env-config '{{\"camera\": {{\"height\": {want[0]}, "
            f"\"width\": {want[1]}}}}}' (or evaluate on the env it was trained on)"
        )


def contact_frame(spec: EvalSpec, env: Any, warmup_steps: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """A representative clean frame and its depth: episode 0, after the expert drove a bit."""
    obs, info = env.reset(seed=episode_seed(spec.seed, 0))
    for _ in range(warmup_steps):
        a = np.array([float(np.clip(info.get("expert_steering", 0.0), -1, 1))], dtype=np.float32)
        obs, _, term, trunc, info = env.step(a)
        if _crashed(info):
            obs, info = env.unwrapped.recover()
        if term or trunc:
            break
    return np.array(obs["image"]), np.array(info["depth"], dtype=np.float32)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def build_report(spec: EvalSpec, policy_name: str, task_list: list[Task], results: list[dict], threshold_m: float) -> dict:
    """Aggregate per-episode results into the report.json structure (DESIGN.md §5 + extras)."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for t, r in zip(task_list, results):
        groups.setdefault((t.driver, t.corruption, t.severity), []).append(r)
    rows = [aggregate(c, s, groups[("policy", c, s)]) for c, s in conditions(spec)]
    report: dict[str, Any] = {
        "policy": policy_name,
        "checkpoint": str(spec.checkpoint) if spec.checkpoint else None,
        "env": spec.env_id,
        "results": rows,
    }
    if spec.expert_reference:
        report["reference"] = {
            "policy": "expert",
            "results": [aggregate(c, s, groups[("expert", c, s)]) for c, s in expert_conditions(spec)],
        }
    report["settings"] = {
        "episodes": spec.episodes,
        "steps": spec.steps,
        "seed": spec.seed,
        "env_kwargs": spec.env_kwargs,
        "episode_seeds": [episode_seed(spec.seed, i) for i in range(spec.episodes)],
        "corruptions": list(spec.corruptions),
        "severities": list(spec.severities),
        "lane_departure_threshold_m": threshold_m,
        "intervention_penalty_s": 6.0,
        "definitions": "docs/evaluation.md",
    }
    return _jsonable(report)


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def evaluate(spec: EvalSpec, out_dir: str | os.PathLike, workers: int = 1, progress: bool = True,
             plots: bool = True) -> dict:
    """Run the evaluation described by ``spec`` and write report.json, report.md, plots and
    the contact sheet into ``out_dir``. Returns the report dict."""
    from driving import report as R

    spec.validate()
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    out = Path(out_dir)
    policy, config = load_policy(spec)
    env = make_env(spec)
    cfg = getattr(env.unwrapped, "config", None)
    if (spec.env_factory is None and isinstance(cfg, dict) and cfg.get("split") is not None
            and "split" not in spec.env_kwargs):
        # Score on held-out roads unless the user asks otherwise (--env-config '{"split": ...}').
        env.close()
        spec = replace(spec, env_kwargs={**spec.env_kwargs, "split": "test"})
        env = make_env(spec)
    try:
        check_camera(env, config.get("image_hw") or getattr(policy, "image_hw", None), spec.env_id)
        _, info0 = env.reset(seed=episode_seed(spec.seed, 0))
        threshold = _lane_threshold(env, info0)
        sheet_frame = contact_frame(spec, env)
    finally:
        env.close()
    del policy
    task_list = tasks(spec)
    results = run_tasks(spec, task_list, workers=workers, progress=progress)
    report = build_report(spec, str(config.get("policy", "policy")), task_list, results, threshold)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    R.write_markdown(report, out / "report.md")
    if plots:
        R.plot_report(report, out)
        # Every image corruption (not only the evaluated ones): a cheap, complete overview.
        R.save_contact_sheet(out / "contact_sheet.png", sheet_frame[0], sheet_frame[1],
                             list(C.CORRUPTIONS), seed=spec.seed)
    return report


__all__ = ["EvalSpec", "Task", "evaluate", "run_episode", "tasks", "conditions", "episode_seed"]
