"""Training speed of every policy at the paper's camera size (78×200), one thread.

For each policy it times the whole training step of `driving.train` (augmentation, forward
through CNN and core over B windows of T frames, the weighted loss, backward, gradient
clipping, Adam), and separately the recurrent core (+ readout) alone on precomputed CNN
features, to report the core's share of the step. Policies are timed in interleaved rounds
within one process, so a burst of load from other processes hits all of them alike, and
the medians are compared. Peak memory is measured per policy in a fresh child process
(VmHWM of /proc/self/status, and its growth over the process's RSS after imports).

Target (issue 5): an NCP policy's training step ≤ 1.25 × the feed-forward CNN policy's.

    python scripts/bench_train.py --json bench_train.json [--batch 16 --seq-len 16 --rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

TARGET_RATIO = 1.25


def _batch(batch: int, seq: int, hw: tuple[int, int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (batch, seq, *hw, 3), dtype=torch.uint8, generator=g),
        "steering": (torch.rand(batch, seq, generator=g) - 0.5),
        "dt": 0.1 + 0.01 * torch.rand(batch, seq, generator=g),
    }


class Bench:
    """One policy with its optimizer and a fixed batch, timed step by step."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        from driving.train import TrainConfig, make_optimizer
        from policies.factory import build_policy

        self.name = name
        self.cfg = TrainConfig(data="-", out="-", policy=name, batch=args.batch, seq_len=args.seq_len)
        self.policy = build_policy(name, (78, 200), seed=0)
        self.opt = make_optimizer(self.policy, self.cfg)
        self.batch = _batch(args.batch, args.seq_len, (78, 200))
        self.gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            b, t = args.batch, args.seq_len
            self.features = self.policy.cnn(self.batch["image"].reshape(b * t, 78, 200, 3)).reshape(b, t, -1)
        self.step_s: list[float] = []
        self.core_s: list[float] = []

    def step(self) -> float:
        from torch import nn

        from driving.augment import augment_windows
        from driving.train import weighted_mse

        p, b = self.policy, self.batch
        t0 = time.perf_counter()
        images = augment_windows(b["image"], self.gen)
        pred, _ = p(images, None, b["dt"] if p.uses_time else None)
        loss, _ = weighted_mse(pred, b["steering"], self.cfg.alpha)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(p.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return time.perf_counter() - t0

    def core_step(self) -> float:
        """Forward + backward of the core and readout alone (the CNN's features fixed)."""
        p = self.policy
        feats = self.features.clone().requires_grad_(True)
        dt = self.batch["dt"] / p.time_unit_s if p.uses_time else None
        t0 = time.perf_counter()
        steering, _, _ = p._run(feats, p.initial_state(feats.shape[0]), dt, False)  # noqa: SLF001
        steering.square().mean().backward()
        return time.perf_counter() - t0


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmHWM is reset by exec, unlike ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: best effort


def _memory_child(name: str, batch: int, seq: int) -> None:
    """Run in a fresh process: RSS after imports, then peak RSS over 3 training steps."""
    args = argparse.Namespace(batch=batch, seq_len=seq)
    import driving.train  # noqa: F401
    import policies.factory  # noqa: F401

    base = _status_kb("VmRSS")
    bench = Bench(name, args)
    for _ in range(3):
        bench.step()
    peak = _status_kb("VmHWM")
    print(json.dumps({"base_kb": base, "peak_kb": peak}))


def measure_memory(name: str, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", name, "--batch", str(args.batch),
         "--seq-len", str(args.seq_len)],
        capture_output=True, text=True, env=env, check=True,
    ).stdout.strip().splitlines()[-1]
    doc = json.loads(out)
    return {"peak_rss_mb": doc["peak_kb"] / 1024, "training_rss_increase_mb": (doc["peak_kb"] - doc["base_kb"]) / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--batch", type=int, default=16, help="windows per step")
    parser.add_argument("--seq-len", type=int, default=16, help="frames per window")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per policy (after one warm-up)")
    parser.add_argument("--policies", default="", help="comma-separated names (default: all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-policy memory children")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.memory_child:
        _memory_child(args.memory_child, args.batch, args.seq_len)
        return 0

    from tqdm import tqdm

    from policies.factory import POLICY_NAMES

    names = [n for n in args.policies.split(",") if n] or list(POLICY_NAMES)
    benches = [Bench(n, args) for n in names]
    for b in benches:  # warm-up (allocator, oneDNN kernels)
        b.step()
        b.core_step()
    for _ in tqdm(range(args.rounds), desc="bench_train rounds", file=sys.stderr):
        for b in benches:
            b.step_s.append(b.step())
            b.core_s.append(b.core_step())
    frames = args.batch * args.seq_len
    results: dict[str, dict] = {}
    for b in benches:
        step = statistics.median(b.step_s)
        core = statistics.median(b.core_s)
        results[b.name] = {
            "step_ms_median": 1e3 * step,
            "step_ms_min": 1e3 * min(b.step_s),
            "frames_per_s": frames / step,
            "core_ms_median": 1e3 * core,
            "core_share": core / step,
            "parameters": int(sum(p.numel() for p in b.policy.parameters())),
        }
    if not args.no_memory:
        for name in tqdm(names, desc="memory", file=sys.stderr):
            results[name].update(measure_memory(name, args))
    ratios = {}
    if "cnn" in results:
        base = results["cnn"]["step_ms_median"]
        ratios = {n: r["step_ms_median"] / base for n, r in results.items() if n.startswith("ncp")}
    doc = {
        "benchmark": "training step (augment + forward + weighted loss + backward + clip + Adam)",
        "image_hw": [78, 200],
        "batch": args.batch,
        "seq_len": args.seq_len,
        "frames_per_step": frames,
        "threads": 1,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1min": os.getloadavg()[0]},
        "policies": results,
        "ncp_step_over_cnn_step": ratios,
        "target_ratio": TARGET_RATIO,
        "target_met": {n: r <= TARGET_RATIO for n, r in ratios.items()},
    }
    print(f"{'policy':<11} {'step ms':>9} {'frames/s':>9} {'core ms':>8} {'core %':>7} {'peak MB':>8}")
    for n, r in results.items():
        print(f"{n:<11} {r['step_ms_median']:9.1f} {r['frames_per_s']:9.1f} {r['core_ms_median']:8.1f} "
              f"{100 * r['core_share']:6.1f}% {r.get('peak_rss_mb', float('nan')):8.0f}")
    for n, r in ratios.items():
        print(f"{n} step / cnn step = {r:.2f} (target ≤ {TARGET_RATIO})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
