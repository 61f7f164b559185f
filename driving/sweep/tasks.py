"""Task bodies of the sweep: plain functions that Ray runs (or a test calls directly).

Each task works in its own scratch folder and *returns* its result (a checkpoint's files as
bytes, an evaluation cell as a dict), so it needs no shared filesystem and can be retried:
the driver (`driving.sweep.engine`) writes every result under OUT, atomically. The
exceptions are the recorded datasets, read from disk: `ensure_dataset` (training) and
`ensure_test_dataset` (the passive test's held-out drives) record them where they are
missing (under a file lock, deterministically from the protocol's seeds), so each machine
of a cluster without a shared filesystem records the same drives.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from driving.sweep.protocol import DERIVED, Protocol, passive_conditions, passive_settings, run_name

#: Files of a trained run worth keeping and shipping (the optimizer state is not).
RUN_FILES = ("model.safetensors", "config.json", "metrics.csv")


def _cli(argv: list[str], log: Path) -> int:
    """`driving ARGV` in this process, its console output into ``log``."""
    import torch

    from driving.cli import main

    torch.set_num_threads(1)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = int(main(argv) or 0)
    finally:
        log.write_text(buf.getvalue())
    return code


def ensure_dataset(p: Protocol, data_dir: str) -> dict[str, Any]:
    """The shared recorded dataset at ``data_dir``, recorded first if it is not complete."""
    d = Path(data_dir)
    d.parent.mkdir(parents=True, exist_ok=True)
    marker = d / "COMPLETE"
    t = time.perf_counter()
    with open(str(d) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one recorder per machine; the others wait
        if not marker.is_file():
            if d.exists():  # a recording that was killed: start again
                shutil.rmtree(d)
            argv = ["collect", "--env", p.env, "--episodes", str(p.episodes), "--steps", str(p.steps),
                    "--out", str(d), "--seed", str(p.data_seed), "--workers", "1",
                    "--dart-noise", str(p.dart_noise), "--quiet",
                    "--env-kwargs", json.dumps({"split": p.train_split} if p.train_split else {})]
            log = Path(str(d) + ".collect.log")
            if _cli(argv, log) != 0:
                raise RuntimeError(f"recording the dataset failed; see {log}")
            from policies.atomicio import atomic_write_text

            atomic_write_text(marker, f"recorded by driving.sweep for protocol {p.fingerprint_id()}\n")
    return {"data": str(d), "seconds": round(time.perf_counter() - t, 2)}


def ensure_test_dataset(p: Protocol, data_dir: str) -> dict[str, Any]:
    """The passive test's recorded held-out drives at ``data_dir``, recorded first if they
    are not complete: ``p.passive_episodes`` expert drives x ``p.passive_steps`` frames on
    the test split (roads and looks training never draws), env seeds ``p.passive_seed``..,
    no DART noise (the labels are the expert's own steering), with depth (fog uses it).
    Its COMPLETE marker names the settings: other settings record it again."""
    from policies.atomicio import atomic_write_text

    d = Path(data_dir)
    d.parent.mkdir(parents=True, exist_ok=True)
    marker = d / "COMPLETE"
    t = time.perf_counter()
    s = passive_settings(p)
    stamp = ("recorded by driving.sweep for the passive test: "
             + json.dumps({k: s[k] for k in ("env", "split", "episodes", "steps", "seed")}, sort_keys=True)
             + "\n")
    with open(str(d) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one recorder per machine; the others wait
        if not (marker.is_file() and marker.read_text() == stamp):
            if d.exists():  # a recording that was killed, or one of other settings: start again
                shutil.rmtree(d)
            argv = ["collect", "--env", p.env, "--episodes", str(s["episodes"]), "--steps",
                    str(s["steps"]), "--out", str(d), "--seed", str(s["seed"]), "--workers", "1",
                    "--dart-noise", "0", "--save-depth", "--quiet",
                    "--env-kwargs", json.dumps({"split": p.test_split} if p.test_split else {})]
            log = Path(str(d) + ".collect.log")
            if _cli(argv, log) != 0:
                raise RuntimeError(f"recording the passive test drives failed; see {log}")
            atomic_write_text(marker, stamp)
    return {"data": str(d), "seconds": round(time.perf_counter() - t, 2)}


def _files(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in RUN_FILES if (run / name).is_file()}


def write_files(files: dict[str, bytes], folder: Path) -> Path:
    """A run's files into ``folder`` (atomically each; config.json last, it vouches for the
    others' hashes)."""
    from policies.atomicio import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n == "config.json"):
        atomic_write_bytes(folder / name, files[name])
    return folder


