"""What every importer shares: frame geometry, label scaling, episode splitting, skip counts.

Why one pipeline: the three formats differ only in how records are listed (a tub's
catalogs, a Udacity CSV, a video's frames) and how an image is obtained. Checking the
labels, cutting episodes at gaps and session changes, turning real timestamps into
`dt_s`, cropping/resizing, counting what was skipped and committing episodes through the
dataset writer (atomic, crash-safe) is the same for all of them, so it lives here once.

Two passes: the labels are checked first (cheap: they are text), so that a wrong
`--steering-scale` or a CSV without the named columns is refused before a single frame is
written; images are decoded only in the second pass.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from driving.errors import UserError

#: Skip reasons, in the order the summary lists them (key -> what it means).
SKIP_REASONS: dict[str, str] = {
    "deleted": "marked deleted in the source (donkeycar deleted_indexes)",
    "bad_record": "catalog/CSV line that is not a readable record",
    "mode": "driving mode not selected (--modes)",
    "missing_image": "image file missing",
    "undecodable_image": "image (JPEG/PNG) or video frame does not decode",
    "wrong_image_size": "image size differs from the first image of the source",
    "non_finite_label": "steering (or time) is NaN, inf or not a number",
    "time_backwards": "timestamp earlier than the previous record (time going backwards)",
    "time_repeated": "timestamp equal to the previous record's",
    "no_label": "video frame with no label within --max-label-gap seconds",
    "subsampled": "dropped on purpose by --fps (not an error)",
    "short_episode": "in an episode shorter than --min-episode-frames",
    "already_imported": "episode already in --out from an earlier run of the same import",
}

#: Project steering convention: [-1, 1], positive = to the right (donkeycar, Udacity and the
#: highway-env simulator agree). Labels are divided by --steering-scale.
EPS_SCALE = 1e-6


@dataclass
class ImportOptions:
    """Options shared by every format (CLI flags of `driving import`)."""

    size: tuple[int, int] = (78, 200)  # stored frame (height, width): the paper's camera
    crop: tuple[float, float] = (0.0, 0.0)  # rows cut from the top and bottom (px, or fractions < 1)
    steering_scale: float = 1.0  # raw label / scale -> [-1, 1]
    invert_steering: bool = False
    clip_steering: bool = False  # clip labels beyond the scale instead of refusing
    max_gap_s: float = 1.0  # a longer interval between kept records starts a new episode
    min_episode_frames: int = 16
    max_episode_frames: int = 2000  # longer continuous drives are cut (bounded memory)
    fps: float | None = None  # subsample to at most this frame rate (None = keep all)
    camera_fov_deg: float | None = None  # horizontal FOV of the source camera
    camera_height_m: float | None = None
    camera_pitch_deg: float | None = None  # down > 0
    speed_scale: float = 1.0  # raw speed * scale -> m/s

    def check(self) -> None:
        h, w = self.size
        if h < 8 or w < 8:
            raise UserError(f"--size {h}x{w} is too small; give HEIGHTxWIDTH of at least 8x8, e.g. 78x200")
        if not (math.isfinite(self.steering_scale) and self.steering_scale > 0):
            raise UserError(f"--steering-scale {self.steering_scale} must be > 0 (e.g. 25 for ±25 degrees)")
        if not self.max_gap_s > 0:
            raise UserError(f"--max-gap {self.max_gap_s} must be > 0 seconds (e.g. 1.0)")
        if self.min_episode_frames < 2:
            raise UserError(f"--min-episode-frames {self.min_episode_frames} must be >= 2")
        if self.max_episode_frames < self.min_episode_frames:
            raise UserError(f"--max-episode-frames {self.max_episode_frames} must be >= "
                            f"--min-episode-frames {self.min_episode_frames}")
        if self.fps is not None and not self.fps > 0:
            raise UserError(f"--fps {self.fps} must be > 0 (e.g. 10)")
        for v, what in ((self.crop[0], "top"), (self.crop[1], "bottom")):
            if not (math.isfinite(v) and v >= 0):
                raise UserError(f"--crop {what} value {v} must be >= 0 (pixels, or a fraction < 1)")
        if self.camera_fov_deg is not None and not 0 < self.camera_fov_deg < 180:
            raise UserError(f"--camera-fov-deg {self.camera_fov_deg} must be between 0 and 180")
        if self.camera_height_m is not None and not self.camera_height_m > 0:
            raise UserError(f"--camera-height-m {self.camera_height_m} must be > 0 metres")
        if self.camera_pitch_deg is not None and not -45 < self.camera_pitch_deg < 60:
            raise UserError(f"--camera-pitch-deg {self.camera_pitch_deg} must be in (-45, 60) (down > 0)")
        if not (math.isfinite(self.speed_scale) and self.speed_scale > 0):
            raise UserError(f"--speed-scale {self.speed_scale} must be > 0")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["crop"] = list(self.crop)
        return d


@dataclass
class Record:
    """One source record before its image is decoded.

    `image` is a file path, raw encoded bytes, or an already decoded RGB array (video);
    `key` identifies the record in its source (tub index, CSV row, frame number).
    """

    key: int
    time_s: float
    steering: float  # raw, before scaling
    image: Any
    session: str = ""
    throttle: float | None = None
    speed: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Stream:
    """One importable sequence of records (a camera of a log, a tub, a video)."""

    name: str  # shown in the summary and stored in the episode metadata
    records: Callable[[], Iterable[Record]]  # called twice: label check, then import
    steering_offset: float = 0.0  # added after scaling (Udacity side cameras)
    camera_position: str = "center"
    meta: dict[str, Any] = field(default_factory=dict)
    has_speed: bool = False
    has_throttle: bool = False
    #: raw labels for the first-pass check without decoding (video); default: from records()
    label_values: Callable[[], Iterable[float]] | None = None


class SkipCounter:
    """Counts skipped records by reason and keeps a few examples of each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, example: str, n: int = 1) -> None:
        if reason not in SKIP_REASONS:
            raise KeyError(reason)
        self.counts[reason] += n
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(example)

    def as_dict(self) -> dict[str, Any]:
        return {r: {"count": int(self.counts[r]), "meaning": SKIP_REASONS[r],
                    "examples": self.examples.get(r, [])}
                for r in SKIP_REASONS if self.counts[r]}


