"""Any video plus a CSV of timestamps and steering, aligned by time.

The CSV needs a header naming its columns: a time column (`time_s`, `time`, `timestamp`,
`t`, or `--time-column`) in `--time-unit` (s default), a steering column (`steering`,
`angle`, `steering_angle`, `steer`, or `--steering-column`), optionally `speed`. Frame times
are the video's own presentation timestamps (variable frame rate is honoured). Frame 0 is
at label time `--video-start` (default: the first label's time, i.e. video and log start
together). Each frame's label is interpolated linearly between the two labels around it
when both are within `--max-label-gap` seconds (else the nearest one within that gap, else
the frame is skipped as `no_label`).
"""

from __future__ import annotations

import bisect
import csv
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from driving.errors import UserError
from driving.importers.common import Record, SkipCounter, Stream, finite

TIME_NAMES = ("time_s", "time", "timestamp", "t", "timestamp_s", "ts", "stamp")
STEER_NAMES = ("steering", "angle", "steering_angle", "steer", "steering_deg")
SPEED_NAMES = ("speed", "speed_mps", "velocity")
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def _pick(head: list[str], given: str | None, names: tuple[str, ...], what: str, flag: str, path: Path) -> int | None:
    low = [h.strip().lower() for h in head]
    if given is not None:
        if given.strip().lower() not in low:
            raise UserError(f"{path} has no column {given!r} (columns: {', '.join(head)}); fix {flag}")
        return low.index(given.strip().lower())
    for n in names:
        if n in low:
            return low.index(n)
    return None


class Labels:
    """Label times (s, label clock) and raw steering, sorted as recorded."""

    def __init__(self, path: str | os.PathLike, time_column: str | None, steering_column: str | None,
                 time_unit: str, skips: SkipCounter) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"--labels {self.path} does not exist; give the CSV of timestamps and steering")
        if time_unit not in TIME_UNITS:
            raise UserError(f"--time-unit {time_unit!r}: choose one of {', '.join(TIME_UNITS)}")
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as f:
                rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise UserError(f"cannot read --labels {self.path} as CSV ({exc})") from None
        if len(rows) < 2:
            raise UserError(f"--labels {self.path} has no data rows; it needs a header and one row per label")
        head = rows[0]
        ti = _pick(head, time_column, TIME_NAMES, "time", "--time-column", self.path)
        si = _pick(head, steering_column, STEER_NAMES, "steering", "--steering-column", self.path)
        if ti is None or si is None:
            miss = [w for w, i in (("time", ti), ("steering", si)) if i is None]
            raise UserError(
                f"--labels {self.path} has no {' or '.join(miss)} column (header: {', '.join(head)}); "
                f"name them time_s and steering, or give --time-column/--steering-column")
        vi = _pick(head, None, SPEED_NAMES, "speed", "", self.path)
        scale = TIME_UNITS[time_unit]
        times: list[float] = []
        steer: list[float] = []
        speed: list[float] = []
        for n, row in enumerate(rows[1:], start=2):
            t = finite(row[ti]) if ti < len(row) else None
            s = finite(row[si]) if si < len(row) else None
            if t is None or s is None:
                skips.add("non_finite_label", f"{self.path.name} line {n}")
                continue
            t *= scale
            if times and t <= times[-1]:
                skips.add("time_backwards" if t < times[-1] else "time_repeated", f"{self.path.name} line {n}")
                continue
            times.append(t)
            steer.append(s)
            v = finite(row[vi]) if vi is not None and vi < len(row) else None
            speed.append(float("nan") if v is None else v)
        if not times:
            raise UserError(f"--labels {self.path} has no row with a finite time and steering")
        self.t = np.asarray(times)
        self.steering = np.asarray(steer)
        self.speed = np.asarray(speed)
        self.has_speed = vi is not None
        self.columns = {"time": head[ti], "steering": head[si], **({"speed": head[vi]} if vi is not None else {})}

    def at(self, t: float, max_gap: float) -> tuple[float, float] | None:
        """(steering, speed) at label time t (see module doc), or None without a label near t."""
        ts = self.t
        j = bisect.bisect_left(ts, t)
        if j < len(ts) and ts[j] == t:
            return float(self.steering[j]), float(self.speed[j])
        lo, hi = j - 1, j
        if 0 <= lo and hi < len(ts) and t - ts[lo] <= max_gap and ts[hi] - t <= max_gap:
            w = (t - ts[lo]) / (ts[hi] - ts[lo])
            return (float(self.steering[lo] + w * (self.steering[hi] - self.steering[lo])),
                    float(self.speed[lo] + w * (self.speed[hi] - self.speed[lo])))
        best = None
        for k in (lo, hi):
            if 0 <= k < len(ts) and abs(ts[k] - t) <= max_gap and (best is None or abs(ts[k] - t) < abs(ts[best] - t)):
                best = k
        if best is None:
            return None
        return float(self.steering[best]), float(self.speed[best])