def train_task(p: Protocol, policy: str, seed: int, data_dir: str, _data: Any = None) -> dict[str, Any]:
    """Train one (policy, seed) on the shared dataset; its files and best validation MSE.
    (``_data`` is the recording task's result: an argument only so Ray orders the two.)"""
    ensure_dataset(p, data_dir)
    t, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix=f"sweep-train-{policy}-s{seed}-") as tmp:
        run = Path(tmp) / "run"
        argv = ["train", "--data", data_dir, "--policy", policy, "--out", str(run),
                "--epochs", str(p.epochs), "--seed", str(seed), "--threads", "1", "--patience", "0",
                "--val-fraction", str(p.val_fraction), *p.train_extra]
        if p.max_frames:
            argv += ["--max-frames", str(p.max_frames)]
        log = Path(tmp) / "train.log"
        code = _cli(argv, log)
        if code != 0 or not (run / "model.safetensors").is_file():
            raise RuntimeError(f"training {policy} seed {seed} failed (exit {code}): "
                               + log.read_text()[-2000:])
        files = _files(run)
    return {"kind": "train", "policy": policy, "seed": seed, "files": files,
            "best_val_mse": _best_val_mse(files.get("metrics.csv", b"")),
            "seconds": round(time.perf_counter() - t, 2),
            "cpu_seconds": round(time.process_time() - cpu, 2)}


def _best_val_mse(csv_bytes: bytes) -> float | None:
    import csv

    rows = list(csv.DictReader(io.StringIO(csv_bytes.decode())))
    vals = [float(r["val_mse"]) for r in rows if r.get("val_mse") not in (None, "")]
    return min(vals) if vals else None


def _load(files: dict[str, bytes], tmp: Path, name: str):
    from policies.checkpoint import load_policy

    return load_policy(write_files(files, tmp / name))


# ----------------------------------------------------------------------------- derived runs


