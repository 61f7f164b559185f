"""Benchmark our LTC/CfC beside ncps 1.0.1 and torch's LSTM/GRU (docs/cells.md "Benchmark").

Paper NCP wiring (32 sensory → 12 inter → 6 command → 1 motor), input 32, batch 32,
sequence 64, one thread. Per model: forward ms (no grad), forward+backward ms, one step at
batch 1 in µs (no grad, as in closed-loop control), and the peak resident-memory increase
of a forward+backward. Each model runs in its own subprocess (clean allocator, honest peak
memory); times are medians of repeats, wall clock and process CPU time (the latter is
steadier on a shared machine). Ratios are within this run only.

    python scripts/bench_cells.py --json bench_cells.json [--repeats 15] [--no-ckernel]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODELS = ["ours-ltc", "ours-cfc", "ncps-ltc", "ncps-cfc", "lstm-64", "gru-64"]
B, T, F = 32, 64, 32


def _build(name: str):  # noqa: ANN202 - returns (module, step_fn, initial state)
    import torch

    torch.manual_seed(0)
    if name.startswith("ours"):
        from policies import LTC, CfC, Wiring

        w = Wiring.ncp(seed=0)
        m = LTC(w) if name == "ours-ltc" else CfC(w)

        def step(x, h):
            return m.step(x, h, 0.1)

        return m, step, torch.zeros(1, 19)
    if name.startswith("ncps"):
        import ncps.torch as nt
        import ncps.wirings as nw

        wiring = nw.NCP(12, 6, 1, 6, 4, 6, 6)
        m = nt.LTC(F, wiring) if name == "ncps-ltc" else nt.CfC(F, wiring)

        def step(x, h):
            return m.rnn_cell(x, h, 1.0)

        return m, step, torch.zeros(1, 19)
    cls = torch.nn.LSTM if name == "lstm-64" else torch.nn.GRU
    m = cls(F, 64, batch_first=True)
    if name == "lstm-64":
        state: Any = (torch.zeros(1, 1, 64), torch.zeros(1, 1, 64))
    else:
        state = torch.zeros(1, 1, 64)

    def step(x, h):
        return m(x[:, None], h)

    return m, step, state


def _median_times(fn, repeats: int) -> tuple[float, float]:
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def _child(name: str, repeats: int) -> dict[str, Any]:
    import resource

    import torch

    torch.set_num_threads(1)
    m, step, h0 = _build(name)
    x = torch.randn(B, T, F)
    x1 = torch.randn(1, F)
    slow = name.startswith("ncps")
    reps = max(3, repeats // 3) if slow else repeats

    def fwd():
        with torch.no_grad():
            m(x)

    def fwd_bwd():
        y, _ = m(x)
        y.sum().backward()

    fwd()  # warm-up (also compiles our C kernels on first use)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fwd_bwd()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    f_wall, f_cpu = _median_times(fwd, reps)
    fb_wall, fb_cpu = _median_times(fwd_bwd, reps)
    n_steps = 300 if slow else 2000
    h = h0
    with torch.no_grad():
        for _ in range(50):
            step(x1, h)

        def steps():
            for _ in range(n_steps):
                step(x1, h)

        s_wall, s_cpu = _median_times(steps, 5)
    out: dict[str, Any] = {
        "model": name,
        "forward_ms": f_wall * 1e3, "forward_cpu_ms": f_cpu * 1e3,
        "fwd_bwd_ms": fb_wall * 1e3, "fwd_bwd_cpu_ms": fb_cpu * 1e3,
        "step_us": s_wall / n_steps * 1e6, "step_cpu_us": s_cpu / n_steps * 1e6,
        "peak_rss_increase_mb": max(0, rss1 - rss0) / 1024.0,
        "parameters": (m.effective_parameter_count() if hasattr(m, "effective_parameter_count")
                       else sum(p.numel() for p in m.parameters() if p.requires_grad)),
        "repeats": reps,
    }
    if name.startswith("ours"):
        from policies import _ckernel

        out["kernel"] = ("C: " if _ckernel.lib() is not None else "pure PyTorch: ") + _ckernel.status()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, required=True, help="write results here")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--models", nargs="*", default=MODELS, choices=MODELS)
    ap.add_argument("--no-ckernel", action="store_true", help="benchmark the pure-PyTorch fallback")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.repeats)))
        return 0
    from tqdm import tqdm

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if args.no_ckernel:
        env["LIQUID_DRIVE_NO_CKERNEL"] = "1"
    rows = []
    for name in tqdm(args.models, desc="bench_cells", file=sys.stderr):
        res = subprocess.run([sys.executable, __file__, "--json", os.devnull, "--child", name,
                              "--repeats", str(args.repeats)], capture_output=True, text=True,
                             env=env, check=False)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            raise SystemExit(f"benchmark of {name} failed")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    by = {r["model"]: r for r in rows}
    ratios: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for cell, need in (("ltc", 10.0), ("cfc", 5.0)):
        o, n = by.get(f"ours-{cell}"), by.get(f"ncps-{cell}")
        if o and n:
            r = {k: n[k] / o[k] for k in ("forward_ms", "fwd_bwd_ms", "step_us",
                                           "fwd_bwd_cpu_ms", "step_cpu_us")}
            ratios[cell] = r
            targets[f"{cell}_fwd_bwd_speedup>={need:g}x"] = r["fwd_bwd_ms"] >= need
        if o:
            targets[f"{cell}_step_us<=40"] = o["step_us"] <= 40.0
            targets[f"{cell}_step_cpu_us<=40"] = o["step_cpu_us"] <= 40.0
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = {
        "load_average_1_5_15": load, "cpus": os.cpu_count(),
        "config": {"batch": B, "seq": T, "input": F, "threads": 1, "wiring": "paper NCP 32-12-6-1",
                   "torch": __import__("torch").__version__, "machine": platform.processor()
                   or platform.machine(), "no_ckernel": args.no_ckernel},
        "results": rows, "speedup_vs_ncps": ratios, "targets_met": targets,
    }
    tmp = args.json.with_suffix(args.json.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, args.json)
    print("| model | forward ms | fwd+bwd ms | step µs (B=1) | CPU: fwd+bwd ms / step µs "
          "| peak RSS +MB | params |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['forward_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | {r['step_us']:.1f} "
              f"| {r['fwd_bwd_cpu_ms']:.2f} / {r['step_cpu_us']:.1f} "
              f"| {r['peak_rss_increase_mb']:.1f} | {r['parameters']} |")
    for cell, r in ratios.items():
        print(f"\n{cell.upper()} speed-up vs ncps: forward {r['forward_ms']:.1f}×, "
              f"fwd+bwd {r['fwd_bwd_ms']:.1f}× (CPU time {r['fwd_bwd_cpu_ms']:.1f}×), "
              f"step {r['step_us']:.1f}×")
    print("\ntargets:", ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items()))
    if load is not None and load[0] > (os.cpu_count() or 1):
        print(f"warning: load average {load[0]:.1f} on {os.cpu_count()} CPUs: wall-clock times are "
              "inflated; compare ratios and the CPU-time columns", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