# ------------------------------------------------------------------------------------------------
# geometry


@dataclass(frozen=True)
class Geometry:
    """Source size → crop → stored size, and the pinhole model of the stored frame.

    The stored frame's intrinsics follow from the source camera's horizontal FOV (square
    pixels, principal point at the centre of the source image): cropping rows moves the
    principal row, resizing scales both focal lengths. With the camera's height and pitch
    this gives the flat-ground depth that fog on footage uses (`flat_ground_depth`).
    """

    source_hw: tuple[int, int]
    crop_rows: tuple[int, int]  # rows removed at the top, at the bottom (source pixels)
    size: tuple[int, int]

    @staticmethod
    def make(source_hw: tuple[int, int], crop: tuple[float, float], size: tuple[int, int]) -> Geometry:
        h0 = int(source_hw[0])

        def rows(v: float, what: str) -> int:
            if 0 < v < 1:
                return int(round(v * h0))
            if v != int(v):
                raise UserError(f"--crop {what} {v}: give whole pixels or a fraction below 1")
            return int(v)

        top, bottom = rows(crop[0], "top"), rows(crop[1], "bottom")
        if top + bottom >= h0 - 1:
            raise UserError(
                f"--crop {crop[0]},{crop[1]} removes {top + bottom} of the {h0} image rows; "
                "leave at least 2 rows (e.g. --crop 0.3,0.1)"
            )
        return Geometry((int(source_hw[0]), int(source_hw[1])), (top, bottom), (int(size[0]), int(size[1])))

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        top, bottom = self.crop_rows
        h0 = rgb.shape[0]
        img = rgb[top: h0 - bottom] if (top or bottom) else rgb
        h, w = self.size
        if img.shape[0] != h or img.shape[1] != w:
            shrink = img.shape[0] >= h and img.shape[1] >= w
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return np.ascontiguousarray(img)

    def intrinsics(self, fov_deg: float) -> dict[str, float]:
        h0, w0 = self.source_hw
        top, bottom = self.crop_rows
        h, w = self.size
        f0 = (w0 / 2) / math.tan(math.radians(fov_deg) / 2)
        sy = h / (h0 - top - bottom)
        sx = w / w0
        return {"focal_px_x": f0 * sx, "focal_px_y": f0 * sy,
                "principal_row": (h0 / 2 - top) * sy, "principal_col": (w0 / 2) * sx}


