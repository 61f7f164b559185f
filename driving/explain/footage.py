"""Explanations over recorded footage: `driving explain --data DIR --episode K`.

The same video as a closed-loop drive (docs/explain.md) — camera, VisualBackProp, per-neuron
saliency, live wiring, neuron traces, τ_eff for LTC — but the frames come from a recorded
episode instead of a simulator: the policy watches them in order with its state carried
and the recorded Δt, and its steering is drawn against the **recorded label** (the human's
steering for imported drives) instead of an expert's. Nothing is driven, so there are no
crashes and no cross-track error. `--corruption fog:3` corrupts the footage as the passive
test does (fog: stored depth or the flat-ground estimate, see `driving.passive`).
Modes as for drives: video (.mp4/.gif), still (`--frame K`, .png), attention SSIM (`--ssim`, .json).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from driving.errors import UserError
from driving.explain.drive import ExplainingPolicy
from driving.explain.video import BG, EXPERT_C, TEXT, Composer, put


@dataclass
class FootageStep:
    """One recorded frame as the policy saw it, with what the video shows."""

    index: int
    clean: np.ndarray
    seen: np.ndarray
    h_prev: Any
    dt: float
    steering: float
    label: float
    states: np.ndarray | None
    tau_s: np.ndarray | None
    features: np.ndarray | None
    time_s: float
    speed_mps: float | None


class FootageComposer(Composer):
    """The explain video layout with the steering panel and HUD naming the recorded label."""

    def _static(self, title: str, subtitle: str) -> np.ndarray:
        img = super()._static(title, subtitle)
        s = self.s
        x0, y0, x1, _ = self.r_steer
        top = y0 - int(24 * s)
        cv2.rectangle(img, (x0, top), (x1 + 1, y0 - 3), BG, -1)  # over "steering: policy vs expert"
        put(img, "steering: policy vs recorded label", (x0, y0 - int(8 * s)), 0.5 * s, TEXT)
        put(img, "label", (x1 - int(50 * s), y0 - int(8 * s)), 0.5 * s, EXPERT_C)
        put(img, "policy", (x1 - int(115 * s), y0 - int(8 * s)), 0.5 * s, (80, 200, 255))
        return img

    def _hud(self, img: np.ndarray, fd: Any) -> None:
        x0, y0, _, _ = self.r_hud
        s = self.s
        lab = "n/a" if fd.expert is None or not np.isfinite(fd.expert) else f"{fd.expert:+.3f}"
        err = "" if fd.expert is None or not np.isfinite(fd.expert) else f"   error {fd.steering - fd.expert:+.3f}"
        put(img, "recorded footage (nothing driven)", (x0 + 8, y0 + int(30 * s)), 0.65 * s, TEXT, 2)
        put(img, f"steering policy {fd.steering:+.3f}   label {lab}{err}", (x0 + 8, y0 + int(62 * s)),
            0.55 * s, TEXT)
        sp = "" if fd.speed_mps is None else f"   speed {fd.speed_mps:.1f} m/s"
        put(img, f"frame {fd.step}   t = {fd.time_s:.2f} s{sp}", (x0 + 8, y0 + int(92 * s)), 0.55 * s,
            (150, 155, 165))


def open_episode(data: str, episode: int | None) -> tuple[Any, int]:
    """(Dataset, episode index) for `--data DIR --episode K` (K = the N of ep_N)."""
    from driving.dataset import Dataset

    try:
        ds = Dataset(data)
    except ValueError as exc:
        raise UserError(f"--data: {exc}") from None
    if not ds.episodes:
        raise UserError(f"--data {data} has no episodes; import drives with `driving import`")
    ids = [e.id for e in ds.episodes]
    k = ids[0] if episode is None else int(episode)
    if k not in ids:
        shown = ", ".join(map(str, ids[:10])) + (" ..." if len(ids) > 10 else "")
        raise UserError(f"--episode {k} is not in {data}; its episodes are {shown}")
    return ds, ids.index(k)


def replay(policy: Any, ds: Any, i: int, steps: int, corruption: tuple[str, int] = ("none", 0),
           seed: int = 0, want_tau: bool = False) -> Iterator[FootageStep]:
    """The policy over the first `steps` frames of episode index `i`, one frame at a time."""
    from driving import corruptions as C
    from driving.passive import MIN_DT_S, DepthSource, _seed

    name, sev = corruption
    if tuple(policy.image_hw) != tuple(ds.image_shape[:2]):
        raise UserError(f"--data holds {ds.image_shape[0]}x{ds.image_shape[1]} frames but the policy takes "
                        f"{policy.image_hw[0]}x{policy.image_hw[1]}; re-import with --size "
                        f"{policy.image_hw[0]}x{policy.image_hw[1]}")
    depth = DepthSource(ds) if name == "fog" and sev > 0 else None
    if depth is not None and depth.kind == "none":
        raise UserError(depth.reason or "fog needs depth")
    ep = ds.episodes[i]
    rng = _seed(seed, name, sev, ep.id)
    dts = np.maximum(ds.steps(i, "dt_s").astype(np.float64), MIN_DT_S)
    labels = ds.steps(i, "steering")
    times = ds.steps(i, "time_s")
    speed = ds.steps(i, "speed") if ep.meta.get("has_speed", True) else None  # imports may lack it
    h = policy.initial_state(1)
    with ExplainingPolicy(policy, want_tau) as explainer:
        for t in range(min(steps, ep.length)):
            clean = ds.frames(i, t, t + 1)[0]
            seen = clean
            if name != "none" and sev > 0:
                d = depth.frames(i, np.array([t]))[0] if depth is not None else None
                seen = C.apply(name, clean, d, sev, rng)
            x = explainer.step(seen, h, float(dts[t]))
            yield FootageStep(
                index=t, clean=clean, seen=seen, h_prev=h, dt=float(dts[t]),
                steering=x.steering, label=float(labels[t]), states=x.states, tau_s=x.tau_s,
                features=x.features, time_s=float(times[t]),
                speed_mps=None if speed is None else float(speed[t]),
            )
            h = x.h


def explain_footage(args: Any, policy: Any, source: str, corruption: tuple[str, int], neurons: list[int]) -> int:
    """The `--data` branch of `driving explain` (modes as for drives; see module doc)."""
    from tqdm import tqdm

    from driving.explain.saliency import MOTOR, neuron_saliency, visual_backprop
    from driving.explain.video import FrameData, FrameWriter, write_png

    ds, i = open_episode(args.data, getattr(args, "episode", None))
    ep = ds.episodes[i]
    steps = ep.length if args.steps is None else min(args.steps, ep.length)
    if args.frame is not None:
        if args.frame >= ep.length:
            raise UserError(f"--frame {args.frame} is beyond episode {ep.id} ({ep.length} frames: 0..{ep.length - 1})")
        steps = args.frame + 1
    where = f"{args.data} episode {ep.id}"
    has_tau = hasattr(getattr(policy, "core", None), "tau_eff")
    if args.ssim:
        from driving.explain.ssim import ssim
        from policies.atomicio import atomic_write_json

        vals = [ssim(*visual_backprop(policy.cnn, np.stack([st.clean, st.seen])), data_range=1.0)
                for st in tqdm(replay(policy, ds, i, steps, corruption, args.seed), total=steps,
                               desc="attention SSIM", unit="frame", file=sys.stderr)]
        arr = np.asarray(vals, np.float64)
        atomic_write_json(args.out, {
            "policy": policy.name, "checkpoint": source, "data": args.data, "episode": ep.id,
            "corruption": corruption[0], "severity": corruption[1], "seed": args.seed, "frames": int(arr.size),
            "ssim_mean": float(arr.mean()), "ssim_std": float(arr.std()), "ssim_min": float(arr.min()),
            "method": {"maps": "VisualBackProp on the clean vs the corrupted recorded frame",
                       "ssim": "Gaussian window sigma=1.5 (11 taps), data range L=1"},
            "per_frame": [round(float(v), 6) for v in arr]})
        print(f"attention SSIM over {arr.size} recorded frames of {where}: mean {arr.mean():.4f} -> {args.out}")
        return 0
    wiring = getattr(getattr(policy, "core", None), "wiring", None)
    corr = "clean footage" if corruption[0] == "none" else f"footage: {corruption[0]}:{corruption[1]}"
    comp = FootageComposer(
        int(getattr(policy, "units", 0)), [*neurons, MOTOR], wiring=wiring,
        title=f"liquid-drive explain: {policy.name} on recorded footage",
        subtitle=f"{corr}  |  {ds.attrs.get('env_id')} episode {ep.id}  |  saliency: {args.saliency}",
        has_tau=has_tau)
    still = args.frame is not None
    fps = args.fps or 1.0 / float(ep.meta.get("nominal_dt_s") or np.median(ds.steps(i, "dt_s")) or 0.1)
    writer = None if still else FrameWriter(args.out, fps)
    errs = []
    try:
        for st in tqdm(replay(policy, ds, i, steps, corruption, args.seed, want_tau=has_tau), total=steps,
                       desc="rendering" if not still else "replaying to frame", unit="frame", file=sys.stderr):
            fd = FrameData(camera=st.seen, states=st.states, tau=st.tau_s, features=st.features,
                           steering=st.steering, expert=st.label, cross_track_m=float("nan"), crashes=0,
                           step=st.index, time_s=st.time_s, speed_mps=st.speed_mps)
            comp.push(fd)
            errs.append(st.steering - st.label)
            if still and st.index != args.frame:
                continue
            fd.vbp = visual_backprop(policy.cnn, st.seen)
            fd.neuron_maps = neuron_saliency(policy, st.seen, st.h_prev, st.dt, neurons=neurons, motor=True,
                                             method=args.saliency, ig_steps=args.ig_steps)
            img = comp.draw(fd)
            if still:
                write_png(args.out, img)
                break
            writer.append(img)
    except BaseException:
        if writer is not None:
            writer.close(keep=False)
        raise
    e = np.asarray(errs)
    if writer is not None:
        writer.close()
        print(f"wrote {writer.count} frames ({comp.W}x{comp.H}, {fps:.2f} fps) of {where} to {args.out}; "
              f"steering MAE vs label {np.abs(e).mean():.4f}")
    else:
        print(f"wrote frame {args.frame} of {where} ({comp.W}x{comp.H}) to {args.out}")
    return 0
