"""Record drives into a dataset: expert drives with DART noise, or policy drives (DAgger).

`record_episode` folds the shared closed-loop drive (`driving.rollout.drive`: one loop, one
intervention rule, one recovery) into dataset rows (`dataset_row`); DAgger calls the same
function with its policy/expert mixture as the actor, so expert and policy drives store
the same columns (the label is always the expert's, the action the executed steering).
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
    validate_meta,
)
from driving.errors import UserError
from driving.interventions import STRICT, InterventionRule
from driving.rollout import Actor, ExpertActor, NoisyActor, Step, drive, jittered_timing
from envs.contract import as_driving_env
from envs.contract import make_env as make_driving_env


class ActionSource(Protocol):
    """A plain callable that chooses the executed steering from the observation and `info`
    (kept for scripts written before `driving.rollout.Actor`; an Actor is preferred).

    An optional `reset(seed)` method is called at the start of every episode.
    """

    def __call__(self, obs: Mapping[str, Any], info: Mapping[str, Any]) -> float: ...


class _CallableActor:
    """An `ActionSource` callable as a `driving.rollout.Actor`."""

    def __init__(self, fn: Any, seed: int) -> None:
        self.fn, self.seed = fn, seed

    def reset(self) -> None:
        reset = getattr(self.fn, "reset", None)
        if callable(reset):
            try:
                reset(self.seed)
            except TypeError:
                reset()

    def act(self, frame: np.ndarray, dt_s: float, info: Mapping[str, Any]) -> float:
        return float(self.fn({"image": frame, "speed": np.array([info.get("speed_mps", 0.0)], np.float32)}, info))


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
    """Camera description of an env (`DrivingEnv.camera`, JSON-safe)."""
    return dict(as_driving_env(env).camera)


def env_config(env: Any) -> dict[str, Any]:
    """The env's config dict (a plain-JSON copy), stored with every episode. Non-finite
    numbers are kept, so that the writer's `validate_meta` refuses them by name instead of
    storing null."""
    return json.loads(json.dumps(as_driving_env(env).config, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    return repr(o)


def dataset_row(step: Step, optional: list[str], nominal_dt: float) -> dict[str, Any]:
    """The dataset row of one control step (docs/dataset.md): the expert's label for the
    frame, the steering the env executed after it, speed, time, the frame's arrival
    interval, and the privileged state of the frame's `info` — the same for expert drives
    (`collect`) and policy drives (DAgger)."""
    info, obs = step.info, step.obs
    dt = float(info.get("dt_s", 0.0) or 0.0)
    row = {
        "steering": float(info["expert_steering"]),
        "action": float(step.executed),
        "speed": float(np.asarray(obs["speed"]).reshape(-1)[0]),
        "time_s": float(info.get("time_s", 0.0)),
        "dt_s": dt if dt > 0 else nominal_dt,
    }
    for k in optional:
        row[k] = info.get(k, 0)
    return row


def record_episode(
    env: Any,
    writer: DatasetWriter,
    *,
    seed: int,
    max_steps: int,
    action_source: ActionSource | Callable[..., float] | None = None,
    actor: Actor | None = None,
    dart_noise: float = 0.0,
    rng: np.random.Generator | None = None,
    source: str = "expert",
    env_id: str | None = None,
    meta: Mapping[str, Any] | None = None,
    dt_jitter: float = 0.0,
    rule: InterventionRule = STRICT,
    recover: bool = True,
    on_frames: Callable[[int], None] | None = None,
    wait: bool = True,
) -> EpisodeResult:
    """Drive one episode with the shared closed-loop drive (`driving.rollout.drive`) and
    commit it; returns its id and length.

    The actor is the expert by default, or ``actor`` (a `driving.rollout.Actor`, e.g.
    DAgger's policy/expert mixture), or ``action_source`` (a callable of (obs, info)).
    Recorder-side DART noise ``dart_noise`` is added to the actor's steering (envs that add
    it themselves report it in ``info["executed_steering"]``). Row t (`dataset_row`) holds
    the frame the actor saw, the expert's label for it and the steering the env executed.
    An intervention (the shared rule) is counted in the episode's metadata and, with
    ``recover``, the car is put back on its lane as in evaluation. The episode ends after
    ``max_steps`` frames or when the env ends it. ``dt_jitter`` > 0 draws each frame
    interval from nominal·U(1−j, 1+j) (irregular time for liquid cores). ``wait=False``
    flushes and commits on the writer's committer thread (call `writer.wait()`).
    """
    if max_steps < 1:
        raise ValueError(f"steps must be >= 1, got {max_steps}")
    if not (math.isfinite(dart_noise) and dart_noise >= 0):
        raise ValueError(f"DART noise must be a finite std >= 0, got {dart_noise}")
    if not 0 <= dt_jitter < 1:
        raise ValueError(f"dt_jitter must be in [0, 1), got {dt_jitter}")
    if actor is not None and action_source is not None:
        raise ValueError("give an actor or an action_source, not both")
    rng = rng if rng is not None else np.random.default_rng(seed + 7_919)
    t0 = time.perf_counter()
    denv = as_driving_env(env)
    chosen: Actor = actor or (ExpertActor() if action_source is None else _CallableActor(action_source, seed))
    if dart_noise > 0:
        chosen = NoisyActor(chosen, dart_noise, rng)
    nominal = float(denv.nominal_dt)
    ep_meta = {
        "env_id": env_id or getattr(getattr(env, "spec", None), "id", None) or writer.env_id,
        "env_config": env_config(denv),
        "seed": int(seed),
        "source": source,
        "dart_noise": float(dart_noise),
        "dt_jitter": float(dt_jitter),
        "max_steps": int(max_steps),
        **rule.settings(),
        **dict(meta or {}),
    }
    builder = writer.begin_episode(ep_meta)
    save_depth = writer.save_depth
    optional: list[str] | None = None
    pending = 0
    ended_by = "steps"
    causes: dict[str, int] = {}
    try:
        run = drive(denv, chosen, max_steps, seed=int(seed), rng=rng,
                    timing=jittered_timing(dt_jitter) if dt_jitter > 0 else None, rule=rule, recover=recover)
        for st in run:
            if optional is None:
                optional = [k for k in OPTIONAL_STEPS if k in st.info]
            depth = st.info.get("depth") if save_depth else None
            builder.add(st.obs["image"], dataset_row(st, optional, nominal), depth)
            if st.intervention is not None:
                causes[st.intervention] = causes.get(st.intervention, 0) + 1
            pending += 1
            if on_frames is not None and pending >= 16:
                on_frames(pending)
                pending = 0
            if st.ended and not st.recovered:
                ended_by = "terminated" if st.terminated else "truncated"
        builder.meta["ended_by"] = ended_by
        builder.meta["interventions"] = int(sum(causes.values()))
        builder.meta["intervention_causes"] = causes
        length = len(builder)
        ep_id = builder.commit() if wait else builder.commit_async()
    except BaseException:
        builder.abort()
        raise
    if on_frames is not None and pending:
        on_frames(pending)
    return EpisodeResult(ep_id, int(seed), length, time.perf_counter() - t0)


def make_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None, *,
             max_steps: int | None = None) -> Any:
    """`envs.contract.make_env` with bad ids and keys as a `UserError` (exit 2)."""
    try:
        return make_driving_env(env_id, env_kwargs, max_steps=max_steps)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


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
    cfg = env.config
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
    # Every setting that reaches the store's metadata, checked before an env or a store exists.
    validate_meta({"dart_noise": dart_noise, "dt_jitter": dt_jitter, "env_kwargs": dict(env_kwargs or {})},
                  "collect settings")
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