def flat_ground_depth(camera: dict[str, Any], geometry: dict[str, Any] | None, sky_m: float = 1000.0) -> np.ndarray:
    """Per-pixel camera depth (m) of a flat road seen by a pitched pinhole camera (H, W).

    Row v looks at angle atan((v + 0.5 - cy) / fy) below the optical axis; with the camera
    pitched down by θ at height h the ray meets the ground at depth
    h / (cos θ · (v + 0.5 − cy)/fy + sin θ) — the simulator's own ground depth
    (envs/camera.py). Rows at or above the horizon get `sky_m`. Objects on the road (cars,
    trees) are not in the estimate: they fog as if they were the road behind them.
    Raises UserError naming the missing camera facts.
    """
    missing = [k for k in ("height_m", "pitch_deg", "fov_deg") if camera.get(k) is None]
    if missing:
        raise UserError(
            f"fog on recorded footage needs depth; this dataset has none and its camera lacks "
            f"{', '.join(missing)}: re-import with --camera-fov-deg F --camera-height-m M "
            "--camera-pitch-deg D (flat-ground depth, docs/real_drives.md), or drop fog"
        )
    h, w = int(camera["height"]), int(camera["width"])
    g = geometry or {}
    fy = float(g.get("focal_px_y") or (w / 2) / math.tan(math.radians(float(camera["fov_deg"])) / 2))
    cy = float(g.get("principal_row") if g.get("principal_row") is not None else h / 2)
    th = math.radians(float(camera["pitch_deg"]))
    t = (np.arange(h) + 0.5 - cy) / fy
    denom = math.cos(th) * t + math.sin(th)
    ground = denom > 1e-9
    row = np.where(ground, float(camera["height_m"]) / np.where(ground, denom, 1.0), sky_m)
    row = np.minimum(row, sky_m).astype(np.float32)
    return np.repeat(row[:, None], w, axis=1)


# ------------------------------------------------------------------------------------------------
# images


def decode_image(image: Any) -> np.ndarray | None:
    """RGB uint8 (H,W,3) from a path, encoded bytes or an array; None when it does not decode.

    Raises FileNotFoundError for a missing file (counted separately from a broken one).
    """
    if isinstance(image, np.ndarray):
        return image
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            data = f.read()
    else:
        data = image
    if not data:
        return None
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[0] < 2 or bgr.shape[1] < 2:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------------------
# the pipeline


