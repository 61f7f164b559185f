"""Training speed of every policy at the paper's camera size (78×200), one thread.

For each policy it times the whole training step of `driving.train` (augmentation, forward
through CNN and core over B windows of T frames, the weighted loss, backward, gradient
clipping, Adam), and separately the recurrent core (+ readout) alone on precomputed CNN
features, to report the core's share of the step. Policies are timed in interleaved rounds
within one process, so a burst of load from other processes hits all of them alike, and
the medians are compared. Peak memory is measured per policy in a fresh child process
(VmHWM of /proc/self/status, and its growth over the process's RSS after imports).

Targets: an NCP policy's training step ≤ 1.25 × the feed-forward CNN policy's (issue 5);
with `--precisions fp32,bf16` (the default), training frames/s with the perception CNN under
bf16 autocast ≥ 1.4 × fp32 on a CPU with native bf16 (issue 14), timed interleaved in the
same run. The CNN's FLOPs per frame are counted from its layers, so the achieved GFLOP/s
of a training step (forward + backward ≈ 3 × forward) can be read against the core's peak.

    python scripts/bench_train.py --json bench_train.json [--batch 16 --seq-len 16 --rounds 5]
    python scripts/bench_train.py --policies ncp-cfc --no-memory --json bench_bf16.json
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
TARGET_BF16 = 1.4


def _batch(batch: int, seq: int, hw: tuple[int, int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (batch, seq, *hw, 3), dtype=torch.uint8, generator=g),
        "steering": (torch.rand(batch, seq, generator=g) - 0.5),
        "dt": 0.1 + 0.01 * torch.rand(batch, seq, generator=g),
    }


class Bench:
    """One policy with its optimizer and a fixed batch, timed step by step."""

    def __init__(self, name: str, args: argparse.Namespace, precision: str = "fp32") -> None:
        from driving.train import TrainConfig, make_optimizer
        from policies.factory import build_policy

        self.name = name
        self.precision = precision
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
        from driving.train import cnn_autocast, weighted_mse

        p, b = self.policy, self.batch
        t0 = time.perf_counter()
        images = augment_windows(b["image"], self.gen)
        with cnn_autocast(p, torch.device("cpu"), self.precision == "bf16"):
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


def cnn_flops_per_frame(policy) -> int:
    """Multiply-adds × 2 of the CNN's convolutions and linear maps for one frame (forward)."""
    from torch import nn

    flops = 0

    def hook(m, inp, out):
        nonlocal flops
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            flops += 2 * k * out[0].numel()
        elif isinstance(m, nn.Linear):
            flops += 2 * m.in_features * m.out_features

    hooks = [m.register_forward_hook(hook) for m in policy.cnn.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        policy.cnn(torch.zeros(1, 78, 200, 3, dtype=torch.uint8))
    for h in hooks:
        h.remove()
    if flops == 0:  # the CNN does its maps without nn modules: count from its parameters' shapes
        raise RuntimeError("no Conv2d/Linear layers found in policy.cnn")
    return flops


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
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="fp32 and/or bf16 (bf16 is skipped with a note where the CPU lacks it)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.memory_child:
        _memory_child(args.memory_child, args.batch, args.seq_len)
        return 0

    from tqdm import tqdm

    from policies.factory import POLICY_NAMES
    from policies.policy import supports_bf16

    names = [n for n in args.policies.split(",") if n] or list(POLICY_NAMES)
    precisions = [p for p in args.precisions.split(",") if p]
    bf16_note = None
    if "bf16" in precisions and not supports_bf16(torch.device("cpu")):
        precisions.remove("bf16")
        bf16_note = "this CPU has no native bf16 (AVX-512 BF16 / AMX); bf16 not measured"
    benches = [Bench(n, args, p) for n in names for p in precisions]
    for b in benches:  # warm-up (allocator, oneDNN kernels)
        b.step()
        b.core_step()
    for _ in tqdm(range(args.rounds), desc="bench_train rounds", file=sys.stderr):
        for b in benches:  # interleaved: load bursts hit every policy and precision alike
            b.step_s.append(b.step())
            if b.precision == "fp32":
                b.core_s.append(b.core_step())
    frames = args.batch * args.seq_len
    flops = cnn_flops_per_frame(benches[0].policy)
    results: dict[str, dict] = {}
    by_precision: dict[str, dict[str, float]] = {}
    for b in benches:
        fps = frames / statistics.median(b.step_s)
        by_precision.setdefault(b.name, {})[f"{b.precision}_frames_per_s"] = fps
        by_precision[b.name][f"{b.precision}_gflop_per_s"] = 3 * flops * fps / 1e9
        if b.precision != "fp32":
            continue
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
    for r in by_precision.values():
        if "bf16_frames_per_s" in r and "fp32_frames_per_s" in r:
            r["bf16_over_fp32"] = r["bf16_frames_per_s"] / r["fp32_frames_per_s"]
            r["target_met"] = r["bf16_over_fp32"] >= TARGET_BF16
    doc = {
        "benchmark": "training step (augment + forward + weighted loss + backward + clip + Adam)",
        "cnn_mflop_per_frame_forward": flops / 1e6,
        "precision": by_precision,
        "bf16_target_ratio": TARGET_BF16,
        "bf16_note": bf16_note,
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
    for n, r in by_precision.items():
        if "bf16_over_fp32" in r:
            print(f"{n}: fp32 {r['fp32_frames_per_s']:.0f} frames/s ({r['fp32_gflop_per_s']:.1f} GFLOP/s), "
                  f"bf16 {r['bf16_frames_per_s']:.0f} frames/s ({r['bf16_gflop_per_s']:.1f} GFLOP/s): "
                  f"{r['bf16_over_fp32']:.2f}x (target ≥ {TARGET_BF16})")
    if bf16_note:
        print(bf16_note)
    if args.json:
        from policies.atomicio import atomic_write_json

        atomic_write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
