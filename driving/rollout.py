"""THE closed-loop drive: one loop, one intervention rule, one recovery, one held action.

Every stage that drives a car uses this module and nothing else: `collect` (the expert
drives, rows of the dataset), DAgger (the policy drives, the expert labels), `evaluate`
(metrics), `explain` (video frames). Each consumes the same `Step` records.

One control step k, in order:

1. The frame's timing is drawn (`timing`: dropped frames, jittered intervals). The first
   frame is always delivered.
2. A delivered frame is corrupted (`corruption`, using the env's depth) and given to the
   actor with the true elapsed time since the previous *delivered* frame; on a dropped
   frame the actor is not called and the last commanded action is held.
3. The world advances by the step's interval (`DrivingEnv.advance`, or `step` at the
   nominal interval).
4. The intervention rule (`driving.interventions`) looks at the new state; on an
   intervention the car is put back on the lane centre (`recover`) and the drive goes on
   with the actor's state kept, as the paper counted manual recoveries.

`Episode` is that step as a small state machine (`request` → `advance`), so that a batched
evaluation can hold many episodes in lock step and act for all of them at once; `drive` is
the one-episode loop around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from driving import corruptions as C
from driving.conditions import CLEAN, Condition
from driving.interventions import STRICT, InterventionRule
from envs.contract import as_driving_env

#: ``info`` keys (after a step) holding the steering the env really applied (env-side DART
#: noise, CARLA's applied control), preferred over the commanded action when present.
EXECUTED_KEYS = ("executed_steering", "applied_steering")

#: A frame-timing source: (rng, nominal_dt_s) → `corruptions.FrameTiming`.
TimingFn = Callable[[np.random.Generator, float], C.FrameTiming]


class Actor(Protocol):
    """Chooses the commanded steering from a delivered frame.

    ``reset()`` is called at the start of every episode (recurrent policies clear their
    state); ``act(frame, dt_s, info)`` gets the frame as delivered (corrupted), the
    elapsed seconds since the previous delivered frame and the env's info for that frame
    (privileged state, the expert's label: only experts may read it).
    """

    def reset(self) -> None: ...

    def act(self, frame: np.ndarray, dt_s: float, info: Mapping[str, Any]) -> float: ...


@dataclass
class Request:
    """A delivered frame waiting for its action (what `Actor.act` receives), and the clean
    frame it was made from (explanations compare the two)."""

    frame: np.ndarray
    dt_s: float
    info: Mapping[str, Any]
    clean: np.ndarray


@dataclass
class Step:
    """One control step of a closed-loop drive.

    ``obs`` / ``info``: the env's observation and info the frame came with (before the
    world advanced): the clean frame, depth, privileged state, the expert's label.
    ``frame``: the frame as delivered to the actor (corrupted), None when dropped.
    ``next_info``: the info after the world advanced (before any recovery).
    """

    index: int
    obs: Mapping[str, Any]
    info: Mapping[str, Any]
    frame: np.ndarray | None
    delivered: bool
    actor_dt_s: float  # elapsed seconds given to the actor with this frame (0 when dropped)
    dt_s: float  # seconds the world advanced in this step
    commanded: float  # the actor's steering, clipped to [-1, 1] (held on dropped frames)
    executed: float  # the steering the env applied (its own noise, CARLA's control)
    expert: float  # the expert's label for this frame (NaN if the env has none)
    next_info: Mapping[str, Any]
    distance_m: float  # distance driven in this step
    intervention: str | None  # cause (driving.interventions.CAUSES) or None
    recovered: bool  # the car was put back on the lane centre after this step
    terminated: bool
    truncated: bool

    @property
    def ended(self) -> bool:
        return self.terminated or self.truncated


def condition_timing(condition: Condition) -> TimingFn:
    """Frame timing of a condition (nominal unless it is a timing fault)."""
    name, severity = condition.corruption, condition.severity
    return lambda rng, nominal: C.timing_step(name, severity, rng, nominal)


def jittered_timing(jitter: float) -> TimingFn:
    """Intervals drawn from nominal·U(1−j, 1+j), every frame delivered (collect's --dt-jitter)."""
    if not 0 <= jitter < 1:
        raise ValueError(f"dt jitter must be in [0, 1), got {jitter}")
    return lambda rng, nominal: C.FrameTiming(nominal * float(rng.uniform(1 - jitter, 1 + jitter)), True)


@dataclass
class Episode:
    """One closed-loop episode as a state machine: `request()` then `advance(action)`.

    `env` must satisfy `envs.contract.DrivingEnv` (``reset``, ``step``, ``advance``,
    ``recover``, ``nominal_dt``). The corruption stream and the timing stream draw from one
    generator ``rng`` (timing first, then the image corruption), so the same seed gives the
    same drive.
    """

    env: Any
    steps: int
    seed: int | None = None
    condition: Condition = CLEAN
    rng: np.random.Generator | None = None
    timing: TimingFn | None = None
    rule: InterventionRule = STRICT
    recover: bool = True
    # state
    index: int = 0
    done: bool = False
    obs: Any = None
    info: Any = None
    _timing_now: C.FrameTiming | None = field(default=None, repr=False)
    _request: Request | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"an episode needs >= 1 control step, got {self.steps}")
        self.env = as_driving_env(self.env)
        self.rng = self.rng if self.rng is not None else np.random.default_rng(self.seed)
        self.timing = self.timing or condition_timing(self.condition)
        self.nominal = float(self.env.nominal_dt)
        self._corrupt = self.condition.is_image and self.condition.severity > 0
        self.obs, self.info = self.env.reset(seed=self.seed)
        self.gap = self.nominal  # elapsed since the previous delivered frame (first: one interval)
        self.action = 0.0
        self.prev_distance = float(self.info.get("distance_m", 0.0))
        self.held = 0
        self.interventions = 0

    def request(self) -> Request | None:
        """Draw this step's timing; the delivered frame waiting for an action, or None when
        the frame is dropped (the last action is held)."""
        if self.done:
            raise RuntimeError("the episode is over")
        if self._timing_now is None:
            self._timing_now = self.timing(self.rng, self.nominal)
            if self._timing_now.delivered or self.index == 0:
                clean = frame = self.obs["image"]
                if self._corrupt:
                    frame = C.apply(self.condition.corruption, clean, self.info["depth"],
                                    self.condition.severity, self.rng)
                self._request = Request(frame, self.gap, self.info, clean)
            else:
                self._request = None
        return self._request

    def advance(self, action: float | None) -> Step:
        """Advance the world one step with the actor's ``action`` (None: hold the last one)."""
        req = self.request()
        timing = self._timing_now
        assert timing is not None
        if req is not None:
            if action is None:
                raise ValueError("a delivered frame needs an action")
            a = float(action)
            if not math.isfinite(a):
                raise ValueError(f"the actor returned a non-finite steering {a!r} at step {self.index}")
            self.action = min(1.0, max(-1.0, a))
            actor_dt, self.gap = self.gap, 0.0
        else:
            self.held += 1
            actor_dt = 0.0
        act = np.array([self.action], dtype=np.float32)
        if timing.dt_s != self.nominal:
            obs, _, terminated, truncated, info = self.env.advance(act, timing.dt_s)
        else:
            obs, _, terminated, truncated, info = self.env.step(act)
        dt = float(info.get("dt_s") or timing.dt_s)
        self.gap += dt
        distance = float(info.get("distance_m", self.prev_distance))
        executed = next((float(info[k]) for k in EXECUTED_KEYS if k in info), self.action)
        cause = self.rule.cause(info)
        step = Step(
            index=self.index, obs=self.obs, info=self.info, frame=None if req is None else req.frame,
            delivered=req is not None, actor_dt_s=actor_dt, dt_s=dt, commanded=self.action,
            executed=executed, expert=float(self.info.get("expert_steering", float("nan"))),
            next_info=info, distance_m=distance - self.prev_distance, intervention=cause,
            recovered=False, terminated=bool(terminated), truncated=bool(truncated),
        )
        self.prev_distance = distance
        self.obs, self.info = obs, info
        if cause is not None:
            self.interventions += 1
            if self.recover:
                self.obs, self.info = self.env.recover()
                self.prev_distance = float(self.info.get("distance_m", self.prev_distance))
                step.recovered = True
        self.index += 1
        self._timing_now = None
        self._request = None
        # A recovered car drives on (evaluation always did so, also at the env's own end);
        # otherwise the env's end (time limit, end of an open road) ends the episode.
        self.done = self.index >= self.steps or (step.ended and not step.recovered)
        return step


