"""Record drives into a dataset: expert drives with DART noise, or policy drives (DAgger).

Why the split between `record_episode` and `collect`: the recording loop only needs an env,
a writer and something that picks the executed steering, so DAgger reuses it with a policy
as the action source while the label stays the expert's (`info["expert_steering"]`).
`collect` adds env creation, resume (seeds already recorded are skipped), worker processes
and the progress bar.

DART (Laskey et al. 2017): the executed steering is the chosen action plus N(0, σ²) noise,
the stored label is the expert's steering at that frame, so the data shows how to recover
from the small drifts a learned policy makes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import queue
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from driving.dataset import (
    OPTIONAL_STEPS,
    DatasetError,
    DatasetWriter,
)
from driving.errors import UserError


class ActionSource(Protocol):
    """Chooses the executed steering from the observation (and `info`, with the expert label).

    An optional `reset(seed)` method is called at the start of every episode (recurrent
    policies clear their state there).
    """

    def __call__(self, obs: Mapping[str, Any], info: Mapping[str, Any]) -> float: ...


@dataclass
class EpisodeResult:
    """One recorded episode; `episode_id` waits for its commit when that runs in background."""

    _id: Any
    seed: int
    length: int
    seconds: float

    @property
    def episode_id(self) -> int:
        return self._id if isinstance(self._id, int) else int(self._id.result())


@dataclass
class CollectResult:
    """What a `collect` call did."""

    out: str
    recorded: list[EpisodeResult] = field(default_factory=list)
    skipped_seeds: list[int] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def env_camera(env: Any) -> dict[str, Any]:
    """Camera description of an env: `config["camera"]`, or the image size of its obs space."""
    cfg = getattr(env.unwrapped, "config", None) or {}
    cam = cfg.get("camera") or {}
    if dataclasses.is_dataclass(cam) and not isinstance(cam, type):
        cam = dataclasses.asdict(cam)
    cam = dict(cam)
    if "height" not in cam or "width" not in cam:
        shape = env.observation_space["image"].shape
        cam.update(height=int(shape[0]), width=int(shape[1]))
    return cam


def env_config(env: Any) -> dict[str, Any]:
    """The env's config dict (JSON-safe copy), stored with every episode."""
    cfg = getattr(env.unwrapped, "config", None) or {}
    return json.loads(json.dumps(cfg, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return repr(o)


#: `info` keys (after a step) with the steering the env really applied (env-side DART noise,
#: CARLA's applied control), preferred over the commanded action when present.
EXECUTED_KEYS = ("executed_steering", "applied_steering")


def _nominal_dt(env: Any) -> float:
    cfg = getattr(env.unwrapped, "config", None) or {}
    f = cfg.get("policy_frequency")
    return 1.0 / float(f) if f else 0.1


def record_episode(
    env: Any,
    writer: DatasetWriter,
    *,
    seed: int,
    max_steps: int,
    action_source: ActionSource | Callable[..., float] | None = None,
    dart_noise: float = 0.0,
    rng: np.random.Generator | None = None,
    source: str = "expert",
    env_id: str | None = None,
    meta: Mapping[str, Any] | None = None,
    dt_jitter: float = 0.0,
    on_frames: Callable[[int], None] | None = None,
    wait: bool = True,
) -> EpisodeResult:
    """Drive one episode and commit it; returns its id and length.

    Step t stores the frame the agent saw, the expert label for that frame, the executed
    steering (action source, expert by default, plus recorder-side DART noise `dart_noise`,
    clipped to [-1, 1]; when the env reports what it applied, e.g. its own DART noise in
    `info["executed_steering"]`, that value), speed, time and the privileged state of
    `info`. The episode ends after `max_steps` frames or when the env terminates/truncates
    (the frame after the last step is not stored: it has no executed action).
    `dt_jitter` > 0 draws each frame interval from nominal·U(1−j, 1+j) via
    `env.unwrapped.advance` (irregular time for liquid cores).
    `wait=False` flushes and commits on the writer's committer thread (call `writer.wait()`).
    """
    if max_steps < 1:
        raise ValueError(f"steps must be >= 1, got {max_steps}")
    if not (math.isfinite(dart_noise) and dart_noise >= 0):
        raise ValueError(f"--dart-noise must be a finite std >= 0, got {dart_noise}")
    if not 0 <= dt_jitter < 1:
        raise ValueError(f"dt_jitter must be in [0, 1), got {dt_jitter}")
    rng = rng if rng is not None else np.random.default_rng(seed + 7_919)
    t0 = time.perf_counter()
    obs, info = env.reset(seed=int(seed))
    reset = getattr(action_source, "reset", None)
    if callable(reset):
        try:
            reset(seed)
        except TypeError:
            reset()
    unwrapped = env.unwrapped
    advance = getattr(unwrapped, "advance", None) if dt_jitter > 0 else None
    if dt_jitter > 0 and advance is None:
        raise ValueError("dt_jitter needs an env with `unwrapped.advance(action, dt_s)`")
    nominal = _nominal_dt(env)
    ep_meta = {
        "env_id": env_id or getattr(getattr(env, "spec", None), "id", None) or writer.env_id,
        "env_config": env_config(env),
        "seed": int(seed),
        "source": source,
        "dart_noise": float(dart_noise),
        "dt_jitter": float(dt_jitter),
        "max_steps": int(max_steps),
        **dict(meta or {}),
    }
    builder = writer.begin_episode(ep_meta)
    save_depth = writer.save_depth
    optional = [k for k in OPTIONAL_STEPS if k in info]
    executed_key = next((k for k in EXECUTED_KEYS if k in info), None)
    pending = 0
    ended_by = "steps"
    sim_time = 0.0
    try:
        for t in range(max_steps):
            label = float(info["expert_steering"])
            a = label if action_source is None else float(action_source(obs, info))
            if dart_noise > 0:
                a += float(rng.normal(0.0, dart_noise))
            a = min(1.0, max(-1.0, a))
            dt = float(info.get("dt_s", 0.0) or 0.0)
            if t == 0 and dt <= 0:
                dt = nominal
            sim_time = float(info["time_s"]) if "time_s" in info else sim_time + (dt if t else 0)
            steps = {
                "steering": label,
                "action": a,
                "speed": float(np.asarray(obs["speed"]).reshape(-1)[0]),
                "time_s": sim_time,
                "dt_s": dt,
            }
            for k in optional:
                steps[k] = info.get(k, 0)
            frame, depth = obs["image"], info.get("depth") if save_depth else None
            act = np.array([a], dtype=np.float32)
            # step before storing: the env may add its own DART noise, and the frame's record
            # must hold the steering that was really executed after it
            if advance is not None:
                step_dt = nominal * float(rng.uniform(1 - dt_jitter, 1 + dt_jitter))
                obs, _, terminated, truncated, info = advance(act, step_dt)
            else:
                obs, _, terminated, truncated, info = env.step(act)
            if executed_key is not None:
                steps["action"] = float(info[executed_key])
            builder.add(frame, steps, depth)
            pending += 1
            if on_frames is not None and pending >= 16:
                on_frames(pending)
                pending = 0
            if terminated or truncated:
                ended_by = "terminated" if terminated else "truncated"
                break
        builder.meta["ended_by"] = ended_by
        length = len(builder)
        ep_id = builder.commit() if wait else builder.commit_async()
    except BaseException:
        builder.abort()
        raise
    if on_frames is not None and pending:
        on_frames(pending)
    return EpisodeResult(ep_id, int(seed), length, time.perf_counter() - t0)


def make_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> Any:
    """`gymnasium.make` after importing our envs, with a clear error for an unknown id."""
    import gymnasium as gym

    with contextlib.suppress(ImportError):
        import envs  # noqa: F401  (registers liquid_drive/*)
    try:
        return gym.make(env_id, **dict(env_kwargs or {}))
    except gym.error.Error as exc:
        known = sorted(k for k in gym.registry if k.startswith("liquid_drive/"))
        raise UserError(f"unknown or unusable env {env_id!r} ({exc}); known: {known}") from exc


def make_collect_env(
    env_id: str, env_kwargs: Mapping[str, Any] | None, dart_noise: float, steps: int
) -> tuple[Any, dict[str, Any], float]:
    """Make the env for recording: returns (env, the kwargs used, recorder-side DART sigma).

    Envs with a `dart_noise` config key add the noise themselves (seeded with the episode,
    reported in `info["executed_steering"]`); for others the recorder adds it. An env
    `max_steps` below `steps` is raised so that episodes are not truncated early.
    """
    kwargs = dict(env_kwargs or {})
    env = make_env(env_id, kwargs)
    cfg = getattr(env.unwrapped, "config", None) or {}
    changed = False
    recorder_dart = dart_noise
    if "dart_noise" in cfg and "dart_noise" not in kwargs:
        if dart_noise > 0:
            kwargs["dart_noise"] = float(dart_noise)
            changed = True
        recorder_dart = 0.0
    if "max_steps" in cfg and "max_steps" not in kwargs and int(cfg["max_steps"]) < steps:
        kwargs["max_steps"] = int(steps)
        changed = True
    if changed:
        env.close()
        env = make_env(env_id, kwargs)
    return env, kwargs, recorder_dart


def _plan(
    writer: DatasetWriter, env_id: str, episodes: int, seed: int, source: str
) -> tuple[list[int], list[int]]:
    done = writer.recorded_keys()
    seeds = [seed + j for j in range(episodes)]
    todo = [s for s in seeds if (env_id, s, source) not in done]
    skipped = [s for s in seeds if (env_id, s, source) in done]
    return todo, skipped


def collect(
    env_id: str,
    episodes: int,
    steps: int,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    workers: int = 1,
    dart_noise: float = 0.0,
    save_depth: bool = False,
    dt_jitter: float = 0.0,
    env_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> CollectResult:
    """Record `episodes` expert episodes of at most `steps` frames into `out`.

    Episode j uses seed `seed + j`. Seeds already committed for this env (a killed or
    finished earlier run) are skipped, so rerunning the same command resumes; another
    `--seed` appends new episodes. With `workers > 1`, processes record whole episodes
    in parallel and each commits its own (atomic rename under a file lock).
    """
    if episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {episodes}")
    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if not (math.isfinite(dart_noise) and dart_noise >= 0):  # NaN passes `< 0` (and would reach index.json)
        raise UserError(f"--dart-noise must be a finite std >= 0 (e.g. 0.1), got {dart_noise}")
    env, env_kwargs, recorder_dart = make_collect_env(env_id, env_kwargs, dart_noise, steps)
    try:
        writer = DatasetWriter(out, env_id, env_config(env), env_camera(env), save_depth=save_depth)
        writer.cleanup_staging()
        todo, skipped = _plan(writer, env_id, episodes, seed, "expert")
        result = CollectResult(str(out), skipped_seeds=skipped)
        if skipped and progress:
            print(
                f"resuming: {len(skipped)} of {episodes} episodes (seeds {skipped[0]}..) are "
                f"already in {out}; recording {len(todo)}",
                file=sys.stderr,
            )
        if not todo:
            return result
        from tqdm import tqdm

        bar = tqdm(
            total=len(todo) * steps,
            unit="frame",
            desc=f"collect {env_id}",
            disable=not progress,
            dynamic_ncols=True,
            smoothing=0.1,
        )
        t0 = time.perf_counter()
        try:
            if workers == 1 or len(todo) == 1:
                for s in todo:
                    r = record_episode(
                        env,
                        writer,
                        seed=s,
                        max_steps=steps,
                        dart_noise=recorder_dart,
                        dt_jitter=dt_jitter,
                        env_id=env_id,
                        meta={"dart_noise": dart_noise},
                        on_frames=bar.update,
                        wait=False,  # fsync + rename overlap the next episode
                    )
                    _account(result, r, steps, bar)
                writer.wait()
            else:
                env.close()
                env = None
                _collect_parallel(
                    env_id,
                    todo,
                    steps,
                    str(out),
                    min(workers, len(todo)),
                    recorder_dart,
                    save_depth,
                    dt_jitter,
                    env_kwargs,
                    result,
                    dart_noise,
                    bar,
                )
        finally:
            bar.close()
            writer.close()
            result.seconds = time.perf_counter() - t0
        return result
    finally:
        if env is not None:
            env.close()


def _account(result: CollectResult, r: EpisodeResult, steps: int, bar: Any) -> None:
    result.recorded.append(r)
    result.frames += r.length
    if r.length < steps:  # ended early: drop the unrecorded remainder from the bar's total
        bar.total -= steps - r.length
        bar.refresh()


def _worker(
    env_id: str,
    seeds: Any,
    results: Any,
    steps: int,
    out: str,
    dart_noise: float,
    save_depth: bool,
    dt_jitter: float,
    env_kwargs: dict[str, Any],
    meta_dart: float,
) -> None:
    """Worker process: record episodes for seeds from the queue until it is empty."""
    _die_with_parent()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # workers share the cores: no oversubscription
    try:
        env = make_env(env_id, env_kwargs)
        writer = DatasetWriter(out, env_id, env_config(env), env_camera(env), save_depth=save_depth)
        prev: EpisodeResult | None = None
        while True:
            try:
                s = seeds.get_nowait()
            except queue.Empty:
                break
            r = record_episode(
                env,
                writer,
                seed=s,
                max_steps=steps,
                dart_noise=dart_noise,
                dt_jitter=dt_jitter,
                env_id=env_id,
                meta={"dart_noise": meta_dart},
                on_frames=lambda n: results.put(("frames", n)),
                wait=False,
            )
            if prev is not None:  # committed by now (the writer keeps one commit in line)
                results.put(("done", prev.episode_id, prev.seed, prev.length, prev.seconds))
            prev = r
        writer.close()
        if prev is not None:
            results.put(("done", prev.episode_id, prev.seed, prev.length, prev.seconds))
        env.close()
        results.put(("exit", os.getpid()))
    except BaseException as exc:  # report, the parent raises
        msg = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        results.put(("error", msg, isinstance(exc, ValueError)))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the parent dies (a killed collect leaves no orphan)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _collect_parallel(
    env_id: str,
    todo: list[int],
    steps: int,
    out: str,
    workers: int,
    dart_noise: float,
    save_depth: bool,
    dt_jitter: float,
    env_kwargs: dict[str, Any],
    result: CollectResult,
    meta_dart: float,
    bar: Any,
) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no inherited threads/locks from the parent
    seeds = ctx.Queue()
    for s in todo:
        seeds.put(s)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                env_id,
                seeds,
                results,
                steps,
                out,
                dart_noise,
                save_depth,
                dt_jitter,
                env_kwargs,
                meta_dart,
            ),
            daemon=True,
        )
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    alive = len(procs)
    error: tuple[str, bool] | None = None
    try:
        while alive:
            try:
                msg = results.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    # drain what is left, then stop
                    with contextlib.suppress(queue.Empty):
                        while True:
                            msg = results.get_nowait()
                            _handle(msg, result, steps, bar)
                    if error is None and len(result.recorded) < len(todo):
                        codes = [p.exitcode for p in procs]
                        error = (f"a collect worker died unexpectedly (exit codes {codes})", False)
                    break
                continue
            kind = msg[0]
            if kind == "exit":
                alive -= 1
            elif kind == "error":
                error = (msg[1], msg[2])
                alive -= 1
            else:
                _handle(msg, result, steps, bar)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    if error is not None:
        text, is_user = error
        n = len(result.recorded)
        if is_user:
            raise DatasetError(text)
        raise RuntimeError(f"{text} ({n} episodes were committed and are safe)")


def _handle(msg: tuple, result: CollectResult, steps: int, bar: Any) -> None:
    if msg[0] == "frames":
        bar.update(msg[1])
    elif msg[0] == "done":
        _, ep_id, seed, length, seconds = msg
        _account(result, EpisodeResult(ep_id, seed, length, seconds), steps, bar)