def open_loop_steering(policy: Any, frames: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """The policy's steering over one recorded episode (state carried, true Δt)."""
    import torch

    with torch.no_grad():
        ts = torch.from_numpy(np.maximum(dt, 1e-3).astype(np.float32))[None]
        s, _ = policy(torch.from_numpy(np.ascontiguousarray(frames))[None], None,
                      ts if policy.uses_time else None)
    return s[0].double().numpy()


def ema_filter(raw: np.ndarray, dt: np.ndarray, tau_s: float) -> np.ndarray:
    """`policies.controls.SmoothedPolicy`'s filter on a recorded trace (starts at 0)."""
    y, out = 0.0, np.empty_like(raw)
    for k, (u, d) in enumerate(zip(raw, dt)):
        y += (1.0 - math.exp(-float(d) / tau_s)) * (u - y)
        out[k] = y
    return out


def match_tau(raws: list[np.ndarray], dts: list[np.ndarray], target_rate: float,
              lo: float = 1e-3, hi: float = 10.0, iters: int = 40) -> float:
    """τ (s) at which the EMA of ``raws`` has ``target_rate`` (mean |Δs|/Δt): the rate falls
    monotonically with τ, so bisection (in log τ); clipped to [lo, hi]."""
    from policies.controls import steering_rate

    def rate(tau: float) -> float:
        return float(np.mean([steering_rate(ema_filter(r, d, tau), d) for r, d in zip(raws, dts)]))

    if rate(lo) <= target_rate:
        return lo  # already as smooth as the target without filtering
    if rate(hi) >= target_rate:
        return hi
    a, b = math.log(lo), math.log(hi)
    for _ in range(iters):
        m = 0.5 * (a + b)
        if rate(math.exp(m)) > target_rate:
            a = m
        else:
            b = m
    return float(math.exp(0.5 * (a + b)))


def derive_task(p: Protocol, policy: str, seed: int, data_dir: str, base: dict,
                target: dict | None = None) -> dict[str, Any]:
    """A control built from a trained run's weights (`DERIVED`): the EMA controls with τ
    matched so that their open-loop steering rate on the first recorded drives equals the
    same-seed NCP-LTC's; the time-blind LTC with the NCP-LTC's weights unchanged."""
    from driving.dataset import Dataset
    from policies.checkpoint import save_checkpoint
    from policies.controls import steering_rate
    from policies.factory import build_policy

    ensure_dataset(p, data_dir)
    t, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix=f"sweep-derive-{policy}-s{seed}-") as tmp:
        tmp = Path(tmp)
        base_pol, base_cfg = _load(base["files"], tmp, "base")
        kwargs = dict(base_cfg["policy_spec"].get("kwargs", {}))
        calib: dict[str, Any] = {"derived_from": f"{DERIVED[policy]}-s{seed}"}
        if policy in ("cnn-ema", "lstm-ema"):
            if target is None:
                raise ValueError(f"{policy} needs the NCP-LTC run of seed {seed} to match")
            ltc, _ = _load(target["files"], tmp, "target")
            ds = Dataset(data_dir)
            n = min(p.calibration_episodes, len(ds.episodes))
            frames = [ds.frames(i) for i in range(n)]
            dts = [np.asarray(ds.steps(i, "dt_s"), dtype=np.float64) for i in range(n)]
            target_rate = float(np.mean([steering_rate(open_loop_steering(ltc, f, d), d)
                                         for f, d in zip(frames, dts)]))
            raws = [open_loop_steering(base_pol, f, d) for f, d in zip(frames, dts)]
            raw_rate = float(np.mean([steering_rate(r, d) for r, d in zip(raws, dts)]))
            tau = match_tau(raws, dts, target_rate)
            got = float(np.mean([steering_rate(ema_filter(r, d, tau), d) for r, d in zip(raws, dts)]))
            kwargs["ema_tau_s"] = tau
            calib.update(ema_tau_s=tau, target_policy=f"ncp-ltc-s{seed}", target_rate=target_rate,
                         raw_rate=raw_rate, filtered_rate=got, episodes=n,
                         method="open loop on the first recorded drives of the shared dataset")
        pol = build_policy(policy, tuple(base_cfg["image_hw"]), seed, **kwargs)
        pol.load_state_dict(base_pol.state_dict(), strict=True)
        save_checkpoint(tmp / "run", pol, {"derived": calib})
        files = _files(tmp / "run")
    return {"kind": "derive", "policy": policy, "seed": seed, "files": files,
            "calibration": calib, "seconds": round(time.perf_counter() - t, 2),
            "cpu_seconds": round(time.process_time() - cpu, 2)}


# ----------------------------------------------------------------------------- evaluation