def drive(
    env: Any,
    actor: Actor,
    steps: int,
    *,
    seed: int | None = None,
    condition: Condition = CLEAN,
    rng: np.random.Generator | None = None,
    timing: TimingFn | None = None,
    rule: InterventionRule = STRICT,
    recover: bool = True,
) -> Iterator[Step]:
    """Drive one episode of at most ``steps`` control steps; yield every `Step`.

    The episode also ends when the env terminates or truncates (its time limit, the end of
    an open road). See the module docstring for the order of events in a step.
    """
    ep = Episode(env, steps, seed=seed, condition=condition, rng=rng, timing=timing, rule=rule,
                 recover=recover)
    actor.reset()
    while not ep.done:
        req = ep.request()
        action = None if req is None else actor.act(req.frame, req.dt_s, req.info)
        yield ep.advance(action)


# ------------------------------------------------------------------------------ actors


class ExpertActor:
    """The privileged expert (``info["expert_steering"]``), acting at frame arrivals."""

    uses_time = False

    def reset(self) -> None:
        pass

    def act(self, frame: np.ndarray, dt_s: float, info: Mapping[str, Any]) -> float:
        return float(info["expert_steering"])


class PolicyActor:
    """A `policies.Policy` run one frame at a time, its recurrent state carried along.

    Liquid cores (``uses_time``) get the true elapsed seconds; the others only the frames.
    """

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.uses_time = bool(getattr(policy, "uses_time", False))
        self.h: Any = None

    def reset(self) -> None:
        self.h = self.policy.initial_state(1)

    def act(self, frame: np.ndarray, dt_s: float, info: Mapping[str, Any]) -> float:
        import torch

        with torch.no_grad():
            steering, self.h = self.policy.step(frame, self.h, dt_s if self.uses_time else None)
        return float(np.asarray(steering, dtype=np.float64).reshape(-1)[0])


