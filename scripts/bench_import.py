"""Import speed: frames/s of `driving import --format donkeycar` on a 160x120 JPEG tub, one core.

The tub is written from simulator frames (driving.importers.writers), then imported into a
fresh dataset per round, with the writer's fsyncs on (as the CLI runs). Reported: wall and
process-CPU frames/s (CPU time is what the import costs; wall time also counts waiting
for a core on a shared machine), median over rounds, for the stored size 120x160 (no
resize) and the paper's 78x200 with a 35 % top crop. Target: >= 500 frames/s.

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None, metavar="PATH")
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
