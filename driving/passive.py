"""The passive test: a policy over recorded drives, scored against the recorded steering.

Lechner et al. (2020) also judged their agents offline: the policy watches recorded footage
and its steering is compared with the human's. Nothing is driven, so the scene is exactly
the same for every policy, corruption and severity. Here:

- every selected episode is run from its first frame with the policy's state carried from
  frame to frame and the **recorded** Δt (`dt_s`) given to time-aware cores (LTC, CfC,
  CT-RNN): irregular real intervals are what liquid cells are built for;
- episodes are batched side by side (rows of one `policy(frames, h, timespans)` call, in
  chunks of frames); the computation of a row does not depend on the others, so results
  do not depend on `batch_episodes` or `chunk`;
- image corruptions are applied to each frame before the policy sees it, with a random
  stream per (corruption, severity, episode); fog needs depth: the stored depth of a
  simulator dataset recorded with `--save-depth`, else a **flat-ground estimate** from the
  camera's height, pitch and field of view (`driving.importers.common.flat_ground_depth`),
  else it is refused with that reason;
- `dropped_frames`: a lost frame never reaches the policy, which holds its last steering
  (scored at that frame); the next delivered frame comes with the true gap. `jitter`
  changes when a simulator samples the world and has no meaning for recorded footage:
  refused when named, left out of `all` (noted in the report);
- scores per condition: steering MSE, MAE and Pearson correlation against the label over
  all frames (and per episode, with 95% intervals over episodes), plus attention SSIM:
  VisualBackProp of the clean vs the corrupted frame on up to `ssim_frames` frames spread
  evenly over the episodes (1 for the clean condition, none for timing faults).

Report schema: docs/evaluation.md ("Passive test").
"""

from __future__ import annotations

import math
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from driving.errors import UserError

SPLITS = ("val", "test", "all")
MIN_DT_S = 1e-3  # recorded Δt of 0 (same timestamp) would be invalid for the cells


@dataclass
class PassiveSpec:
    """Settings of one passive test (the CLI's flags)."""

    checkpoint: str
    data: str
    corruptions: tuple[str, ...] = ("none", "fog", "noise")
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    split: str | None = None  # val | test | all; None = test if unseen episodes exist, else val
    seed: int = 0
    batch_episodes: int = 8
    chunk: int = 32
    ssim_frames: int = 200
    side_cameras: bool = False  # score Udacity side-camera episodes too (their labels are synthetic)
    max_episodes: int | None = None
    skipped_conditions: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# episodes


def _state_rows(h: Any, idx: np.ndarray | list[int]) -> Any:
    if isinstance(h, (tuple, list)):
        return type(h)(t[idx] for t in h)
    return h[idx]


def training_split(config: dict[str, Any], ds: Any) -> tuple[list[int] | None, int, str]:
    """(validation episode indices or None, episodes the checkpoint saw, why) for `ds`.

    The checkpoint's config names its training dataset (path, fingerprint of its first N
    episodes, val_fraction, seed). When `ds` starts with exactly those N episodes, the
    validation split is recomputed as training made it and episodes after N are unseen;
    otherwise every episode of `ds` is unseen.
    """
    from driving.loader import split_episodes
    from driving.train_run import fingerprint_matches

    info = config.get("dataset") or {}
    train = config.get("training") or {}
    n = int(info.get("episodes") or 0)
    fp = info.get("fingerprint")
    if not n or not fingerprint_matches(ds, n, fp):
        return None, 0, "the checkpoint was not trained on this dataset: every episode is unseen"
    names = [e.name for e in ds.episodes[:n]]
    _, val = split_episodes(names, float(train.get("val_fraction", 0.2)), int(train.get("seed", 0)))
    return list(val), n, f"the checkpoint trained on the first {n} episodes of this dataset"


def select_episodes(spec: PassiveSpec, config: dict[str, Any], ds: Any) -> tuple[list[int], str, str]:
    """Indices of the episodes to score, the split used and why."""
    val, seen, why = training_split(config, ds)
    unseen = list(range(seen, len(ds.episodes)))
    split = spec.split
    if split is None:
        split = "test" if unseen else "val"
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: choose val, test or all")
    if split == "all":
        chosen = list(range(len(ds.episodes)))
    elif split == "test":
        chosen = unseen
        if not chosen:
            raise UserError(
                f"--split test: every episode of {ds.root} was used to train the checkpoint ({why}); "
                "import held-out drives into another --out and pass that as --data, or use --split val")
    else:
        if val is None:
            raise UserError(f"--split val: {why}, so it has no validation split; use --split test or all")
        chosen = val
        if not chosen:
            raise UserError("--split val: the checkpoint was trained without validation episodes "
                            "(--val-fraction 0); use --split test with held-out drives")
    if not spec.side_cameras:
        chosen = [i for i in chosen if ds.episodes[i].meta.get("camera_position", "center") == "center"]
    if spec.max_episodes is not None:
        chosen = chosen[: spec.max_episodes]
    if not chosen:
        raise UserError(f"no episode to score in {ds.root} (split {split}); check --split and the dataset")
    return chosen, split, why


