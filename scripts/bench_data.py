"""Benchmark recording and loading: collect vs bare env rate, window reads, bytes per frame.

Targets (issue 4): recording runs at >= 80% of the bare env step rate; random 16-frame
window reads >= 5,000 frames/s from a local store; report bytes per frame per codec.

Bare and recording runs alternate (several rounds, best of each) so that load from other
processes on a shared machine hits both alike. One thread everywhere.

    .venv/bin/python scripts/bench_data.py --json bench_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _one_thread() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    try:
        import numcodecs.blosc as nb

        nb.set_nthreads(1)
    except (ImportError, AttributeError):
        pass


def bare_rate(env_id: str, seeds: list[int], steps: int) -> tuple[float, float]:
    """Env steps/s driving the expert through the episodes `collect` would record, nothing
    stored: (wall rate with env creation excluded, as `collect` is timed; CPU-time rate
    with env creation included, as for `collect`)."""
    import gymnasium as gym

    import envs  # noqa: F401

    c0 = time.process_time()
    env = gym.make(env_id, max_steps=steps)
    n = 0
    t0 = time.perf_counter()
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        for _ in range(steps):
            a = np.array([info["expert_steering"]], np.float32)
            obs, _, term, trunc, info = env.step(a)
            n += 1
            if term or trunc:
                break
    rate = n / (time.perf_counter() - t0)
    env.close()
    return rate, n / (time.process_time() - c0)


def collect_rate(env_id: str, seeds: list[int], steps: int, out: Path) -> tuple[float, float]:
    """Frames/s of `driving collect` for the same episodes: recording, compression, commits
    with fsync (overlapped with the next episode), the last commit waited for. Returns
    (wall rate, CPU-time rate of the whole process, all threads)."""
    from driving.collect import collect

    c0 = time.process_time()
    res = collect(env_id, len(seeds), steps, out, seed=seeds[0], progress=False)
    return res.frames_per_s, res.frames / (time.process_time() - c0)


def bench_collect(env_id: str, episodes: int, steps: int, rounds: int, tmp: Path) -> dict:
    bare_rate(env_id, [0], 20)  # warm up imports and caches
    bares, recs, bare_cpu, rec_cpu = [], [], [], []
    for k in range(rounds):  # alternate, same seeds: both drive the same episodes
        seeds = list(range(1000 * (k + 1), 1000 * (k + 1) + episodes))
        w, c = bare_rate(env_id, seeds, steps)
        bares.append(w)
        bare_cpu.append(c)
        w, c = collect_rate(env_id, seeds, steps, tmp / f"rec{k}")
        recs.append(w)
        rec_cpu.append(c)
    ratios = np.array(recs) / np.array(bares)
    cpu_ratios = np.array(rec_cpu) / np.array(bare_cpu)
    return {
        "cpu_ratio_median": float(np.median(cpu_ratios)),
        "cpu_ratios": cpu_ratios.tolist(),
        "bare_cpu_steps_per_s": bare_cpu,
        "collect_cpu_frames_per_s": rec_cpu,
        "env": env_id,
        "episodes_per_round": episodes,
        "steps_per_episode": steps,
        "rounds": rounds,
        "bare_steps_per_s": float(np.median(bares)),
        "collect_frames_per_s": float(np.median(recs)),
        "ratio_median": float(np.median(ratios)),
        "ratio_best": float(ratios.max()),
        "ratios": ratios.tolist(),
        "bare_all": bares,
        "collect_all": recs,
        "target_ratio": 0.8,
        "meets_target_wall": float(np.median(ratios)) >= 0.8,
        "meets_target_cpu": float(np.median(cpu_ratios)) >= 0.8,
    }


def bench_codecs(src: Path, tmp: Path) -> list[dict]:
    """Bytes per frame and random window read speed for each codec, on the same real frames."""
    from driving.dataset import Dataset, DatasetWriter

    ds = Dataset(src)
    frames = [ds.frames(i) for i in range(len(ds))]
    steps = [
        {k: ds.steps(i, k) for k in ("steering", "action", "speed", "time_s", "dt_s")}
        for i in range(len(ds))
    ]
    out = []
    codecs = {
        "blosc-lz4 (default)": {"name": "blosc", "cname": "lz4", "clevel": 5},
        "blosc-zstd-1": {"name": "blosc", "cname": "zstd", "clevel": 1},
        "zstd-3": {"name": "zstd", "level": 3},
        "zstd-9": {"name": "zstd", "level": 9},
    }
    for name, spec in codecs.items():
        root = (
            tmp
            / f"codec-{spec['name']}-{spec.get('cname', '')}-{spec.get('clevel', spec.get('level'))}"
        )
        w = DatasetWriter(root, "bench", {}, ds.camera, codec=spec, durable=False)
        t0 = time.perf_counter()
        for f, s in zip(frames, steps):
            w.append_episode(f, s)
        write_s = time.perf_counter() - t0
        n = sum(len(f) for f in frames)
        size = sum(
            os.path.getsize(os.path.join(d, x))
            for d, _, xs in os.walk(root / "episodes")
            for x in xs
            if "frames" in d.split(os.sep)
        )
        total = sum(
            os.path.getsize(os.path.join(d, x))
            for d, _, xs in os.walk(root / "episodes")
            for x in xs
        )
        reads = window_reads(root)
        out.append(
            {
                "codec": name,
                "spec": spec,
                "frame_bytes_per_frame": size / n,
                "total_bytes_per_frame": total / n,
                "raw_bytes_per_frame": int(np.prod(ds.image_shape)),
                "compression_ratio": float(np.prod(ds.image_shape)) * n / size,
                "write_frames_per_s": n / write_s,
                **reads,
            }
        )
        shutil.rmtree(root, ignore_errors=True)
    return out


def window_reads(root: Path, seq_len: int = 16, n: int = 400, seed: int = 0) -> dict:
    """Random windows (random episode and start, stride 1) through WindowDataset, one process."""
    from driving.loader import WindowDataset

    ds = WindowDataset(root, seq_len=seq_len, split="all", stride=1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ds), n)
    for i in idx[:20]:  # warm up: open arrays, cache per-step arrays
        ds[int(i)]
    t0, c0 = time.perf_counter(), time.process_time()
    for i in idx:
        item = ds[int(i)]
        assert item["image"].shape[0] == seq_len
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    aligned = WindowDataset(root, seq_len=seq_len, split="all", stride=seq_len)
    ai = rng.integers(0, len(aligned), n)
    t0 = time.perf_counter()
    for i in ai:
        aligned[int(i)]
    adt = time.perf_counter() - t0
    return {
        "random_window_frames_per_s": n * seq_len / dt,
        "random_window_frames_per_cpu_s": n * seq_len / cpu,
        "aligned_window_frames_per_s": n * seq_len / adt,
        "window_reads": n,
    }


def bench_checks(root: Path, repeats: int = 3) -> dict:
    """Seconds (best of `repeats`) of `verify` (every chunk decoded, every value checked), the
    quick structural check of `dataset info` and `fingerprint`, on the recorded store."""
    from driving.dataset import Dataset, fingerprint, verify

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    frames = Dataset(root).num_frames
    full = best(lambda: verify(root))
    quick = best(lambda: verify(root, decode=False))
    fp = best(lambda: fingerprint(Dataset(root)))
    return {
        "frames": frames,
        "verify_s": full,
        "verify_frames_per_s": frames / full,
        "info_check_s": quick,
        "fingerprint_s": fp,
    }


def dataloader_reads(root: Path, workers: int, batches: int = 30, batch_size: int = 16) -> float:
    import torch
    from torch.utils.data import DataLoader

    from driving.loader import WindowDataset

    ds = WindowDataset(root, seq_len=16, split="all", stride=1)
    dl = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )
    it = iter(dl)
    next(it)  # start-up excluded
    t0 = time.perf_counter()
    k = 0
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            break
        k += b["image"].shape[0] * b["image"].shape[1]
    return k / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write results here")
    p.add_argument("--env", default="liquid_drive/Racetrack-v0")
    p.add_argument("--steps", type=int, default=300, help="steps per episode (collect timing)")
    p.add_argument("--collect-episodes", type=int, default=3, help="episodes per timing round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--episodes", type=int, default=8, help="episodes for the read benchmark")
    p.add_argument("--episode-steps", type=int, default=200)
    p.add_argument("--keep", help="keep the recorded store here")
    args = p.parse_args(argv)
    _one_thread()
    from driving import __version__
    from driving.collect import collect
    from driving.dataset import Dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        print(f"collect rate vs bare env ({args.env}) ...", file=sys.stderr)
        col = bench_collect(args.env, args.collect_episodes, args.steps, args.rounds, tmp)
        print(
            f"  bare {col['bare_steps_per_s']:.0f} steps/s, collect "
            f"{col['collect_frames_per_s']:.0f} frames/s, ratio {col['ratio_median']:.2f} "
            "(rounds "
            + ", ".join(f"{r:.2f}" for r in col["ratios"])
            + f"); CPU-time ratio {col['cpu_ratio_median']:.2f} ("
            + ", ".join(f"{r:.2f}" for r in col["cpu_ratios"])
            + ")",
            file=sys.stderr,
        )
        store = Path(args.keep) if args.keep else tmp / "store"
        print(f"recording {args.episodes} episodes for the read benchmark ...", file=sys.stderr)
        res = collect(
            args.env, args.episodes, args.episode_steps, store, dart_noise=0.1, progress=False
        )
        cli_rate = res.frames_per_s
        print("codecs: bytes/frame and window reads ...", file=sys.stderr)
        codecs = bench_codecs(store, tmp)
        for c in codecs:
            print(
                f"  {c['codec']:20s} {c['frame_bytes_per_frame']:8.0f} B/frame "
                f"(x{c['compression_ratio']:.1f}), random windows "
                f"{c['random_window_frames_per_s']:.0f} frames/s, aligned "
                f"{c['aligned_window_frames_per_s']:.0f}",
                file=sys.stderr,
            )
        default = window_reads(store)
        dl = {w: dataloader_reads(store, w) for w in (0, 2)}
        print(
            f"default store: random windows {default['random_window_frames_per_s']:.0f} frames/s "
            f"({default['random_window_frames_per_cpu_s']:.0f} per CPU second); "
            f"DataLoader 0 workers {dl[0]:.0f}, 2 workers {dl[2]:.0f} frames/s",
            file=sys.stderr,
        )
        checks = bench_checks(store)
        print(
            f"checks on {checks['frames']} frames: verify {checks['verify_s']:.3f} s "
            f"({checks['verify_frames_per_s']:.0f} frames/s), info check {checks['info_check_s']:.3f} s, "
            f"fingerprint {checks['fingerprint_s']:.3f} s",
            file=sys.stderr,
        )
        result = {
            "benchmark": "bench_data",
            "version": __version__,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "threads": 1,
            "collect": col,
            "read_store_collect_frames_per_s": cli_rate,
            "image_shape": list(Dataset(store).image_shape),
            "codecs": codecs,
            "reads": {
                **default,
                "target_frames_per_s": 5000,
                "meets_target": default["random_window_frames_per_s"] >= 5000,
                "dataloader_frames_per_s": {str(k): v for k, v in dl.items()},
            },
            "bytes_per_frame": codecs[0]["total_bytes_per_frame"],
            "checks": checks,
        }
        if args.json:
            from policies.atomicio import atomic_write_json

            atomic_write_json(args.json, result, indent=1)
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
