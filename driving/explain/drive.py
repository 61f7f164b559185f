"""Closed-loop drives that feed explanations: one step at a time, with what the policy saw.

The loop mirrors evaluation: the policy steers from the (possibly corrupted) frame with its
state carried along; a crash (`info["crashed"]`: off-road or collision) is counted once per
event and the car is put back on the lane centre with `env.unwrapped.recover()`, keeping the
policy's state, as the paper counted manual recoveries. An episode end (time limit) resets
env and state, so a video can run longer than one episode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from driving.errors import UserError


def parse_corruption(spec: str | None) -> tuple[str, int]:
    """'fog:3' → ('fog', 3); None/'none' → ('none', 0). Only image corruptions apply here.

    Timing faults (dropped frames, jitter) leave every frame's pixels unchanged, so they have
    no saliency or SSIM effect; they are rejected with a pointer to `driving eval`.
    """
    if spec is None or spec.strip() in ("", "none", "none:0", "clean"):
        return "none", 0
    from driving import corruptions

    text = spec.strip()
    name, sep, sev = text.partition(":")
    names = list(corruptions.CORRUPTIONS)
    if name in getattr(corruptions, "TIMING_FAULTS", {}):
        raise UserError(f"corruption {name!r} is a timing fault and leaves the pixels unchanged; "
                        f"explain supports image corruptions: {', '.join(names)}")
    if name not in corruptions.CORRUPTIONS:
        raise UserError(f"unknown corruption {name!r} in {spec!r}; use NAME:SEVERITY with NAME "
                        f"one of {', '.join(names)} (e.g. fog:3)")
    if not sep:
        raise UserError(f"corruption {spec!r} has no severity; write it as {name}:SEVERITY "
                        f"with SEVERITY 1-{corruptions.MAX_SEVERITY} (e.g. {name}:3)")
    try:
        severity = int(sev)
    except ValueError:
        raise UserError(f"severity {sev!r} in {spec!r} is not an integer; use 0-"
                        f"{corruptions.MAX_SEVERITY} (e.g. {name}:3)") from None
    if not 0 <= severity <= corruptions.MAX_SEVERITY:
        raise UserError(f"severity {severity} in {spec!r} is out of range 0-"
                        f"{corruptions.MAX_SEVERITY}")
    return name, severity


def run_env_id(config: dict[str, Any] | None) -> str | None:
    """The env a checkpoint was trained in (config["env_id"] or its dataset's), if recorded."""
    cfg = config or {}
    ds = cfg.get("dataset") if isinstance(cfg.get("dataset"), dict) else {}
    return cfg.get("env_id") or ds.get("env_id")


def make_env(env_id: str, config: dict[str, Any] | None = None, image_hw: tuple[int, int] | None = None):
    """gym.make(env_id) with the run's env settings when it was trained on the same env.

    Raises UserError for an unknown id. The camera is asked for the policy's image size;
    frames of another size are resized before the policy sees them (see `fit_frame`).
    """
    import gymnasium as gym

    import envs  # noqa: F401  (registers liquid_drive/*)

    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("liquid_drive/"))
        raise UserError(f"unknown env {env_id!r}; choose one of {', '.join(known)}")
    kw: dict[str, Any] = {}
    cfg = config or {}
    if run_env_id(cfg) == env_id and isinstance(cfg.get("env_config"), dict):
        kw = dict(cfg["env_config"])
    if "camera" not in kw and "config" not in kw:
        cam = dict(cfg["camera"]) if isinstance(cfg.get("camera"), dict) else {}
        if image_hw is not None:  # the camera the checkpoint was trained with, at its size
            cam.update(height=int(image_hw[0]), width=int(image_hw[1]))
        if cam:
            kw["camera"] = cam
    try:
        return gym.make(env_id, **kw)
    except TypeError:
        kw.pop("camera", None)  # the env takes its camera from elsewhere: resize instead
        return gym.make(env_id, **kw)


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
    """The env's control interval 1/policy_frequency (seconds), as evaluation uses at reset."""
    cfg = getattr(getattr(env, "unwrapped", env), "config", None) or {}
    freq = cfg.get("policy_frequency") if isinstance(cfg, dict) else None
    return 1.0 / float(freq) if freq else None