# ------------------------------------------------------------------------------------------------
# running the policy


def _seed(seed: int, name: str, severity: int, episode_id: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode()), severity, episode_id]))


@dataclass
class _Plan:
    """One episode under one condition: which frames reach the policy and with which Δt."""

    index: int  # episode index in the dataset
    delivered: np.ndarray  # frame indices the policy sees, increasing, starting at 0
    dt: np.ndarray  # seconds since the previous delivered frame (first: the recorded dt_s[0])
    rng: np.random.Generator  # image corruption stream, consumed in frame order


def _plan(ds: Any, i: int, name: str, severity: int, seed: int) -> _Plan:
    from driving import corruptions as C

    ep = ds.episodes[i]
    dts = np.maximum(ds.steps(i, "dt_s").astype(np.float64), MIN_DT_S)
    n = ep.length
    if name in C.TIMING_FAULTS and severity > 0:
        trng = _seed(seed, name + "/timing", severity, ep.id)
        keep = np.ones(n, bool)
        for t in range(1, n):
            keep[t] = C.timing_step(name, severity, trng, float(dts[t])).delivered
        delivered = np.flatnonzero(keep)
        cum = np.cumsum(dts)
        gaps = np.diff(cum[delivered])
        dt = np.concatenate([[dts[0]], gaps])
    else:
        delivered = np.arange(n)
        dt = dts
    return _Plan(i, delivered, dt.astype(np.float32), _seed(seed, name, severity, ep.id))


class DepthSource:
    """Depth for fog: the dataset's stored depth, else the flat-ground estimate, else refused."""

    def __init__(self, ds: Any) -> None:
        from driving.importers.common import flat_ground_depth

        self.ds = ds
        self.flat: np.ndarray | None = None
        self.kind = "stored"
        self.reason: str | None = None
        if not all(e.meta.get("has_depth") for e in ds.episodes):
            self.kind = "flat_ground"
            imported = (ds.attrs.get("env_config") or {}).get("imported") or {}
            geometry = (imported.get("camera_model") or {}).get("intrinsics")
            try:
                self.flat = flat_ground_depth(ds.camera, geometry)
            except UserError as exc:
                self.kind, self.reason = "none", str(exc)

    def frames(self, i: int, idx: np.ndarray) -> np.ndarray | None:
        if self.kind == "stored" and self.ds.episodes[i].meta.get("has_depth"):
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            return self.ds.depth(i, lo, hi)[idx - lo]
        return None if self.flat is None else np.broadcast_to(self.flat, (len(idx), *self.flat.shape))


def run_condition(policy: Any, ds: Any, episodes: list[int], name: str, severity: int, *, seed: int,
                  depth: DepthSource, batch_episodes: int, chunk: int,
                  ssim_at: dict[int, set[int]] | None) -> tuple[dict[int, np.ndarray], list[float]]:
    """Predicted steering for every frame of `episodes` under one condition, and the SSIM
    values at the frames `ssim_at` names (episode index -> frame indices)."""
    import torch

    from driving import corruptions as C
    from driving.explain.saliency import visual_backprop
    from driving.explain.ssim import ssim_batch

    plans = [_plan(ds, i, name, severity, seed) for i in episodes]
    plans.sort(key=lambda p: -len(p.delivered))
    image = name in C.CORRUPTIONS and severity > 0
    need_depth = image and name == "fog"
    preds: dict[int, np.ndarray] = {}
    ssims: list[float] = []
    for g in range(0, len(plans), batch_episodes):
        group = plans[g: g + batch_episodes]
        out = [np.empty(len(p.delivered), np.float32) for p in group]
        h = policy.initial_state(len(group))
        active = list(range(len(group)))
        t = 0
        while active:
            L = min(chunk, min(len(group[k].delivered) - t for k in active))
            frames, dts = [], []
            for k in active:
                p = group[k]
                idx = p.delivered[t: t + L]
                lo, hi = int(idx[0]), int(idx[-1]) + 1
                clean = ds.frames(p.index, lo, hi)[idx - lo]
                seen = clean
                if image:
                    d = depth.frames(p.index, idx) if need_depth else None
                    seen = np.stack([C.apply(name, clean[j], None if d is None else d[j], severity, p.rng)
                                     for j in range(L)])
                    marks = ssim_at.get(p.index) if ssim_at else None
                    sel = [j for j, f in enumerate(idx) if int(f) in marks] if marks else []
                    if sel:
                        maps = visual_backprop(policy.cnn, np.concatenate([clean[sel], seen[sel]]))
                        ssims.extend(float(v) for v in ssim_batch(maps[: len(sel)], maps[len(sel):], data_range=1.0))
                frames.append(seen)
                dts.append(p.dt[t: t + L])
            x = torch.from_numpy(np.ascontiguousarray(np.stack(frames)))
            ts = torch.from_numpy(np.stack(dts).astype(np.float32))
            with torch.no_grad():
                steer, h = policy(x, h, ts)
            steer = steer.float().cpu().numpy()
            for r, k in enumerate(active):
                out[k][t: t + L] = steer[r]
            t += L
            keep = [r for r, k in enumerate(active) if len(group[k].delivered) > t]
            if len(keep) != len(active):
                active = [active[r] for r in keep]
                if active:
                    h = _state_rows(h, keep)
        for p, o in zip(group, out):
            n = ds.episodes[p.index].length
            full = np.empty(n, np.float32)
            # a dropped frame is scored with the steering the policy holds (the last delivered)
            owner = np.searchsorted(p.delivered, np.arange(n), side="right") - 1
            full[:] = o[owner]
            preds[p.index] = full
    return preds, ssims


