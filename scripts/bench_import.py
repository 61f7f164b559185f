"""Import speed: frames/s of `driving import --format donkeycar` on a 160x120 JPEG tub, one core.

The tub is written from simulator frames (driving.importers.writers), then imported into a
fresh dataset per round, with the writer's fsyncs on (as the CLI runs). Reported: wall and
process-CPU frames/s (CPU time is what the import costs; wall time also counts waiting
for a core on a shared machine), median over rounds, for the stored size 120x160 (no
resize) and the paper's 78x200 with a 35 % top crop. Target: >= 500 frames/s.

With `--passive` it also times the passive test on the imported 78x200 episodes against the
closed-loop policy step (batch 1, `Policy.step` per frame) on the same frames, thread CPU
time, an untrained ncp-cfc (the target: the passive test at the step's speed or better).

    OMP_NUM_THREADS=1 python scripts/bench_import.py --frames 2000 --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from driving.importers import ImportOptions, run_import  # noqa: E402
from driving.importers.writers import sim_drive, write_tub  # noqa: E402


def bench_passive(tmp: Path, frames: int) -> dict:
    """Passive test (clean and noise:3, no SSIM) vs one closed-loop policy step per frame."""
    import torch

    from driving.dataset import Dataset
    from driving.passive import DepthSource, run_condition
    from policies.factory import build_policy

    out = tmp / "ds_passive"
    run_import("donkeycar", tmp / "tub", out, ImportOptions(size=(78, 200), crop=(0.35, 0.0),
                                                           max_episode_frames=200), progress=False)
    ds = Dataset(out)
    policy = build_policy("ncp-cfc", seed=0).eval()
    eps = list(range(len(ds)))
    depth = DepthSource(ds)
    res = {"episodes": len(eps), "frames": ds.num_frames}
    for name, sev in (("none", 0), ("noise", 3)):
        c0 = time.thread_time()
        run_condition(policy, ds, eps, name, sev, seed=0, depth=depth, batch_episodes=8, chunk=32, ssim_at=None)
        res[f"passive_{name}_frames_per_cpu_s"] = round(ds.num_frames / (time.thread_time() - c0), 1)
    fr = ds.frames(0)
    h = None
    c0 = time.thread_time()
    with torch.no_grad():
        for f in fr:
            _, h = policy.step(f, h, 0.05)
    res["closed_loop_step_frames_per_cpu_s"] = round(len(fr) / (time.thread_time() - c0), 1)
    res["passive_clean_vs_step"] = round(res["passive_none_frames_per_cpu_s"]
                                         / res["closed_loop_step_frames_per_cpu_s"], 2)
    print(f"passive: {res}", file=sys.stderr)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None, metavar="PATH")
    ap.add_argument("--passive", action="store_true", help="also time the passive test vs the policy step")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    tmp = Path(tempfile.mkdtemp(prefix="bench_import_"))
    try:
        unique = min(args.frames, 300)
        frames, steer, _ = sim_drive(unique, (120, 160), seed=0)
        reps = -(-args.frames // unique)
        frames = np.concatenate([frames] * reps)[: args.frames]
        steer = np.concatenate([steer] * reps)[: args.frames]
        ts = 1_700_000_000_000 + np.arange(args.frames) * 50
        write_tub(tmp / "tub", frames, steer, ts, quality=90)
        jpeg_bytes = sum(p.stat().st_size for p in (tmp / "tub" / "images").iterdir()) / args.frames
        results = {}
        for label, opts in (("120x160", ImportOptions(size=(120, 160))),
                            ("78x200_crop", ImportOptions(size=(78, 200), crop=(0.35, 0.0)))):
            wall, cpu = [], []
            for r in range(args.rounds):
                out = tmp / f"ds_{label}_{r}"
                w0, c0 = time.perf_counter(), time.process_time()
                s = run_import("donkeycar", tmp / "tub", out, opts, progress=False)
                w1, c1 = time.perf_counter(), time.process_time()
                assert s["frames_written"] == args.frames, s
                wall.append(args.frames / (w1 - w0))
                cpu.append(args.frames / (c1 - c0))
                shutil.rmtree(out)
            results[label] = {"frames_per_s_wall_median": round(statistics.median(wall), 1),
                              "frames_per_s_cpu_median": round(statistics.median(cpu), 1),
                              "rounds_wall": [round(v, 1) for v in wall], "rounds_cpu": [round(v, 1) for v in cpu]}
            print(f"{label}: {results[label]['frames_per_s_wall_median']} frames/s wall, "
                  f"{results[label]['frames_per_s_cpu_median']} frames/s CPU (median of {args.rounds})",
                  file=sys.stderr)
        if args.passive:
            results["passive"] = bench_passive(tmp, args.frames)
        doc = {"benchmark": "import donkeycar tub, 160x120 JPEG (quality 90), one thread",
               "frames": args.frames, "jpeg_bytes_per_frame": round(jpeg_bytes), "target_frames_per_s": 500,
               "load_average": os.getloadavg()[0], "results": results}
        if args.json:
            from policies.atomicio import atomic_write_json

            atomic_write_json(args.json, doc)
        print(json.dumps(doc, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
