"""Benchmark the evaluation loop: policy step, corruptions, where a closed-loop step's time
goes, and closed-loop steps per CPU second one episode at a time vs K in lock step (fp32,
and bf16 where the CPU has it).

    .venv/bin/python scripts/bench_eval.py --json bench_eval.json [--steps 200] [--episodes 16]

Targets (issue 6): the policy step (CNN + NCP, batch 1, one thread) <= 5 ms; fog <= ~1 ms at
78x200. Issue 14: closed-loop steps per CPU second with K episodes in lock step >= 2x one at a
time (fp32), more with bf16. Everything runs with one torch thread per process; compare
numbers within one run (the machine is shared, absolute timings move with its load).

Every closed-loop run also splits its CPU time into the policy step (CNN + core, measured
around `Policy.step`) and the rest (env physics + dashcam render, recoveries, corruption,
bookkeeping), so the Amdahl bound of lock-step batching is printed from measurement: batching
only shrinks the policy's share, so K1 / K1-or-any-K can at best reach
(K1 ms per step) / (rest ms per step at K). ``--plain-cnn`` (default on) also runs K=1 and
the largest K with the CNN's fused inference path switched off
(`PerceptionCNN.fast_inference = False`: the plain nn.Conv2d modules, with the same two-pass
whitening), to show what the fused path gives within one run. The closed-loop runs include
each run's setup (loading the checkpoint, building K envs), as an evaluation does.
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


class _PolicyClock:
    """Thread-CPU seconds spent inside `Policy.step` and in the CNN (`Policy.features`) while
    active: the class methods are wrapped for the duration of one closed-loop run."""

    def __init__(self) -> None:
        self.policy_s = 0.0
        self.cnn_s = 0.0

    def __enter__(self) -> _PolicyClock:
        from policies.policy import Policy

        self._saved = (Policy.step, Policy.features)
        step, features = self._saved

        def timed_step(p, *a, **k):
            c = time.thread_time()
            try:
                return step(p, *a, **k)
            finally:
                self.policy_s += time.thread_time() - c

        def timed_features(p, *a, **k):
            c = time.thread_time()
            try:
                return features(p, *a, **k)
            finally:
                self.cnn_s += time.thread_time() - c

        Policy.step, Policy.features = timed_step, timed_features
        return self

    def __exit__(self, *exc) -> None:
        from policies.policy import Policy

        Policy.step, Policy.features = self._saved


def bench_closed_loop(run_dir: str, env_id: str, corruption: str, severity: int, steps: int,
                      episodes: int, batches: list[int], precisions: list[str], repeats: int,
                      plain_cnn: bool = True) -> dict:
    """Closed-loop steps/s on one core: one episode at a time vs K in lock step (one process,
    one thread). Each setting runs ``repeats`` times, interleaved, best kept; steps per CPU
    second (process time) is the per-core figure, wall steps/s is beside it. Each row also
    gives the CPU ms per step inside the policy step, in the CNN, and in everything else."""
    from driving.evaluate import EvalSpec, Task, run_tasks
    from policies.cnn import PerceptionCNN

    task_list = [Task("policy", corruption, severity, i) for i in range(episodes)]
    out: dict = {"env": env_id, "corruption": corruption, "severity": severity, "steps": steps,
                 "episodes": episodes, "runs": {}}
    settings = [(k, p, True) for p in precisions for k in batches]
    if plain_cnn:
        settings += [(k, "fp32", False) for k in sorted({min(batches), max(batches)})]
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for k, prec, fused in settings:
            spec = EvalSpec(checkpoint=run_dir, env_id=env_id, episodes=episodes, corruptions=(corruption,),
                            severities=(severity,), steps=steps, expert_reference=False, batch_episodes=k,
                            precision=prec)
            PerceptionCNN.fast_inference = fused
            try:
                with _PolicyClock() as clock:
                    t, c = time.perf_counter(), time.process_time()
                    res = run_tasks(spec, task_list, workers=1, progress=False)
                    wall, cpu = time.perf_counter() - t, time.process_time() - c
            finally:
                PerceptionCNN.fast_inference = True
            total = sum(r["steps"] for r in res)
            key = f"K{k}_{prec}" + ("" if fused else "_plain_cnn")
            row = {"batch_episodes": k, "precision": prec, "cnn_path": "fused" if fused else "plain",
                   "wall_s": wall, "cpu_s": cpu,
                   "steps": total, "steps_per_s": total / wall, "steps_per_cpu_s": total / cpu,
                   "cpu_ms_per_step": 1e3 * cpu / total,
                   "policy_cpu_ms_per_step": 1e3 * clock.policy_s / total,
                   "cnn_cpu_ms_per_step": 1e3 * clock.cnn_s / total,
                   "rest_cpu_ms_per_step": 1e3 * (cpu - clock.policy_s) / total,
                   "mean_abs_cross_track_m": float(np.mean([r["mean_abs_cross_track_m"] for r in res])),
                   "crashes": int(sum(r["crashes"] for r in res))}
            if key not in best or row["steps_per_cpu_s"] > best[key]["steps_per_cpu_s"]:
                best[key] = row
    out["runs"] = best
    base_key = f"K{min(batches)}_{precisions[0]}"
    base = best[base_key]["steps_per_cpu_s"]
    out["speedup_vs_K1_fp32"] = {k: v["steps_per_cpu_s"] / base for k, v in best.items()}
    # Amdahl: lock-step batching amortises the policy step only; the rest stays per step.
    t1 = best[base_key]["cpu_ms_per_step"]
    out["amdahl"] = {
        "K1_fp32_cpu_ms_per_step": t1,
        "bound_if_policy_were_free": {k: t1 / v["rest_cpu_ms_per_step"] for k, v in best.items()
                                      if v["batch_episodes"] > 1},
        "policy_share": {k: v["policy_cpu_ms_per_step"] / v["cpu_ms_per_step"] for k, v in best.items()},
        "note": "bound = K1 CPU ms per step / the rest's CPU ms per step at that K (env physics, "
                "dashcam render, recoveries, corruption, bookkeeping): the speed-up if the policy "
                "step cost nothing",
    }
    return out


def bench_step_split(env_id: str, n: int, bf16: bool) -> dict:
    """Where a closed-loop step's time goes: the env (physics + dashcam render) vs the policy
    step per frame at K = 1, 8, 16 — fused CNN path, plain modules, and bf16 — timed in
    interleaved rounds (median thread-CPU time)."""
    from envs.contract import make_env
    from policies.cnn import PerceptionCNN
    from policies.factory import build_policy

    env = make_env(env_id, max_steps=n + 10)
    env.reset(seed=0)
    act = np.zeros(1, np.float32)
    env_ms, env_cpu = _timed(lambda: env.step(act), n, warmup=5)
    frame = env.reset(seed=0)[0]["image"]
    p = build_policy("ncp-cfc").eval()
    out = {"env_step_ms": env_ms, "env_step_cpu_ms": env_cpu}
    configs = [("", "fp32", True), ("_plain_cnn", "fp32", False)] + ([("_bf16", "bf16", True)] if bf16 else [])
    with torch.inference_mode():
        for k in (1, 8, 16):
            frames = np.repeat(frame[None], k, axis=0)
            h = p.initial_state(k)
            dt = torch.full((k,), 0.1)
            cpu: dict[str, list[float]] = {tag: [] for tag, _, _ in configs}
            for r in range(max(20, n // k) + 3):
                for tag, prec, fused in configs:
                    p.precision, PerceptionCNN.fast_inference = prec, fused
                    c = time.thread_time()
                    p.step(frames, h, dt)
                    if r >= 3:
                        cpu[tag].append(time.thread_time() - c)
            p.precision, PerceptionCNN.fast_inference = "fp32", True
            for tag, ts in cpu.items():
                out[f"policy_step_K{k}{tag}_cpu_ms_per_frame"] = float(np.median(ts)) * 1e3 / k
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, metavar="PATH", help="write results here")
    ap.add_argument("--env", default="liquid_drive/LaneKeeping-v0")
    ap.add_argument("--corruption", default="fog")
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200, help="steps per episode")
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=200, help="timed calls for micro-benchmarks")
    ap.add_argument("--batches", default="1,4,8,16", help="lock-step batch sizes K to compare")
    ap.add_argument("--loop-repeats", type=int, default=2, help="interleaved repeats of each closed-loop setting")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure bf16 autocast of the CNN where supported")
    ap.add_argument("--plain-cnn", action=argparse.BooleanOptionalAction, default=True,
                    help="also run K=min and K=max fp32 with the CNN's fused inference path off")
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
    batches = [int(x) for x in args.batches.split(",")]
    precisions = ["fp32"]
    if args.bf16:
        from policies.policy import supports_bf16

        if supports_bf16("cpu"):
            precisions.append("bf16")
    result["step_split"] = bench_step_split(args.env, 100, "bf16" in precisions)
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        save_checkpoint(run, build_policy("ncp-cfc"), {"note": "untrained, benchmark only"})
        result["closed_loop_ncp_cfc"] = bench_closed_loop(run, args.env, args.corruption, args.severity,
                                                          args.steps, args.episodes, batches, precisions,
                                                          args.loop_repeats, args.plain_cnn)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    ps = result["policy_step"]["ncp-cfc"]
    cl = result["closed_loop_ncp_cfc"]
    print(f"ncp-cfc step {ps['step_ms']:.2f} ms wall, {ps['step_cpu_ms']:.2f} ms CPU (cnn "
          f"{ps['cnn_cpu_ms']:.2f} ms CPU); env step {result['step_split']['env_step_cpu_ms']:.2f} ms CPU",
          file=sys.stderr)
    split = result["step_split"]
    print("  CNN + core per frame (CPU ms), fused path / plain modules: " + ", ".join(
        f"K{k} {split[f'policy_step_K{k}_cpu_ms_per_frame']:.2f} / "
        f"{split[f'policy_step_K{k}_plain_cnn_cpu_ms_per_frame']:.2f}"
        + (f" (bf16 {split[f'policy_step_K{k}_bf16_cpu_ms_per_frame']:.2f})"
           if f"policy_step_K{k}_bf16_cpu_ms_per_frame" in split else "") for k in (1, 8, 16)),
        file=sys.stderr)
    print(f"  {'setting':22s} {'steps/CPU-s':>11s} {'wall':>6s} {'vs K1':>6s} {'ms/step':>8s} "
          f"{'policy':>7s} {'cnn':>6s} {'rest':>6s}", file=sys.stderr)
    for key, row in cl["runs"].items():
        print(f"  {key:22s} {row['steps_per_cpu_s']:11.0f} {row['steps_per_s']:6.0f} "
              f"{cl['speedup_vs_K1_fp32'][key]:6.2f} {row['cpu_ms_per_step']:8.2f} "
              f"{row['policy_cpu_ms_per_step']:7.2f} {row['cnn_cpu_ms_per_step']:6.2f} "
              f"{row['rest_cpu_ms_per_step']:6.2f}", file=sys.stderr)
    print("  Amdahl bound (K1 ms/step ÷ the rest's ms/step, i.e. a free policy): " + ", ".join(
        f"{k} {v:.2f}x" for k, v in cl["amdahl"]["bound_if_policy_were_free"].items()), file=sys.stderr)
    print(f"→ {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