# ------------------------------------------------------------------------------------------------
# scores


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.size < 2:
        return None
    da, db = a - a.mean(), b - b.mean()
    den = math.sqrt(float(da @ da) * float(db @ db))
    return None if den == 0 else float(da @ db) / den


def scores(pred: np.ndarray, label: np.ndarray) -> dict[str, float | None]:
    e = np.asarray(pred, np.float64) - np.asarray(label, np.float64)
    return {"steering_mse": float(np.mean(e * e)), "steering_mae": float(np.mean(np.abs(e))),
            "steering_corr": pearson(pred, label)}


def aggregate(name: str, severity: int, episodes: list[int], ds: Any, preds: dict[int, np.ndarray],
              ssims: list[float] | None) -> dict[str, Any]:
    from driving.metrics import mean_ci95

    labels = {i: ds.steps(i, "steering") for i in episodes}
    pooled = scores(np.concatenate([preds[i] for i in episodes]), np.concatenate([labels[i] for i in episodes]))
    per = [scores(preds[i], labels[i]) for i in episodes]
    row: dict[str, Any] = {"corruption": name, "severity": int(severity), "episodes": len(episodes),
                           "frames": int(sum(len(labels[i]) for i in episodes)), **pooled}
    if ssims is None:
        row.update(attention_ssim=None, ssim_frames=0)
    else:
        row.update(attention_ssim=float(np.mean(ssims)) if ssims else None,
                   attention_ssim_std=float(np.std(ssims)) if ssims else None, ssim_frames=len(ssims))
    ci = {}
    for k in ("steering_mse", "steering_mae", "steering_corr"):
        _, lo, hi = mean_ci95([p[k] for p in per if p[k] is not None])
        ci[k] = None if lo is None else [lo, hi]
    row["ci95"] = ci
    row["per_episode"] = {"episode": [int(ds.episodes[i].id) for i in episodes],
                          "frames": [int(len(labels[i])) for i in episodes],
                          **{k: [p[k] for p in per] for k in ("steering_mse", "steering_mae", "steering_corr")}}
    return row


def _ssim_sample(ds: Any, episodes: list[int], n: int) -> dict[int, set[int]]:
    """Up to n (episode, frame) positions spread evenly over the episodes' frames."""
    lengths = [ds.episodes[i].length for i in episodes]
    total = sum(lengths)
    if total == 0 or n <= 0:
        return {}
    picks = np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(np.int64))
    starts = np.cumsum([0, *lengths[:-1]])
    out: dict[int, set[int]] = {}
    for p in picks:
        k = int(np.searchsorted(starts, p, side="right") - 1)
        out.setdefault(episodes[k], set()).add(int(p - starts[k]))
    return out


# ------------------------------------------------------------------------------------------------
# the test


