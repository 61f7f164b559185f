"""Benchmark the evaluation loop: policy step, corruptions, closed-loop steps/s (1 and 2 workers).

    .venv/bin/python scripts/bench_eval.py --json bench_eval.json [--steps 200] [--episodes 4]

Targets (issue 6): the policy step (CNN + NCP, batch 1, one thread) <= 5 ms; fog <= ~1 ms at
78x200. Everything runs with one torch thread per process; compare numbers within one run
(the machine is shared, absolute timings move with its load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _median_ms(fn, n: int, warmup: int = 20) -> float:
    """Median wall ms per call."""
    return _timed(fn, n, warmup)[0]


def _timed(fn, n: int, warmup: int = 20) -> tuple[float, float]:
    """Median wall ms and median thread-CPU ms per call (CPU time is less sensitive to other
    processes sharing the cores than wall time)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - t)
    return float(np.median(wall) * 1e3), float(np.median(cpu) * 1e3)


def bench_policy_step(names: list[str], n: int) -> dict:
    from policies.factory import build_policy

    frame = np.random.default_rng(0).integers(0, 255, (78, 200, 3), dtype=np.uint8)
    out = {}
    for name in names:
        p = build_policy(name).eval()
        h = p.initial_state(1)

        def step(p=p, h=h):
            p.step(frame, h, 0.1)

        with torch.inference_mode():
            cnn_ms, cnn_cpu = _timed(lambda p=p: p.cnn(torch.from_numpy(frame).unsqueeze(0)), n)
            step_ms, step_cpu = _timed(step, n)
        out[name] = {"step_ms": step_ms, "step_cpu_ms": step_cpu, "cnn_ms": cnn_ms, "cnn_cpu_ms": cnn_cpu}
    return out


def bench_corruptions(n: int) -> dict:
    from driving import corruptions as C

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (78, 200, 3), dtype=np.uint8)
    depth = rng.uniform(2, 200, (78, 200)).astype(np.float32)
    depth[:25] = 1000.0
    return {name: {f"sev{s}_ms": _median_ms(lambda name=name, s=s: C.apply(name, frame, depth, s, rng), n)
                   for s in (1, 5)} for name in C.CORRUPTIONS}


def bench_closed_loop(run_dir: str, env_id: str, corruption: str, severity: int, steps: int,
                      episodes: int) -> dict:
    from driving.evaluate import EvalSpec, Task, run_tasks

    spec = EvalSpec(checkpoint=run_dir, env_id=env_id, episodes=episodes, corruptions=(corruption,),
                    severities=(severity,), steps=steps, expert_reference=False)
    task_list = [Task("policy", corruption, severity, i) for i in range(episodes)]
    out = {"env": env_id, "corruption": corruption, "severity": severity, "steps": steps, "episodes": episodes}
    for workers in (1, 2):
        # Worker start-up (spawn, imports, env + policy build) measured on a 1-step run.
        tiny = EvalSpec(**{**spec.__dict__, "steps": 1})
        t = time.perf_counter()
        run_tasks(tiny, task_list[:workers], workers=workers, progress=False)
        startup = time.perf_counter() - t
        t = time.perf_counter()
        res = run_tasks(spec, task_list, workers=workers, progress=False)
        wall = time.perf_counter() - t
        total = sum(r["steps"] for r in res)
        out[f"workers_{workers}"] = {
            "wall_s": wall,
            "steps_per_s": total / wall,
            "steps_per_s_excluding_startup": total / max(1e-9, wall - (startup if workers > 1 else 0.0)),
            "startup_s": startup,
        }
    out["speedup_2_vs_1"] = out["workers_2"]["steps_per_s"] / out["workers_1"]["steps_per_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, metavar="PATH", help="write results here")
    ap.add_argument("--env", default="liquid_drive/LaneKeeping-v0")
    ap.add_argument("--corruption", default="fog")
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200, help="steps per episode")
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=200, help="timed calls for micro-benchmarks")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from policies.checkpoint import save_checkpoint
    from policies.factory import build_policy

    result: dict = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "threads": torch.get_num_threads()},
        "target_policy_step_ms": 5.0,
    }
    print("policy step ...", file=sys.stderr)
    result["policy_step"] = bench_policy_step(["ncp-cfc", "ncp-ltc", "lstm", "cnn"], args.repeats)
    result["policy_step_ok"] = result["policy_step"]["ncp-cfc"]["step_cpu_ms"] <= 5.0
    print("corruptions ...", file=sys.stderr)
    result["corruptions_78x200"] = bench_corruptions(args.repeats)
    print("closed loop ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        save_checkpoint(run, build_policy("ncp-cfc"), {"note": "untrained, benchmark only"})
        result["closed_loop_ncp_cfc"] = bench_closed_loop(run, args.env, args.corruption, args.severity,
                                                          args.steps, args.episodes)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    ps = result["policy_step"]["ncp-cfc"]
    cl = result["closed_loop_ncp_cfc"]
    print(f"ncp-cfc step {ps['step_ms']:.2f} ms wall, {ps['step_cpu_ms']:.2f} ms CPU (cnn "
          f"{ps['cnn_cpu_ms']:.2f} ms CPU); fog sev5 "
          f"{result['corruptions_78x200']['fog']['sev5_ms']:.3f} ms; closed loop "
          f"{cl['workers_1']['steps_per_s']:.0f} steps/s (1 worker), "
          f"{cl['workers_2']['steps_per_s']:.0f} (2 workers) → {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