def open_video(path: Path) -> cv2.VideoCapture:
    if not path.is_file():
        raise UserError(f"video {path} does not exist; give the video file (mp4, mkv, avi, ...)")
    cap = cv2.VideoCapture(os.fspath(path))
    ok = cap.isOpened()
    frame = cap.read()[1] if ok else None
    if frame is None:
        cap.release()
        raise UserError(f"video {path} does not decode (not a video, or a codec this OpenCV/FFmpeg lacks); "
                        f"re-encode it with `ffmpeg -i {path.name} -c:v libx264 out.mp4` and import out.mp4")
    cap.release()
    return cv2.VideoCapture(os.fspath(path))


class VideoSource:
    """Frames of a video with their time and aligned label (`records()`)."""

    def __init__(self, path: str | os.PathLike, labels: Labels, video_start: float | None,
                 max_label_gap: float) -> None:
        self.path = Path(path)
        open_video(self.path).release()
        if not max_label_gap > 0:
            raise UserError(f"--max-label-gap {max_label_gap} must be > 0 seconds")
        self.labels = labels
        self.video_start = float(labels.t[0] if video_start is None else video_start)
        self.max_label_gap = float(max_label_gap)
        self.frames_read = 0

    def records(self) -> Iterator[Record]:
        cap = open_video(self.path)
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        i = 0
        nan = float("nan")
        try:
            while True:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                pts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if not np.isfinite(pts) or (pts <= 0 and i > 0):
                    pts = i / fps if fps > 0 else nan
                t = self.video_start + pts
                lab = self.labels.at(t, self.max_label_gap)
                i += 1
                if lab is None:
                    yield Record(i - 1, t, nan, None, extra={"skip": "no_label", "where": f"t={pts:.3f} s"})
                    continue
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yield Record(key=i - 1, time_s=t, steering=lab[0], image=rgb, speed=lab[1])
        finally:
            self.frames_read = i
            cap.release()


def streams(src: str | os.PathLike, labels_path: str | os.PathLike | None, *, time_column: str | None,
            steering_column: str | None, time_unit: str, video_start: float | None, max_label_gap: float,
            skips: SkipCounter) -> tuple[list[Stream], VideoSource]:
    if labels_path is None:
        raise UserError("--format video needs --labels LABELS.csv (a header with time and steering columns)")
    labels = Labels(labels_path, time_column, steering_column, time_unit, skips)
    video = VideoSource(src, labels, video_start, max_label_gap)
    stream = Stream(name=video.path.name, records=video.records, has_speed=labels.has_speed,
                    meta={"video": os.fspath(video.path.resolve()), "labels": os.fspath(labels.path.resolve()),
                          "label_columns": labels.columns, "video_start": video.video_start,
                          "max_label_gap_s": video.max_label_gap},
                    label_values=lambda: labels.steering.tolist())
    return [stream], video
