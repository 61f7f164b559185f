"""Closed-loop drives that feed explanations: the shared drive, one step at a time, with
what the policy saw.

The steps come from `driving.rollout.Episode` (the same loop, intervention rule and
recovery as evaluation, collection and DAgger): the policy steers from the (possibly
corrupted) frame with its state carried along; an intervention is counted and the car put
back on the lane centre, keeping the policy's state, as the paper counted manual
recoveries. An episode end (time limit) starts a new episode with a fresh state, so a video
can run longer than one episode. What explanations need beyond steering (all 19 states,
LTC time constants, the CNN's features, the state before the frame for saliency) is
computed here, per delivered frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from driving.conditions import parse_image_condition
from driving.errors import UserError
from driving.interventions import STRICT, InterventionRule


def parse_corruption(spec: str | None) -> tuple[str, int]:
    """'fog:3' → ('fog', 3); None/'none' → ('none', 0). Only image corruptions apply here
    (`driving.conditions.parse_image_condition`)."""
    try:
        c = parse_image_condition(spec)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return c.corruption, c.severity


def run_env_id(config: dict[str, Any] | None) -> str | None:
    """The env a checkpoint was trained in (config["env_id"] or its dataset's), if recorded."""
    cfg = config or {}
    ds = cfg.get("dataset") if isinstance(cfg.get("dataset"), dict) else {}
    return cfg.get("env_id") or ds.get("env_id")


def make_env(env_id: str, config: dict[str, Any] | None = None, image_hw: tuple[int, int] | None = None):
    """The env (`envs.contract.make_env`) with the run's env settings when it was trained on
    the same env, its camera at the policy's image size.

    Raises UserError for an unknown id. Frames of another size (an env that keeps its own
    camera) are resized before the policy sees them (see `fit_frame`).
    """
    from envs.contract import make_env as make_driving_env

    kw: dict[str, Any] = {}
    cfg = config or {}
    if run_env_id(cfg) == env_id and isinstance(cfg.get("env_config"), dict):
        kw = dict(cfg["env_config"])
    cam = dict(kw.pop("camera", None) or (cfg["camera"] if isinstance(cfg.get("camera"), dict) else {}))
    if image_hw is not None:  # the camera the checkpoint was trained with, at its size
        cam.update(height=int(image_hw[0]), width=int(image_hw[1]))
    try:
        return make_driving_env(env_id, kw, camera=cam or None)
    except ValueError as exc:
        if cam and "camera" in str(exc):  # an env that takes its camera from elsewhere: resize
            return make_driving_env(env_id, kw)
        raise UserError(str(exc)) from None


def fit_frame(frame: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if tuple(frame.shape[:2]) == tuple(hw):
        return frame
    return cv2.resize(frame, (int(hw[1]), int(hw[0])), interpolation=cv2.INTER_AREA)


def fit_depth(depth: np.ndarray | None, hw: tuple[int, int]) -> np.ndarray | None:
    if depth is None or tuple(depth.shape[:2]) == tuple(hw):
        return depth
    return cv2.resize(depth, (int(hw[1]), int(hw[0])), interpolation=cv2.INTER_NEAREST)


@dataclass
class Step:
    """One control step, before the env advances: what the policy saw and did."""

    index: int
    clean: np.ndarray  # uint8 (H,W,3) at the policy's resolution
    seen: np.ndarray  # what the policy saw (corrupted, or clean when driving clean)
    corrupted: np.ndarray  # the corrupted frame (== clean without corruption)
    h_prev: Any  # the policy state before this frame (for saliency)
    dt: float | None  # elapsed seconds given to the policy
    steering: float
    states: np.ndarray | None  # (units,) after this frame
    tau_s: np.ndarray | None  # (units,) LTC τ_eff in seconds, else None
    features: np.ndarray | None  # (F,) the CNN's sensory features for this frame
    expert: float | None
    cross_track_m: float
    crashes: int  # crashes before this step
    time_s: float
    speed_mps: float | None


def nominal_dt(env: Any) -> float | None:
    """The env's control interval (`DrivingEnv.nominal_dt`, seconds)."""
    from envs.contract import as_driving_env

    return float(as_driving_env(env).nominal_dt)


def _state_vector(states: Any) -> np.ndarray | None:
    if states is None:
        return None
    return torch.as_tensor(states).detach().reshape(-1).float().numpy()


@dataclass
class Explained:
    """One policy step with what explanations show beside the steering."""

    steering: float
    h: Any  # the state after the frame
    states: np.ndarray | None  # (units,)
    tau_s: np.ndarray | None  # (units,) LTC τ_eff in seconds
    features: np.ndarray | None  # (F,) the CNN's sensory features


class ExplainingPolicy:
    """Runs a policy one frame at a time through its sequence path and keeps the CNN's
    features (a forward hook), all states and, for LTC cores, τ_eff. Shared by the drive
    (`drive`) and recorded footage (`driving.explain.footage`); use as a context manager so
    the hook is removed."""

    def __init__(self, policy: torch.nn.Module, want_tau: bool = False) -> None:
        self.policy = policy
        self._feats: list[torch.Tensor] = []
        self._hook = policy.cnn.register_forward_hook(lambda m, a, out: self._feats.append(out.detach()))
        self._tau = getattr(getattr(policy, "core", None), "tau_eff", None) if want_tau else None

    def __enter__(self) -> ExplainingPolicy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hook.remove()

    def step(self, frame: np.ndarray, h: Any, dt: float) -> Explained:
        policy = self.policy
        ts = torch.tensor([[float(dt)]], dtype=torch.float32)
        self._feats.clear()
        with torch.no_grad():
            out = policy(torch.as_tensor(np.ascontiguousarray(frame))[None, None], h, ts, return_states=True)
            tau = None
            if self._tau is not None and self._feats:
                tu = getattr(policy, "time_unit_s", 1.0)
                tau = self._tau(self._feats[0].reshape(1, 1, -1), h, ts / tu)[0, -1] * tu
        states = out[2][0, -1] if len(out) > 2 and out[2] is not None else None
        return Explained(steering=float(out[0].reshape(-1)[-1]), h=out[1], states=_state_vector(states),
                         tau_s=_state_vector(tau),
                         features=_state_vector(self._feats[0]) if self._feats else None)


def drive(
    policy: torch.nn.Module,
    env: Any,
    steps: int,
    corruption: tuple[str, int] = ("none", 0),
    seed: int = 0,
    drive_on: str = "corrupted",
    want_tau: bool = False,
    rule: InterventionRule = STRICT,
) -> Iterator[Step]:
    """Yield `steps` control steps of a closed-loop drive (see the module docstring).

    `drive_on="corrupted"`: the policy steers from the corrupted frame (videos);
    `"clean"`: it steers from the clean frame and the corrupted one is only produced for
    comparison (attention SSIM over one trajectory).
    """
    from driving.conditions import CLEAN, Condition
    from driving.rollout import Episode
    from envs.contract import as_driving_env

    if drive_on not in ("corrupted", "clean"):
        raise ValueError(f"drive_on must be 'corrupted' or 'clean', got {drive_on!r}")
    name, severity = corruption
    cond = CLEAN if name == "none" or severity == 0 else Condition(name, int(severity))
    denv = as_driving_env(env)
    hw = tuple(policy.image_hw)
    rng = np.random.default_rng(seed)
    crashes = 0
    policy.eval()
    i = 0
    first = True
    with ExplainingPolicy(policy, want_tau) as explainer:
        while i < steps:
            # one episode of the shared drive; a new one (fresh state) if the env ends it
            ep = Episode(denv, steps - i, seed=seed if first else None, condition=cond, rng=rng, rule=rule)
            first = False
            h = policy.initial_state(1)
            while not ep.done:
                req = ep.request()
                if req is None:  # explain refuses timing faults: every frame is delivered
                    ep.advance(None)
                    continue
                info = req.info
                dt = float(req.dt_s)
                clean = fit_frame(np.asarray(req.clean, np.uint8), hw)
                corrupted = fit_frame(np.asarray(req.frame, np.uint8), hw)
                seen = corrupted if drive_on == "corrupted" else clean
                x = explainer.step(seen, h, dt)
                expert = info.get("expert_steering")
                speed = ep.obs.get("speed") if isinstance(ep.obs, dict) else None
                yield Step(
                    index=i, clean=clean, seen=seen, corrupted=corrupted, h_prev=h, dt=dt,
                    steering=x.steering, states=x.states, tau_s=x.tau_s, features=x.features,
                    expert=None if expert is None else float(expert),
                    cross_track_m=float(info.get("cross_track_m", float("nan"))), crashes=crashes,
                    time_s=float(info.get("time_s", 0.0)),
                    speed_mps=None if speed is None else float(np.asarray(speed).reshape(-1)[0]),
                )
                h = x.h
                st = ep.advance(x.steering)
                crashes += int(st.intervention is not None)
                i += 1