def _state_vector(states: Any) -> np.ndarray | None:
    if states is None:
        return None
    return torch.as_tensor(states).detach().reshape(-1).float().numpy()


def drive(
    policy: torch.nn.Module,
    env: Any,
    steps: int,
    corruption: tuple[str, int] = ("none", 0),
    seed: int = 0,
    drive_on: str = "corrupted",
    want_tau: bool = False,
) -> Iterator[Step]:
    """Yield `steps` control steps of a closed-loop drive (see the module docstring).

    `drive_on="corrupted"`: the policy steers from the corrupted frame (videos);
    `"clean"`: it steers from the clean frame and the corrupted one is only produced for
    comparison (attention SSIM over one trajectory).
    """
    from driving import corruptions

    name, severity = corruption
    hw = tuple(policy.image_hw)
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    h = policy.initial_state(1)
    crashes = 0
    feats: list[torch.Tensor] = []
    hook = policy.cnn.register_forward_hook(lambda m, a, out: feats.append(out.detach()))
    tau_fn = getattr(getattr(policy, "core", None), "tau_eff", None) if want_tau else None
    policy.eval()
    try:
        for i in range(steps):
            dt = float(info.get("dt_s") or 0.0) or nominal_dt(env)
            clean = fit_frame(np.asarray(obs["image"], np.uint8), hw)
            if name != "none" and severity > 0:
                depth = fit_depth(info.get("depth"), hw)
                corrupted = corruptions.apply(name, clean, depth, severity, rng)
            else:
                corrupted = clean
            seen = corrupted if drive_on == "corrupted" else clean
            ts = None if dt is None else torch.tensor([[dt]], dtype=torch.float32)
            feats.clear()
            with torch.no_grad():
                out = policy(torch.as_tensor(seen)[None, None], h, ts, return_states=True)
                tau = None
                if tau_fn is not None and feats:
                    tu = getattr(policy, "time_unit_s", 1.0)
                    tts = None if ts is None else ts / tu
                    tau = tau_fn(feats[0].reshape(1, 1, -1), h, tts)[0, -1] * tu
            steer_t, h_new = out[0], out[1]
            states = out[2][0, -1] if len(out) > 2 and out[2] is not None else None
            steering = float(steer_t.reshape(-1)[-1])
            expert = info.get("expert_steering")
            speed = obs.get("speed") if isinstance(obs, dict) else None
            yield Step(
                index=i, clean=clean, seen=seen, corrupted=corrupted, h_prev=h, dt=dt,
                steering=steering, states=_state_vector(states),
                tau_s=None if tau is None else _state_vector(tau),
                features=_state_vector(feats[0]) if feats else None,
                expert=None if expert is None else float(expert),
                cross_track_m=float(info.get("cross_track_m", float("nan"))), crashes=crashes,
                time_s=float(info.get("time_s", 0.0)),
                speed_mps=None if speed is None else float(np.asarray(speed).reshape(-1)[0]),
            )
            h = h_new
            action = np.array([np.clip(steering, -1.0, 1.0)], dtype=np.float32)
            obs, _, terminated, truncated, info = env.step(action)
            # as driving.evaluate: a crash is a collision or leaving the road; count it,
            # put the car back on the lane centre and go on with the policy's state kept
            crashed = bool(info.get("crashed", False)) or not bool(info.get("on_road", True))
            crashes += int(crashed)
            if crashed and hasattr(env.unwrapped, "recover"):
                obs, info = env.unwrapped.recover()
            elif terminated or truncated:
                obs, info = env.reset()
                h = policy.initial_state(1)
    finally:
        hook.remove()
