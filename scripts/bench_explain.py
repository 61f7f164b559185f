"""Benchmark the explanatory video: composing, encoding, saliency, and a whole closed loop.

Target (issue 7): composing frames at >= 10 frames/s on 2 cores. Pins torch to one thread as
the project's benchmarks do; OpenCV keeps its default threads unless --cv-threads is given.

    .venv/bin/python scripts/bench_explain.py --json bench_explain.json [--frames 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from driving.explain.saliency import MOTOR, neuron_saliency, visual_backprop  # noqa: E402
from driving.explain.video import Composer, FrameData, FrameWriter  # noqa: E402


def _timed(fn, n: int) -> float:
    """Median seconds of n calls (after one warm-up)."""
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def _road_frame(hw=(78, 200), shift=0) -> np.ndarray:
    h, w = hw
    img = np.full((h, w, 3), (120, 170, 230), np.uint8)
    img[h // 2:] = (70, 130, 60)
    pts = np.array([[w // 2 - 3 + shift, h // 2], [w // 2 + 3 + shift, h // 2], [w - 10, h - 1], [10, h - 1]])
    cv2.fillConvexPoly(img, pts.astype(np.int32), (100, 100, 105))
    return img


def bench_policy(name: str, frames: int) -> dict:
    from policies.factory import build_policy

    policy = build_policy(name)
    policy.eval()
    frame = _road_frame()
    h = policy.initial_state(1)
    wiring = getattr(policy.core, "wiring", None)
    neurons = [0, 5, 18] if policy.units >= 19 else [0, 1, 2]
    res = {
        "vbp_ms": 1e3 * _timed(lambda: visual_backprop(policy.cnn, frame), 20),
        "saliency_3_neurons_and_motor_ms": 1e3 * _timed(
            lambda: neuron_saliency(policy, frame, h, 0.1, neurons=neurons), 10),
        "saliency_all_neurons_and_motor_ms": 1e3 * _timed(
            lambda: neuron_saliency(policy, frame, h, 0.1), 5),
        "integrated_gradients_16_steps_4_maps_ms": 1e3 * _timed(
            lambda: neuron_saliency(policy, frame, h, 0.1, neurons=neurons, method="integrated"), 2),
    }
    # compose only (realistic inputs, history full)
    sal = neuron_saliency(policy, frame, h, 0.1, neurons=neurons)
    vbp = visual_backprop(policy.cnn, frame)
    comp = Composer(policy.units, [*neurons, MOTOR], wiring=wiring, title=f"bench {name}",
                    subtitle="fog:3", has_tau=hasattr(policy.core, "tau_eff"))
    rng = np.random.default_rng(0)
    fds = [FrameData(camera=_road_frame(shift=i % 20), vbp=vbp, neuron_maps=sal,
                     states=rng.standard_normal(policy.units), tau=rng.random(policy.units) + 0.1,
                     steering=float(np.sin(i / 10)), expert=float(np.sin(i / 10 + 0.1)),
                     cross_track_m=0.2, crashes=0, step=i, time_s=i / 10) for i in range(frames)]
    for fd in fds[:comp.history]:
        comp.push(fd)
    t = time.perf_counter()
    imgs = [comp.compose(fd) for fd in fds]
    compose_s = (time.perf_counter() - t) / frames
    res["compose_ms"] = 1e3 * compose_s
    res["compose_fps"] = 1.0 / compose_s
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        with FrameWriter(os.path.join(d, "b.mp4"), 10) as w:
            for img in imgs:
                w.append(img)
        enc = (time.perf_counter() - t) / frames
    res["encode_h264_ms"] = 1e3 * enc
    # the whole per-frame render work of `driving explain` except the simulator step
    per = (res["vbp_ms"] + res["saliency_3_neurons_and_motor_ms"] + res["compose_ms"]
           + res["encode_h264_ms"]) / 1e3
    res["render_pipeline_fps_excluding_env"] = 1.0 / per
    return res


def bench_cli(env_id: str, steps: int) -> dict | None:
    """End to end: `driving explain` on the real env (untrained ncp-ltc), if the env exists."""
    import gymnasium as gym

    try:
        import envs  # noqa: F401
    except Exception:
        return None
    if env_id not in gym.registry:
        return None
    from driving.cli import main

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "e.mp4")
        t = time.perf_counter()
        rc = main(["explain", "--policy", "ncp-ltc", "--env", env_id, "--steps", str(steps),
                   "--corruption", "fog:3", "--out", out])
        wall = time.perf_counter() - t
    return {"env": env_id, "steps": steps, "rc": rc, "wall_s": wall, "fps": steps / wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", required=True, help="write results here")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--policies", default="ncp-ltc,ncp-cfc,lstm")
    ap.add_argument("--cli-env", default="liquid_drive/Racetrack-v0")
    ap.add_argument("--cli-steps", type=int, default=60)
    ap.add_argument("--cv-threads", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.cv_threads is not None:
        cv2.setNumThreads(args.cv_threads)
    out = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cv_threads": cv2.getNumThreads(), "python": platform.python_version(),
                    "torch": torch.__version__, "opencv": cv2.__version__},
        "frame_size": [1280, 720],
        "target_compose_fps": 10,
        "policies": {},
    }
    for name in [p for p in args.policies.split(",") if p]:
        out["policies"][name] = bench_policy(name, args.frames)
        r = out["policies"][name]
        print(f"{name:8s} compose {r['compose_ms']:.1f} ms ({r['compose_fps']:.0f} fps)  "
              f"encode {r['encode_h264_ms']:.1f} ms  vbp {r['vbp_ms']:.1f} ms  "
              f"saliency(3+motor) {r['saliency_3_neurons_and_motor_ms']:.1f} ms  "
              f"pipeline {r['render_pipeline_fps_excluding_env']:.1f} fps", file=sys.stderr)
    out["cli_end_to_end"] = bench_cli(args.cli_env, args.cli_steps)
    if out["cli_end_to_end"] is None:
        out["cli_end_to_end_note"] = f"{args.cli_env} not registered: end-to-end run skipped"
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2)
    os.replace(tmp, args.json)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
