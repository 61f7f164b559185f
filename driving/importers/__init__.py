"""`driving import`: real drives (donkeycar tubs, Udacity logs, video + CSV) → our dataset.

The result is an ordinary liquid-drive dataset (docs/dataset.md): the same zarr schema, the
same crash safety (each episode is staged and committed with one atomic rename), so
`driving train`, `driving eval --data` (the passive test) and `driving explain --data` read
it unchanged. What differs is recorded: the root `env_id` is `import/<format>` and its
`env_config["imported"]` holds the camera model (source size, crop, stored size,
intrinsics, height and pitch when given); every episode has `source: "import:<format>"`
and `origin` (format, path, options, session, first/last record, skip counts).

Bad input is refused before anything is written (UserError → exit 2): a folder that is not
a tub / has no log, a CSV without the named columns, labels beyond `--steering-scale`, a
video that does not decode, an `--out` holding a dataset of another camera. A rerun of the
same import skips the episodes already committed (it resumes after a kill).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from driving.errors import UserError
from driving.importers.common import (
    Geometry,
    ImportOptions,
    SkipCounter,
    Stream,
    check_labels,
    decode_image,
    episode_arrays,
    episodes_of,
    options_hash,
    resolve,
)

FORMATS = ("donkeycar", "udacity", "video")
ENV_PREFIX = "import/"
SOURCE_PREFIX = "import:"

__all__ = ["FORMATS", "ImportOptions", "is_imported", "require_simulator", "run_import"]


def is_imported(attrs: dict[str, Any]) -> bool:
    """True for a dataset written by `driving import` (root attributes of the store)."""
    cfg = attrs.get("env_config") or {}
    return str(attrs.get("env_id", "")).startswith(ENV_PREFIX) or (isinstance(cfg, dict) and "imported" in cfg)


def require_simulator(dataset: Any, what: str = "DAgger") -> None:
    """Refuse `what` (DAgger: policy-driven rollouts) on a dataset that has no simulator."""
    attrs = getattr(dataset, "attrs", {}) or {}
    if is_imported(attrs):
        fmt = str(attrs.get("env_id", ""))[len(ENV_PREFIX):] or "imported"
        raise UserError(
            f"dataset {getattr(dataset, 'root', '')} holds imported real drives ({fmt}); {what} needs a "
            "simulator to drive the policy in and an expert to label it, which recorded footage has not: "
            "drop --dagger-rounds (behaviour cloning only) or train on a `driving collect` dataset"
        )


def _camera_model(geo: Geometry, opts: ImportOptions) -> dict[str, Any]:
    model: dict[str, Any] = {
        "source_hw": list(geo.source_hw), "crop_rows": list(geo.crop_rows), "size": list(geo.size),
        "fov_deg": opts.camera_fov_deg, "height_m": opts.camera_height_m, "pitch_deg": opts.camera_pitch_deg,
    }
    if opts.camera_fov_deg is not None:
        model["intrinsics"] = {k: round(v, 6) for k, v in geo.intrinsics(opts.camera_fov_deg).items()}
    return model


def _camera(geo: Geometry, opts: ImportOptions) -> dict[str, Any]:
    """The dataset's `camera` (keys the simulator's CameraSpec knows, so tools can reuse it)."""
    cam: dict[str, Any] = {"height": geo.size[0], "width": geo.size[1]}
    for key, v in (("fov_deg", opts.camera_fov_deg), ("height_m", opts.camera_height_m),
                   ("pitch_deg", opts.camera_pitch_deg)):
        if v is not None:
            cam[key] = float(v)
    return cam


def _probe_geometry(streams: list[Stream], opts: ImportOptions, what: str) -> Geometry:
    """Decode the first readable image, so that the camera is known before writing."""
    tried = 0
    for s in streams:
        for r in s.records():
            if r.extra.get("skip"):
                continue
            tried += 1
            try:
                rgb = decode_image(r.image)
            except OSError:
                rgb = None
            if rgb is not None:
                return Geometry.make(rgb.shape[:2], opts.crop, opts.size)
            if tried >= 200:
                break
    raise UserError(f"no readable image among the first {tried} records of {what}; check that the "
                    "image files are beside the log (images/ or IMG/) and are JPEG/PNG")


def _check_out(out: Path, camera: dict[str, Any], model: dict[str, Any]) -> None:
    """Refuse an --out that holds simulator data or drives of another camera (nothing is touched)."""
    from driving.dataset import Dataset

    if not (out / "zarr.json").exists():
        return
    try:
        ds = Dataset(out)
    except ValueError as exc:
        raise UserError(f"--out {out}: {exc}") from None
    if not is_imported(ds.attrs):
        raise UserError(f"--out {out} holds simulator recordings ({ds.attrs.get('env_id')}); import real "
                        "drives into a new --out directory")
    have = (ds.attrs.get("env_config") or {}).get("imported", {}).get("camera_model")
    if have is not None and (have != model or ds.camera != camera):
        diffs = [k for k in model if have.get(k) != model.get(k)]
        raise UserError(
            f"--out {out} holds drives from another camera ({', '.join(f'{k} {have.get(k)} vs {model.get(k)}' for k in diffs[:3])}); "
            "import into a new --out, or give the same --size/--crop/--camera-* options as before"
        )


def run_import(fmt: str, src: str | os.PathLike, out: str | os.PathLike, opts: ImportOptions,
               *, progress: bool = True, **kw: Any) -> dict[str, Any]:
    """Import SRC into the dataset OUT; returns the summary (also written to OUT/imports/).

    Format keywords: donkeycar `modes` (set of user/mode values, None = all); udacity
    `side_cameras` (offset or None), `rate_hz`; video `labels`, `time_column`,
    `steering_column`, `time_unit`, `video_start`, `max_label_gap`.
    """
    from driving.dataset import DatasetWriter
    from policies.atomicio import atomic_write_json

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    opts.check()
    out = Path(out)
    src_path = Path(src)
    skips = SkipCounter()
    fmt_opts: dict[str, Any] = {}
    if fmt == "donkeycar":
        from driving.importers import donkeycar

        modes = kw.get("modes")
        streams, _ = donkeycar.streams(src_path, modes)
        fmt_opts["modes"] = sorted(modes) if modes is not None else "all"
    elif fmt == "udacity":
        from driving.importers import udacity

        streams, _ = udacity.streams(src_path, kw.get("side_cameras"), kw.get("rate_hz"))
        fmt_opts.update(side_cameras=kw.get("side_cameras"), rate_hz=kw.get("rate_hz"))
    else:
        from driving.importers import video

        streams, _ = video.streams(
            src_path, kw.get("labels"), time_column=kw.get("time_column"),
            steering_column=kw.get("steering_column"), time_unit=kw.get("time_unit", "s"),
            video_start=kw.get("video_start"), max_label_gap=float(kw.get("max_label_gap", 0.25)), skips=skips)
        fmt_opts.update({k: kw.get(k) for k in ("labels", "time_column", "steering_column", "time_unit",
                                                 "video_start", "max_label_gap")})
        if fmt_opts.get("labels") is not None:
            fmt_opts["labels"] = resolve(fmt_opts["labels"])
    what = f"{fmt} source {src_path}"
    label_stats = check_labels(streams, opts, what)
    geo = _probe_geometry(streams, opts, what)
    camera, model = _camera(geo, opts), _camera_model(geo, opts)
    _check_out(out, camera, model)
    src_abs = resolve(src_path)
    ohash = options_hash(fmt, src_abs, opts, fmt_opts)
    writer = DatasetWriter(
        out, f"{ENV_PREFIX}{fmt}", {"imported": {"format": fmt, "camera_model": model}}, camera,
        durable=True,
    )
    done = {(e.get("origin") or {}).get("key") for e in writer.committed()}
    t_start = time.perf_counter()
    committed: list[int] = []
    frames_written = 0
    box: list[Geometry | None] = [geo]
    try:
        for stream in streams:
            for ep in episodes_of(stream, opts, skips, box):
                n = len(ep.frames)
                if n < opts.min_episode_frames:
                    skips.add("short_episode", f"{stream.name} records {ep.keys[0]}..{ep.keys[-1]} ({n} frames)", n)
                    continue
                key = f"{ohash}:{stream.name}:{ep.keys[0]}"
                if key in done:
                    skips.add("already_imported", f"{stream.name} from record {ep.keys[0]}", n)
                    continue
                steps = episode_arrays(ep, stream)
                meta = {
                    "source": f"{SOURCE_PREFIX}{fmt}", "env_id": f"{ENV_PREFIX}{fmt}",
                    "seed": None, "ended_by": ep.ended_by, "dart_noise": 0.0,
                    "camera_position": stream.camera_position, "has_speed": stream.has_speed,
                    "origin": {
                        "key": key, "format": fmt, "path": src_abs, "stream": stream.name,
                        "session": ep.session, "first_record": ep.keys[0], "last_record": ep.keys[-1],
                        "start_time_s": ep.time_s[0], "steering_offset": stream.steering_offset,
                        "options": {**opts.as_dict(), **fmt_opts}, **stream.meta,
                    },
                    "nominal_dt_s": float(steps["dt_s"][0]),
                    "dt_min_s": float(np.min(steps["dt_s"])), "dt_max_s": float(np.max(steps["dt_s"])),
                }
                committed.append(writer.append_episode(np.stack(ep.frames), steps, meta))
                frames_written += n
                if progress:
                    print(f"  episode {committed[-1]}: {stream.name} records {ep.keys[0]}..{ep.keys[-1]}, "
                          f"{n} frames, {float(steps['time_s'][-1]):.1f} s", file=sys.stderr)
    finally:
        writer.close()
    wall = time.perf_counter() - t_start
    summary = {
        "format": fmt, "source": src_abs, "out": resolve(out), "options": {**opts.as_dict(), **fmt_opts},
        "camera": camera, "camera_model": model, "labels": label_stats,
        "episodes_written": len(committed), "episode_ids": committed, "frames_written": frames_written,
        "skipped": skips.as_dict(), "skipped_total": int(sum(skips.counts.values())),
        "seconds": round(wall, 3), "frames_per_s": round(frames_written / wall, 1) if wall > 0 else math.nan,
    }
    atomic_write_json(out / "imports" / f"{fmt}-{ohash}.json", summary)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable lines of an import summary (the CLI prints them)."""
    lines = [f"imported {s['frames_written']} frames in {s['episodes_written']} episode(s) from "
             f"{s['format']} {s['source']} into {s['out']} ({s['frames_per_s']} frames/s)"]
    if s["skipped"]:
        lines.append(f"skipped {s['skipped_total']} record(s):")
        for reason, d in s["skipped"].items():
            ex = f"; e.g. {', '.join(d['examples'])}" if d["examples"] else ""
            lines.append(f"  {reason}: {d['count']} ({d['meaning']}){ex}")
    else:
        lines.append("skipped nothing")
    return "\n".join(lines)