def evaluate_cell(checkpoint: Path, p: Protocol, condition: str, road: int, scratch: Path) -> dict:
    """The one place the sweep calls the evaluator: one held-out road under one condition.

    Road ``road`` is evaluation seed ``p.road_seed + road`` (episode 0), so every policy and
    seed drives the same road, start, traffic and corruption stream (paired cells)."""
    from dataclasses import fields

    from driving.evaluate import EvalSpec, evaluate

    name, _, sev = condition.partition(":")
    kw: dict[str, Any] = {}
    names = {f.name for f in fields(EvalSpec)}
    if "intervention" in names:
        kw["intervention"] = p.intervention
    spec = EvalSpec(checkpoint=str(checkpoint), env_id=p.env,
                    env_kwargs={"split": p.test_split} if p.test_split else {}, episodes=1,
                    corruptions=(name,), severities=(int(sev) if sev else 1,), steps=p.eval_steps,
                    seed=p.road_seed + road, expert_reference=False, **kw)
    report = evaluate(spec, scratch, workers=1, progress=False, plots=False)
    row = dict(report["results"][0])
    row["intervention_rule"] = kw.get("intervention", "not supported by this evaluator")
    return row


def eval_task(p: Protocol, policy: str, seed: int, condition: str, road: int, run: dict) -> dict:
    """One (run, condition, road) cell: the report row of that single episode."""
    import torch

    torch.set_num_threads(1)
    t, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix=f"sweep-eval-{policy}-s{seed}-") as tmp:
        tmp = Path(tmp)
        ckpt = write_files(run["files"], tmp / "ckpt")
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
            row = evaluate_cell(ckpt, p, condition, road, tmp / "out")
    # Which weights made the cell: a training is reproducible only within one code version, so
    # a resumed sweep can tell a derived control's cells from a retrained base's.
    weights = hashlib.sha256(run["files"].get("model.safetensors", b"")).hexdigest()[:16]
    return {"kind": "eval", "policy": policy, "seed": seed, "condition": condition, "road": road,
            "road_seed": p.road_seed + road, "row": row, "weights_sha256": weights,
            "seconds": round(time.perf_counter() - t, 2),
            "cpu_seconds": round(time.process_time() - cpu, 2)}


# ----------------------------------------------------------------------------- passive test


def condition_of(row: dict[str, Any]) -> str:
    """The protocol's name ('none', 'noise:3') of a passive report row."""
    return "none" if row["corruption"] == "none" or not row["severity"] else \
        f"{row['corruption']}:{row['severity']}"


def passive_task(p: Protocol, policy: str, seed: int, test_data_dir: str, run: dict,
                 _data: Any = None) -> dict[str, Any]:
    """The passive (offline) test of one run on the recorded held-out test drives: its
    steering against the expert's under the protocol's conditions but jitter, with the
    attention SSIM (VisualBackProp clean vs corrupted) on ``p.ssim_frames`` frames.
    A derived control is its derived checkpoint (the config rebuilds the filter or the
    time-blindness). (``_data`` is the recording task's result, only so Ray orders them.)"""
    import torch

    from driving.passive import PassiveSpec, passive_eval
    from policies.checkpoint import load_policy

    torch.set_num_threads(1)
    ensure_test_dataset(p, test_data_dir)
    settings = passive_settings(p)
    t, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix=f"sweep-passive-{policy}-s{seed}-") as tmp:
        tmp = Path(tmp)
        ckpt = write_files(run["files"], tmp / "ckpt")
        pol, config = load_policy(ckpt)
        if pol.name != policy:
            raise RuntimeError(f"the checkpoint of {run_name(policy, seed)} rebuilds {pol.name!r}")
        spec = PassiveSpec(checkpoint=run_name(policy, seed), data=test_data_dir,
                           corruptions=tuple(passive_conditions(p)), split="all",
                           seed=settings["seed"], ssim_frames=settings["ssim_frames"])
        report = passive_eval(spec, tmp / "out", policy=pol, config=config, progress=False)
    got = [condition_of(r) for r in report["results"]]
    if sorted(got) != sorted(settings["conditions"]):
        raise RuntimeError(f"the passive test ran {got}, not {settings['conditions']}")
    return {"kind": "passive", "policy": policy, "seed": seed, "report": report,
            "settings": settings, "seconds": round(time.perf_counter() - t, 2),
            "cpu_seconds": round(time.process_time() - cpu, 2)}
