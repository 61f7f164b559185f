"""`driving explain`: explanatory videos/stills and attention-robustness SSIM (docs/explain.md)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

from driving.errors import UserError

VIDEO_EXT = (".mp4", ".gif")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "explain",
        help="explanatory video/still of a policy driving, or attention SSIM under a corruption",
        description=(
            "Drive a policy closed-loop and explain it. Video (.mp4 H.264 or .gif, 1280x720, at "
            "the env's frame rate): camera as the policy sees it, VisualBackProp, per-neuron "
            "gradient saliency, live wiring diagram, state and tau_eff traces, steering vs "
            "expert, HUD. Still: --frame K --out F.png. Attention robustness: --ssim "
            "--corruption fog:3 --out F.json (SSIM of clean vs corrupted VisualBackProp maps "
            "along one clean drive)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="RUN", help="run directory (model.safetensors + config.json)")
    src.add_argument("--policy", metavar="NAME",
                     help="an untrained policy from the factory instead (to try the tool)")
    p.add_argument("--env", metavar="ID", default=None,
                   help="env id (default: the run's env, else liquid_drive/Racetrack-v0)")
    p.add_argument("--steps", type=int, default=None,
                   help="control steps to drive (default 200; still mode: K+1)")
    p.add_argument("--corruption", metavar="NAME:SEV", default=None,
                   help="image corruption the camera suffers, e.g. fog:3, noise:2")
    p.add_argument("--neurons", metavar="LIST", default=None,
                   help="comma list of neuron indices to show saliency for, or 'all' (default: "
                        "one motor, one command and one inter neuron); the steering output is "
                        "always shown")
    p.add_argument("--out", metavar="FILE", required=True,
                   help=".mp4/.gif video, .png still (with --frame), .json (with --ssim)")
    p.add_argument("--frame", type=int, default=None, metavar="K",
                   help="still mode: render frame K (0-based) to a .png")
    p.add_argument("--ssim", action="store_true",
                   help="attention robustness: SSIM of clean vs corrupted VisualBackProp maps")
    p.add_argument("--saliency", choices=("gradient", "integrated"), default="gradient",
                   help="per-neuron saliency method")
    p.add_argument("--ig-steps", type=int, default=16, help="integrated-gradients steps")
    p.add_argument("--seed", type=int, default=0, help="env and corruption seed")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                   help="where the policy runs (default cpu; auto = cuda when available)")
    p.add_argument("--fps", type=float, default=None, help="video frame rate (default 1/dt of the env)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="explain over recorded footage: a dataset episode instead of a drive (policy "
                        "steering against the recorded label; docs/real_drives.md)")
    p.add_argument("--episode", type=int, default=None, metavar="K",
                   help="with --data: the episode id (the N of ep_N; default: the first)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out file (refused without it, before any work)")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------ validation


def _check_out(path: str, allowed: tuple[str, ...], mode: str, force: bool = False) -> str:
    from driving.outputs import check_out_file

    ext = os.path.splitext(path)[1].lower()
    if ext not in allowed:
        raise UserError(f"--out {path!r}: {mode} writes {' or '.join(allowed)}; change the extension")
    # under a file, missing or unwritable folder, onto a folder, an earlier file without --force
    check_out_file(path, force=force)
    return ext


def _parse_neurons(text: str | None) -> list[int] | str | None:
    if text is None:
        return None
    if text.strip() == "all":
        return "all"
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--neurons {text!r}: give comma-separated integers, e.g. 0,5,18") from None
    if not out:
        raise UserError("--neurons is empty; give comma-separated integers, e.g. 0,5,18")
    return out


def _default_neurons(policy: Any) -> list[int]:
    units = int(getattr(policy, "units", 0))
    wiring = getattr(getattr(policy, "core", None), "wiring", None)
    if wiring is not None:
        picks = [g[0] for g in (wiring.groups.get(k, []) for k in ("motor", "command", "inter")) if g]
        return [int(i) for i in picks]
    return list(range(min(3, units)))


def _load(args: argparse.Namespace) -> tuple[Any, dict, str]:
    if args.checkpoint:
        from policies.checkpoint import load_policy, resolve_run_dir

        try:  # a run directory, or pretrained:NAME (an agent shipped with the package)
            run_dir = resolve_run_dir(args.checkpoint)
            policy, config = load_policy(run_dir)
        except ValueError as exc:
            raise UserError(f"--checkpoint: {exc}") from None
        return policy, dict(config), str(args.checkpoint)
    from policies.factory import POLICY_NAMES, build_policy

    if args.policy not in POLICY_NAMES:
        raise UserError(f"unknown --policy {args.policy!r}; choose from {', '.join(POLICY_NAMES)}")
    policy = build_policy(args.policy, seed=args.seed)
    return policy, {"policy": args.policy, "image_hw": list(policy.image_hw)}, "untrained"


def _atomic_json(path: str, data: dict) -> None:
    from policies.atomicio import atomic_write_json

    atomic_write_json(path, data, indent=2)


# ------------------------------------------------------------------------ modes


def run(args: argparse.Namespace) -> int:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: stable on shared cores (docs/cells.md, Benchmark)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # leave an in-process caller (tests, demo) as it was


def _run(args: argparse.Namespace) -> int:
    from driving.explain.drive import make_env, parse_corruption, run_env_id

    # --- everything that can be checked before work
    if args.ssim:
        _check_out(args.out, (".json",), "--ssim", args.force)
        if args.frame is not None:
            raise UserError("--frame is for still images; drop it with --ssim")
    elif args.frame is not None:
        _check_out(args.out, (".png",), "still mode (--frame)", args.force)
        if args.frame < 0:
            raise UserError(f"--frame {args.frame} must be >= 0")
    else:
        ext = _check_out(args.out, (*VIDEO_EXT, ".png"), "video mode", args.force)
        if ext == ".png":
            raise UserError(f"--out {args.out!r} is a still image; add --frame K (0-based) to pick the frame")
    corruption = parse_corruption(args.corruption)
    if args.ssim and corruption[0] == "none":
        raise UserError("--ssim compares clean and corrupted maps; add --corruption NAME:SEV, e.g. fog:3")
    neurons = _parse_neurons(args.neurons)
    steps = args.steps
    if steps is not None and steps < 1:
        raise UserError(f"--steps {steps} must be >= 1")
    if args.frame is not None:
        if steps is not None and args.frame >= steps:
            raise UserError(f"--frame {args.frame} is beyond --steps {steps}; frames are 0..{steps - 1}")
        steps = args.frame + 1
    steps = 200 if steps is None else steps
    if args.ig_steps < 1:
        raise UserError("--ig-steps must be >= 1")
    if args.fps is not None and not 0 < args.fps < 1000:  # also NaN and inf
        raise UserError(f"--fps must be a frame rate in (0, 1000), got {args.fps}")

    from policies.policy import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    policy, config, source = _load(args)
    policy.eval()
    if device.type != "cpu":
        policy.to(device)
    units = int(getattr(policy, "units", 0))
    if neurons is None:
        neurons = _default_neurons(policy)
    elif neurons == "all":
        neurons = list(range(units))
    bad = [k for k in neurons if not 0 <= k < units]
    if bad:
        raise UserError(f"--neurons {bad[0]} is out of range: {policy.name} has {units} neurons "
                        f"(valid 0..{units - 1})")
    if args.data is not None:  # recorded footage: nothing driven, no env
        from driving.explain.footage import explain_footage

        return explain_footage(args, policy, source, corruption, neurons)
    env_id = args.env or run_env_id(config) or "liquid_drive/Racetrack-v0"
    env = make_env(env_id, config, tuple(policy.image_hw))
    try:
        if args.ssim:
            return _run_ssim(args, policy, env, env_id, source, corruption, steps)
        return _run_video(args, policy, env, env_id, source, corruption, steps, neurons)
    finally:
        env.close()


def _run_ssim(args, policy, env, env_id, source, corruption, steps) -> int:
    from tqdm import tqdm

    from driving.explain.drive import drive
    from driving.explain.saliency import visual_backprop
    from driving.explain.ssim import ssim

    if steps < 200:
        print(f"note: {steps} frames; the paper's attention SSIM uses >= 200 (--steps 200)",
              file=sys.stderr)
    per_frame: list[float] = []
    crashes = 0
    it = drive(policy, env, steps, corruption, seed=args.seed, drive_on="clean")
    for st in tqdm(it, total=steps, desc="attention SSIM", unit="frame", file=sys.stderr):
        maps = visual_backprop(policy.cnn, np.stack([st.clean, st.corrupted]))
        per_frame.append(ssim(maps[0], maps[1], data_range=1.0))
        crashes = st.crashes
    arr = np.asarray(per_frame)
    result = {
        "policy": getattr(policy, "name", config_name(policy)),
        "checkpoint": source,
        "env": env_id,
        "corruption": corruption[0],
        "severity": corruption[1],
        "seed": args.seed,
        "frames": int(arr.size),
        "ssim_mean": float(arr.mean()),
        "ssim_std": float(arr.std()),
        "ssim_min": float(arr.min()),
        "crashes_during_drive": int(crashes),
        "method": {
            "maps": "VisualBackProp on the clean vs the corrupted frame, one clean closed-loop drive",
            "ssim": "Gaussian window sigma=1.5 (11 taps), data range L=1, C1=(0.01L)^2, C2=(0.03L)^2",
        },
        "per_frame": [round(float(v), 6) for v in arr],
    }
    _atomic_json(args.out, result)
    print(f"attention SSIM {result['policy']} {corruption[0]}:{corruption[1]} over {arr.size} frames: "
          f"mean {arr.mean():.4f} std {arr.std():.4f} -> {args.out}")
    return 0


def config_name(policy: Any) -> str:
    return type(policy).__name__


def _run_video(args, policy, env, env_id, source, corruption, steps, neurons) -> int:
    from tqdm import tqdm

    from driving.explain.drive import drive
    from driving.explain.saliency import MOTOR, neuron_saliency, visual_backprop
    from driving.explain.video import Composer, FrameData, FrameWriter, write_png

    still = args.frame is not None
    wiring = getattr(getattr(policy, "core", None), "wiring", None)
    has_tau = hasattr(getattr(policy, "core", None), "tau_eff")
    keys: list[Any] = [*neurons, MOTOR]
    corr = "clean camera" if corruption[0] == "none" else f"camera: {corruption[0]}:{corruption[1]}"
    comp = Composer(
        int(getattr(policy, "units", 0)), keys, wiring=wiring,
        title=f"liquid-drive explain: {policy.name} on {env_id}",
        subtitle=f"{corr}  |  {'checkpoint ' + source if source != 'untrained' else 'untrained policy'}"
                 f"  |  saliency: {args.saliency}",
        has_tau=has_tau,
    )
    writer = None
    fps = args.fps
    bar = tqdm(total=steps, desc="rendering" if not still else "driving to frame", unit="frame",
               file=sys.stderr)
    try:
        for st in drive(policy, env, steps, corruption, seed=args.seed, drive_on="corrupted",
                        want_tau=has_tau):
            fd = FrameData(camera=st.seen, states=st.states, tau=st.tau_s, features=st.features,
                           steering=st.steering,
                           expert=st.expert, cross_track_m=st.cross_track_m, crashes=st.crashes,
                           step=st.index, time_s=st.time_s, speed_mps=st.speed_mps)
            comp.push(fd)
            if still and st.index != args.frame:
                bar.update(1)
                continue
            fd.vbp = visual_backprop(policy.cnn, st.seen)
            fd.neuron_maps = neuron_saliency(policy, st.seen, st.h_prev, st.dt, neurons=neurons,
                                             motor=True, method=args.saliency,
                                             ig_steps=args.ig_steps)
            img = comp.draw(fd)
            if still:
                write_png(args.out, img)
                bar.update(1)
                break
            if writer is None:
                fps = fps or (1.0 / st.dt if st.dt else _env_fps(env))
                writer = FrameWriter(args.out, fps)
            writer.append(img)
            bar.update(1)
    except BaseException:
        if writer is not None:
            writer.close(keep=False)
        raise
    finally:
        bar.close()
    if writer is not None:
        writer.close()
        print(f"wrote {writer.count} frames ({comp.W}x{comp.H}, {fps:.2f} fps) to {args.out}")
    elif still:
        print(f"wrote frame {args.frame} ({comp.W}x{comp.H}) to {args.out}")
    return 0


def _env_fps(env: Any) -> float:
    from driving.explain.drive import nominal_dt

    dt = nominal_dt(env)
    return 1.0 / dt if dt else 10.0
