"""Closed-loop control latency of every policy: one `Policy.step` (CNN + core) at batch 1.

Target (issue 2): CNN + NCP step ≤ 5 ms on one thread at 78×200. Policies are timed in
interleaved rounds so that load from other processes hits all of them alike; the minimum is
the machine's capability, the median what a busy machine gives.

    python scripts/bench_policy.py --json bench_policy.json [--rounds 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from policies.factory import POLICY_NAMES, build_policy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write results to this JSON file")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--height", type=int, default=78)
    ap.add_argument("--width", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hw = (args.height, args.width)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (16, *hw, 3), dtype=np.uint8)
    policies = {n: build_policy(n, image_hw=hw).eval() for n in POLICY_NAMES}
    states = {n: p.initial_state(1) for n, p in policies.items()}
    cnn = policies["cnn"].cnn
    times: dict[str, list[float]] = {n: [] for n in (*POLICY_NAMES, "cnn-only")}
    for r in range(args.rounds + 10):
        img = frames[r % len(frames)]
        for n, p in policies.items():
            t0 = time.perf_counter()
            _, states[n] = p.step(img, states[n], dt=0.1)
            if r >= 10:
                times[n].append(time.perf_counter() - t0)
        x = torch.from_numpy(img)[None]
        with torch.no_grad():
            t0 = time.perf_counter()
            cnn(x)
            if r >= 10:
                times["cnn-only"].append(time.perf_counter() - t0)
    rows = {}
    for n, ts in times.items():
        a = np.asarray(ts) * 1e3
        rows[n] = {"min_ms": round(float(a.min()), 3), "median_ms": round(float(np.median(a)), 3),
                   "p95_ms": round(float(np.percentile(a, 95)), 3)}
        if n in policies:
            rows[n]["parameters"] = policies[n].parameter_count()
    result = {"benchmark": "policy_step", "image_hw": list(hw), "threads": args.threads,
              "rounds": args.rounds, "torch": torch.__version__, "machine": platform.machine(),
              "target_ms": 5.0, "results": rows}
    print(f"{'policy':12s} {'min ms':>8s} {'median':>8s} {'p95':>8s} {'params':>8s}")
    for n, row in rows.items():
        print(f"{n:12s} {row['min_ms']:8.2f} {row['median_ms']:8.2f} {row['p95_ms']:8.2f} "
              f"{row.get('parameters', ''):>8}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