class MixtureActor:
    """DAgger's β mixture: the policy always sees the frame (its state runs on), and on a
    share ``beta`` of the steps, drawn from ``rng``, the expert's steering is executed."""

    def __init__(self, policy_actor: Actor, beta: float, rng: np.random.Generator) -> None:
        if not 0 <= beta <= 1:
            raise ValueError(f"DAgger beta must be in [0, 1], got {beta}")
        self.inner, self.beta, self.rng = policy_actor, float(beta), rng

    def reset(self) -> None:
        self.inner.reset()

    def act(self, frame: np.ndarray, dt_s: float, info: Mapping[str, Any]) -> float:
        a = float(self.inner.act(frame, dt_s, info))
        if self.beta > 0 and self.rng.random() < self.beta:
            a = float(info["expert_steering"])
        return a


class NoisyActor:
    """Adds N(0, σ²) to another actor's steering (DART, recorder side, for envs that do not
    add it themselves); the label stays the expert's."""

    def __init__(self, inner: Actor, sigma: float, rng: np.random.Generator) -> None:
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"DART noise must be a finite std >= 0, got {sigma!r}")
        self.inner, self.sigma, self.rng = inner, float(sigma), rng

    def reset(self) -> None:
        self.inner.reset()

    def act(self, frame: np.ndarray, dt_s: float, info: Mapping[str, Any]) -> float:
        a = float(self.inner.act(frame, dt_s, info))
        return a + float(self.rng.normal(0.0, self.sigma)) if self.sigma > 0 else a


__all__ = ["Actor", "EXECUTED_KEYS", "Episode", "ExpertActor", "MixtureActor", "NoisyActor",
           "PolicyActor", "Request", "Step", "condition_timing", "drive", "jittered_timing"]