def finite(x: Any) -> float | None:
    """float(x) when it is a finite number, else None (strings, None, NaN, inf)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def check_labels(streams: list[Stream], opts: ImportOptions, what: str) -> dict[str, Any]:
    """First pass over the labels: refuse labels beyond the declared scale before writing.

    Returns label statistics (raw min/max, count) for the summary.
    """
    lo, hi, n, beyond = math.inf, -math.inf, 0, 0
    worst = 0.0
    limit = opts.steering_scale * (1 + EPS_SCALE)
    for s in streams:
        if s.camera_position != "center":
            continue  # side cameras reuse the centre labels
        values = s.label_values() if s.label_values is not None else (
            r.steering for r in s.records() if not r.extra.get("skip"))
        for raw in values:
            v = finite(raw)
            if v is None:
                continue
            n += 1
            lo, hi = min(lo, v), max(hi, v)
            if abs(v) > limit:
                beyond += 1
                worst = max(worst, abs(v))
    if n == 0:
        raise UserError(f"{what} has no record with a finite steering label; check the source and its columns")
    if beyond and not opts.clip_steering:
        raise UserError(
            f"{beyond} of {n} steering labels in {what} lie outside the declared scale "
            f"±{opts.steering_scale:g} (largest |label| {worst:g}); give --steering-scale {_nice(worst)} "
            "(e.g. degrees) or --clip-steering to clip them"
        )
    return {"labels": n, "raw_min": lo, "raw_max": hi, "beyond_scale": beyond}


def _nice(v: float) -> str:
    for c in (1, 2, 5, 10, 15, 20, 25, 30, 45, 60, 90, 180, 360, 450, 540, 720, 900, 1000, 32768):
        if v <= c:
            return str(c)
    return f"{v:g}"


@dataclass
class _Episode:
    frames: list[np.ndarray] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)
    steering: list[float] = field(default_factory=list)
    action: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    throttle: list[float] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)
    session: str = ""
    ended_by: str = "end"


def episodes_of(
    stream: Stream, opts: ImportOptions, skips: SkipCounter, geometry_box: list[Geometry | None],
) -> Iterator[_Episode]:
    """Second pass: decode, clean, and cut one stream into episodes (see module doc).

    A new episode starts at a session change, at an interval longer than `max_gap_s`
    between kept records, and (tubs) where deleted records leave a hole
    (`record.extra["after_deleted"]`). `--fps` keeps the first record at or after each
    tick of a 1/fps grid anchored at the episode's first frame (10 % tolerance).
    """
    sign = -1.0 if opts.invert_steering else 1.0
    scale = opts.steering_scale
    ep = _Episode()
    last_t: float | None = None
    last_session: str | None = None
    pending_break = False
    period = None if opts.fps is None else 1.0 / opts.fps
    anchor = 0.0
    tick = 0
    for r in stream.records():
        tag = f"{stream.name}#{r.key}"
        skip = r.extra.get("skip")
        if skip:
            where = r.extra.get("where")
            skips.add(skip, f"{tag} ({where})" if where else tag)
            continue
        if r.extra.get("after_deleted"):
            pending_break = True
        t = finite(r.time_s)
        v = finite(r.steering)
        if t is None or v is None:
            skips.add("non_finite_label", tag)
            continue
        boundary = None
        if last_session is not None and r.session != last_session:
            boundary = "session"
        elif last_t is not None:
            if t < last_t:
                skips.add("time_backwards", f"{tag} (t={t:.3f} s < {last_t:.3f} s)")
                continue
            if t == last_t:
                skips.add("time_repeated", tag)
                continue
            if t - last_t > opts.max_gap_s:
                boundary = "gap"
            elif pending_break:
                boundary = "deleted"
        if period is not None and boundary is None and last_t is not None:
            if t < anchor + tick * period - 0.1 * period:
                skips.add("subsampled", tag)
                continue
        try:
            rgb = decode_image(r.image)
        except FileNotFoundError:
            skips.add("missing_image", f"{tag} ({r.image})")
            continue
        except OSError as exc:
            skips.add("undecodable_image", f"{tag} ({exc})")
            continue
        if rgb is None:
            where = r.image if isinstance(r.image, (str, os.PathLike)) else "frame"
            skips.add("undecodable_image", f"{tag} ({where})")
            continue
        geo = geometry_box[0]
        if geo is None:
            geo = geometry_box[0] = Geometry.make(rgb.shape[:2], opts.crop, opts.size)
        elif tuple(rgb.shape[:2]) != geo.source_hw:
            skips.add("wrong_image_size", f"{tag} ({rgb.shape[1]}x{rgb.shape[0]}, expected "
                                          f"{geo.source_hw[1]}x{geo.source_hw[0]})")
            continue
        if boundary is None and len(ep.frames) >= opts.max_episode_frames:
            boundary = "length"
        if boundary is not None and ep.frames:
            ep.ended_by = boundary
            yield ep
            ep = _Episode()
        pending_break = False
        if not ep.frames:
            anchor, tick = t, 0
        if period is not None:
            tick = int(math.floor((t - anchor) / period + 0.1)) + 1
        label = sign * v / scale
        if opts.clip_steering:
            label = min(1.0, max(-1.0, label))
        executed = label
        if stream.steering_offset:
            label = min(1.0, max(-1.0, label + stream.steering_offset))
        ep.frames.append(geo.apply(rgb))
        ep.time_s.append(t)
        ep.steering.append(label)
        ep.action.append(executed)
        sp = finite(r.speed)
        ep.speed.append(0.0 if sp is None else sp * opts.speed_scale)
        th = finite(r.throttle)
        ep.throttle.append(0.0 if th is None else th)
        ep.keys.append(int(r.key))
        ep.session = r.session
        last_t, last_session = t, r.session
    if ep.frames:
        yield ep


def episode_arrays(ep: _Episode, stream: Stream) -> dict[str, np.ndarray]:
    """Per-step arrays of an episode: labels, executed steering, speed, real time and Δt."""
    t = np.asarray(ep.time_s, np.float64)
    dt = np.diff(t)
    nominal = float(np.median(dt)) if dt.size else 0.1
    steps = {
        "steering": np.asarray(ep.steering, np.float32),
        "action": np.asarray(ep.action, np.float32),
        "speed": np.asarray(ep.speed, np.float32),
        "time_s": t - t[0],
        "dt_s": np.concatenate([[nominal], dt]).astype(np.float32),
    }
    if stream.has_throttle:
        steps["throttle"] = np.asarray(ep.throttle, np.float32)
    return steps


def options_hash(fmt: str, src: str, opts: ImportOptions, extra: dict[str, Any]) -> str:
    blob = json.dumps({"format": fmt, "src": src, "options": opts.as_dict(), **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve(path: str | os.PathLike) -> str:
    return os.fspath(Path(path).resolve())
