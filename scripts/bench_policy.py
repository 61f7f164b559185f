"""Closed-loop control latency of every policy, and the perception CNN in fp32 vs bf16.

1. One `Policy.step` (CNN + core) at batch 1 for every policy. Target (issue 2): CNN + NCP
   step ≤ 5 ms on one thread at 78×200. Policies are timed in interleaved rounds so that load
   from other processes hits all of them alike; the minimum is the machine's capability, the
   median what a busy machine gives.
2. The CNN alone (forward, no grad) at batch 1, 8 and 16, fp32 and bf16 autocast
   (`Policy.features`, the path `Policy.step`/`forward` take with ``precision="bf16"``), each
   on the fused inference path and on the plain modules (`PerceptionCNN.fast_inference`),
   interleaved, thread-CPU time: ms per frame and achieved GFLOP/s from the layer shapes
   (`PerceptionCNN.flops_per_frame`, 81.2 MFLOP at 78×200), beside the core's peak — both a
   measured one (a large single-thread matmul, fp32 and bf16) and the nominal one from the CPU
   flags and clock (FMA units × SIMD lanes × 2 × GHz; bf16 dot products at twice the fp32
   rate), so the distance to the limit is visible. bf16 is measured only where
   `policies.policy.supports_bf16` says the CPU has it natively.

    python scripts/bench_policy.py --json bench_policy.json [--rounds 200] [--cnn-rounds 60]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

import numpy as np
import torch

from policies.atomicio import atomic_write_json
from policies.factory import POLICY_NAMES, build_policy
from policies.policy import supports_bf16


def _cpu_flags() -> tuple[str, set[str], float | None]:
    model, flags, mhz = platform.processor() or platform.machine(), set(), None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine()):
                    model = val.strip()
                elif key == "flags" and not flags:
                    flags = set(val.split())
                elif key == "cpu MHz" and mhz is None:
                    mhz = float(val)
    except OSError:
        pass
    return model, flags, mhz


def nominal_peak_gflops(fma_units: int) -> dict[str, Any]:
    """Nominal single-core peak from the CPU flags and the reported clock (an estimate)."""
    model, flags, mhz = _cpu_flags()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    ghz = (mhz or 0.0) / 1000.0
    fp32 = fma_units * lanes * 2 * ghz
    return {"cpu": model, "ghz_reported": round(ghz, 3), "simd_fp32_lanes": lanes,
            "fma_units_assumed": fma_units, "fp32_gflops": round(fp32, 1),
            "bf16_gflops": round(2 * fp32, 1) if "avx512_bf16" in flags or "amx_bf16" in flags else None,
            "formula": "fma_units x fp32 lanes x 2 flop x GHz (bf16 dot products: 2x)"}


def measured_peak_gflops(n: int = 1024, reps: int = 5) -> dict[str, float | None]:
    """GFLOP/s of an n×n×n matmul on this thread (best thread-CPU time, so load from other
    processes does not count): the attainable peak, fp32 and bf16."""
    out: dict[str, float | None] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if dtype == torch.bfloat16 and not supports_bf16("cpu"):
            out[name] = None
            continue
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        best = min(_cpu_timed(lambda a=a, b=b: torch.mm(a, b)) for _ in range(reps))
        out[name] = round(2 * n ** 3 / best / 1e9, 1)
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_steps(hw: tuple[int, int], rounds: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (16, *hw, 3), dtype=np.uint8)
    policies = {n: build_policy(n, image_hw=hw).eval() for n in POLICY_NAMES}
    states = {n: p.initial_state(1) for n, p in policies.items()}
    cnn = policies["cnn"].cnn
    times: dict[str, list[float]] = {n: [] for n in (*POLICY_NAMES, "cnn-only")}
    for r in range(rounds + 10):
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
    return rows


def bench_cnn(hw: tuple[int, int], rounds: int, batches: tuple[int, ...]) -> dict[str, Any]:
    """The CNN forward per frame: fused inference path vs the plain modules
    (`PerceptionCNN.fast_inference`), fp32 vs bf16 autocast, every batch size, interleaved."""
    from policies.cnn import PerceptionCNN

    policy = build_policy("ncp-ltc", image_hw=hw).eval()
    flops = policy.cnn.flops_per_frame()
    precisions = ["fp32"] + (["bf16"] if supports_bf16("cpu") else [])
    rng = np.random.default_rng(1)
    inputs = {b: torch.from_numpy(rng.integers(0, 256, (b, *hw, 3), dtype=np.uint8)) for b in batches}
    configs = [(b, p, path) for b in batches for p in precisions for path in ("fused", "plain")]
    times: dict[tuple[int, str, str], list[float]] = {c: [] for c in configs}
    with torch.no_grad():
        for r in range(rounds + 3):  # interleaved: every configuration sees the same load
            for b, prec, path in configs:
                policy.precision = prec
                PerceptionCNN.fast_inference = path == "fused"
                t = _cpu_timed(lambda b=b: policy.features(inputs[b]))
                if r >= 3:
                    times[(b, prec, path)].append(t / b)
    policy.precision = "fp32"
    PerceptionCNN.fast_inference = True
    rows = []
    for (b, prec, path), ts in times.items():
        a = np.asarray(ts)
        rows.append({"batch": b, "precision": prec, "path": path,
                     "ms_per_frame_min": round(float(a.min()) * 1e3, 3),
                     "ms_per_frame_median": round(float(np.median(a)) * 1e3, 3),
                     "gflops_at_min": round(flops / float(a.min()) / 1e9, 1),
                     "gflops_at_median": round(flops / float(np.median(a)) / 1e9, 1)})
    by = {(r["batch"], r["precision"], r["path"]): r for r in rows}
    med = lambda b, p, path: by[(b, p, path)]["ms_per_frame_median"]  # noqa: E731
    speedups = {f"bf16_vs_fp32_batch{b}": round(med(b, "fp32", "fused") / med(b, "bf16", "fused"), 2)
                for b in batches if (b, "bf16", "fused") in by}
    fused = {f"fused_vs_plain_{p}_batch{b}": round(med(b, p, "plain") / med(b, p, "fused"), 2)
             for b in batches for p in precisions}
    return {"mflop_per_frame": round(flops / 1e6, 2), "rows": rows, "median_speedups": speedups,
            "fused_speedups": fused, "bf16_native": supports_bf16("cpu"),
            "timing": "thread CPU time per call, divided by the batch"}


def _cpu_timed(fn) -> float:
    c = time.thread_time()
    fn()
    return time.thread_time() - c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write results to this JSON file")
    ap.add_argument("--rounds", type=int, default=200, help="rounds of the Policy.step timing")
    ap.add_argument("--cnn-rounds", type=int, default=60, help="rounds of the CNN fp32/bf16 timing")
    ap.add_argument("--height", type=int, default=78)
    ap.add_argument("--width", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fma-units", type=int, default=2,
                    help="FMA pipes per core assumed for the nominal peak (2 on most x86 cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hw = (args.height, args.width)
    steps = bench_steps(hw, args.rounds)
    cnn = bench_cnn(hw, args.cnn_rounds, (1, 8, 16))
    peak = {"measured_matmul_1024": measured_peak_gflops(), "nominal": nominal_peak_gflops(args.fma_units)}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    result = {"benchmark": "policy_step", "image_hw": list(hw), "threads": args.threads,
              "rounds": args.rounds, "torch": torch.__version__, "machine": platform.machine(),
              "load_average_1_5_15": load, "target_ms": 5.0, "results": steps, "cnn": cnn,
              "peak_gflops": peak}
    print(f"{'policy':18s} {'min ms':>8s} {'median':>8s} {'p95':>8s} {'params':>8s}")
    for n, row in steps.items():
        print(f"{n:18s} {row['min_ms']:8.2f} {row['median_ms']:8.2f} {row['p95_ms']:8.2f} "
              f"{row.get('parameters', ''):>8}")
    print(f"\nCNN forward ({cnn['mflop_per_frame']} MFLOP/frame), ms/frame and GFLOP/s:")
    print(f"{'batch':>5s} {'prec':>5s} {'path':>6s} {'min ms':>8s} {'median':>8s} {'GFLOP/s(min)':>13s} "
          f"{'(median)':>9s}")
    for r in cnn["rows"]:
        print(f"{r['batch']:5d} {r['precision']:>5s} {r['path']:>6s} {r['ms_per_frame_min']:8.3f} "
              f"{r['ms_per_frame_median']:8.3f} {r['gflops_at_min']:13.1f} {r['gflops_at_median']:9.1f}")
    print("bf16 speed-up, fused path (medians):", cnn["median_speedups"] or "n/a (no native bf16)")
    print("fused path vs plain modules (medians):", cnn["fused_speedups"])
    m, nom = peak["measured_matmul_1024"], peak["nominal"]
    print(f"core peak: measured 1024³ matmul fp32 {m['fp32']} GFLOP/s, bf16 {m['bf16']}; nominal "
          f"fp32 {nom['fp32_gflops']}, bf16 {nom['bf16_gflops']} ({nom['formula']}, "
          f"{nom['ghz_reported']} GHz reported)")
    if args.json:
        atomic_write_json(args.json, result, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