def conditions(spec: PassiveSpec, depth: DepthSource) -> list[tuple[str, int]]:
    from driving import corruptions as C
    from driving.conditions import from_names, parse_conditions

    items = list(spec.corruptions)
    if any(":" in c for c in items):
        conds = parse_conditions(",".join(items), spec.severities)
    else:
        names: list[str] = []
        for c in items:
            names.extend(C.all_names() if c == "all" else [c])
        for n in names:
            if n not in C.all_names():
                raise UserError(f"unknown corruption {n!r}; choose from {', '.join(C.all_names())} or all")
        conds = from_names(list(dict.fromkeys(names)), spec.severities)
    out = []
    named = set(items)
    for c in conds:
        if c.corruption == "jitter":
            reason = ("jitter changes when a simulator samples the world; recorded footage has fixed "
                      "sample times (use dropped_frames for a timing fault on footage)")
            if "jitter" in named or any(x.startswith("jitter:") for x in named):
                raise UserError(f"--corruptions jitter: {reason}")
            spec.skipped_conditions["jitter"] = reason
            continue
        if c.corruption == "fog" and c.severity > 0 and depth.kind == "none":
            if "all" in named and "fog" not in named:
                spec.skipped_conditions["fog"] = depth.reason or "no depth"
                continue
            raise UserError(depth.reason or "fog needs depth")
        out.append((c.corruption, c.severity))
    if not out:
        raise UserError("no condition left to run; e.g. --corruptions none,noise,fog")
    return out


def passive_eval(spec: PassiveSpec, out_dir: str | os.PathLike, *, policy: Any = None,
                 config: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the passive test and write OUT/report.json and OUT/report.md; returns the report."""
    import torch

    from driving.dataset import Dataset
    from policies.atomicio import atomic_write_json, atomic_write_text

    if spec.batch_episodes < 1 or spec.chunk < 1:
        raise UserError("--batch-episodes and the chunk length must be >= 1")
    if spec.ssim_frames < 0:
        raise UserError(f"--ssim-frames {spec.ssim_frames} must be >= 0")
    try:
        ds = Dataset(spec.data)
    except ValueError as exc:
        raise UserError(f"--data: {exc}") from None
    if policy is None:
        from policies.checkpoint import load_policy

        try:
            policy, config = load_policy(spec.checkpoint)
        except ValueError as exc:
            raise UserError(f"--checkpoint: {exc}") from None
    config = dict(config or {})
    policy.eval()
    hw = tuple(int(v) for v in ds.image_shape[:2])
    if tuple(policy.image_hw) != hw:
        raise UserError(f"--data {spec.data} holds {hw[0]}x{hw[1]} frames but the checkpoint takes "
                        f"{policy.image_hw[0]}x{policy.image_hw[1]}; re-import with --size "
                        f"{policy.image_hw[0]}x{policy.image_hw[1]}")
    depth = DepthSource(ds)
    conds = conditions(spec, depth)
    episodes, split, why = select_episodes(spec, config, ds)
    sample = _ssim_sample(ds, episodes, spec.ssim_frames)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: stable on shared cores (docs/cells.md, Benchmark)
    rows = []
    frames_run = 0
    t0 = time.perf_counter()
    try:
        from driving import corruptions as C

        for name, sev in conds:
            ts = time.perf_counter()
            preds, ssims = run_condition(policy, ds, episodes, name, sev, seed=spec.seed, depth=depth,
                                         batch_episodes=spec.batch_episodes, chunk=spec.chunk,
                                         ssim_at=sample if (name in C.CORRUPTIONS and sev > 0) else None)
            if name in C.TIMING_FAULTS and sev > 0:
                ss = None
            elif name == "none" or sev == 0:
                ss = [1.0] * sum(len(v) for v in sample.values())  # identical maps: SSIM 1 exactly
            else:
                ss = ssims
            rows.append(aggregate(name, sev, episodes, ds, preds, ss))
            n = rows[-1]["frames"]
            frames_run += n
            if progress:
                r = rows[-1]
                corr = "–" if r["steering_corr"] is None else f"{r['steering_corr']:.3f}"
                sv = "–" if r["attention_ssim"] is None else f"{r['attention_ssim']:.3f}"
                print(f"  {name}:{sev}  MSE {r['steering_mse']:.4f}  MAE {r['steering_mae']:.4f}  r {corr}  "
                      f"SSIM {sv}  ({n / (time.perf_counter() - ts):.0f} frames/s)", file=sys.stderr)
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - t0
    labels = np.concatenate([ds.steps(i, "steering") for i in episodes]).astype(np.float64)
    report = {
        "kind": "passive",
        "policy": getattr(policy, "name", config.get("policy")),
        "checkpoint": spec.checkpoint,
        "data": os.fspath(Path(spec.data).resolve()),
        "env": ds.attrs.get("env_id"),
        "split": split,
        "split_reason": why,
        "episodes": [int(ds.episodes[i].id) for i in episodes],
        "frames": int(labels.size),
        "reference": {"label_mean": float(labels.mean()), "label_std": float(labels.std()),
                      "constant_mse": float(labels.var()),
                      "note": "constant_mse: the MSE of always predicting the mean label (a floor to beat)"},
        "results": rows,
        "settings": {**{k: v for k, v in asdict(spec).items() if k not in ("checkpoint", "data")},
                     "depth_for_fog": depth.kind, "min_dt_s": MIN_DT_S,
                     "ssim": "VisualBackProp of clean vs corrupted frame, Gaussian SSIM sigma 1.5, L=1"},
    }
    out = Path(out_dir)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown(report))
    if progress:
        print(f"passive test: {frames_run} policy frames in {wall:.1f} s ({frames_run / max(wall, 1e-9):.0f} frames/s)",
              file=sys.stderr)
    return report


def markdown(report: dict[str, Any]) -> str:
    """report.md: one table, mean over all frames (± half the 95% interval over episodes)."""

    def f(v: Any, fmt: str) -> str:
        return "–" if v is None else fmt.format(v)

    def ci(row: dict[str, Any], k: str, fmt: str) -> str:
        c = (row.get("ci95") or {}).get(k)
        base = f(row.get(k), fmt)
        return base if not c else f"{base} ± {fmt.format((c[1] - c[0]) / 2)}"

    ref = report["reference"]
    lines = [
        f"# Passive test: {report['policy']} on {report['data']}",
        "",
        f"Checkpoint `{report['checkpoint']}`; split **{report['split']}** ({report['split_reason']}); "
        f"{len(report['episodes'])} episodes, {report['frames']} frames. The policy watches the recorded "
        "frames (state carried, recorded Δt) and nothing is driven; scores compare its steering with the "
        "recorded label. Constant-prediction MSE (label variance): "
        f"{ref['constant_mse']:.4f}. Fog depth: {report['settings']['depth_for_fog']}.",
        "",
        "| corruption | severity | frames | steering MSE | steering MAE | correlation | attention SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['corruption']} | {r['severity']} | {r['frames']} | {ci(r, 'steering_mse', '{:.4f}')} | "
                     f"{ci(r, 'steering_mae', '{:.4f}')} | {ci(r, 'steering_corr', '{:.3f}')} | "
                     f"{f(r.get('attention_ssim'), '{:.3f}')} |")
    for k, why in (report["settings"].get("skipped_conditions") or {}).items():
        lines.append("")
        lines.append(f"Not run: {k} ({why}).")
    return "\n".join(lines) + "\n"


def run_cli(args: Any) -> int:
    """`driving eval --data DIR ...` (driving/commands/evaluate.py hands over here)."""
    from driving.commands.evaluate import _int_list
    from driving.outputs import check_out_dir, writing
    from policies.checkpoint import read_config, resolve_run_dir

    if getattr(args, "env", None) or getattr(args, "envs", None):
        raise UserError("give --env (closed loop) or --data (passive test over recorded drives), not both")
    if getattr(args, "device", "cpu") not in ("cpu", "auto") or getattr(args, "precision", "fp32") != "fp32":
        raise UserError("the passive test runs fp32 on the CPU; drop --device/--precision with --data")
    corruptions = tuple(t.strip() for t in args.corruptions.split(",") if t.strip())
    if not corruptions:
        raise UserError("--corruptions is empty; e.g. none,noise,fog")
    severities = _int_list(args.severities, "--severities")
    check_out_dir(args.out, "report", force=args.force)
    if not Path(args.data).is_dir():
        raise UserError(f"--data {args.data} is not a dataset directory; import drives with `driving import` "
                        "or record them with `driving collect`")
    try:
        run_dir = resolve_run_dir(args.checkpoint)
        read_config(run_dir)
    except ValueError as exc:
        raise UserError(f"--checkpoint: {exc}") from None
    spec = PassiveSpec(
        checkpoint=os.fspath(run_dir), data=args.data, corruptions=corruptions, severities=severities,
        split=args.split, seed=args.seed, ssim_frames=args.ssim_frames,
        batch_episodes=8 if args.batch_episodes is None else args.batch_episodes,
    )
    with writing(args.out):
        report = passive_eval(spec, args.out)
    clean = report["results"][0]
    print(f"wrote {Path(args.out) / 'report.json'}: {len(report['results'])} conditions over "
          f"{len(report['episodes'])} episodes ({report['split']}); {clean['corruption']}: steering MSE "
          f"{clean['steering_mse']:.4f}, MAE {clean['steering_mae']:.4f}", file=sys.stderr)
    return 0
