"""Udacity self-driving-car simulator logs: `driving_log.csv` plus its `IMG/` folder.

Columns `center, left, right, steering, throttle, brake, speed` — with that header line
(Udacity's sample data) or without one (what the simulator writes). Image paths are
absolute paths of the recording machine (often Windows) or relative ones; they are
resolved as `IMG/<file name>` beside the CSV first, then relative to the CSV. Time comes
from the file names, `center_YYYY_MM_DD_HH_MM_SS_mmm.jpg` (the simulator's wall clock,
milliseconds). Steering is already in [−1, 1] (±25°), + = right; speed is in mph.

Side cameras (`--side-cameras OFFSET`): the left and right images of every row become two
more streams whose label is the centre steering + OFFSET (left camera: the car looks as if
it were left of the lane centre, so steer right) and − OFFSET — the recovery trick of
Bojarski et al. 2016. The executed steering (`action`) stays the recorded one.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import re
from collections.abc import Iterator
from pathlib import Path

from driving.errors import UserError
from driving.importers.common import Record, Stream

COLUMNS = ("center", "left", "right", "steering", "throttle", "brake", "speed")
REQUIRED = ("center", "steering")
MPH_TO_MPS = 0.44704
_STAMP = re.compile(r"(\d{4})_(\d{2})_(\d{2})_(\d{2})_(\d{2})_(\d{2})_(\d{1,6})")


def find_log(src: Path) -> Path:
    if src.is_dir():
        log = src / "driving_log.csv"
        if not log.is_file():
            raise UserError(f"{src} has no driving_log.csv; give the Udacity log file or the folder holding it")
        return log
    if not src.is_file():
        raise UserError(f"Udacity log {src} does not exist; give driving_log.csv or its folder")
    return src


def stamp_ms(name: str) -> int | None:
    """Milliseconds since the epoch from a simulator file name, None when it has no stamp."""
    m = _STAMP.search(os.path.basename(name))
    if not m:
        return None
    y, mo, d, h, mi, s, ms = m.groups()
    try:
        t = _dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=_dt.timezone.utc)
    except ValueError:
        return None
    return int(t.timestamp()) * 1000 + int(round(int(ms) * 1000 / 10 ** len(ms)))


class UdacityLog:
    """The parsed CSV: column positions, rows, and how image paths resolve."""

    def __init__(self, src: str | os.PathLike, rate_hz: float | None = None) -> None:
        self.log = find_log(Path(src))
        self.folder = self.log.parent
        self.img_dir = self.folder / "IMG"
        self.rate_hz = rate_hz
        try:
            with open(self.log, newline="", encoding="utf-8-sig") as f:
                rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise UserError(f"cannot read {self.log} as CSV ({exc}); give a driving_log.csv") from None
        if not rows:
            raise UserError(f"{self.log} is empty; record a drive in the simulator first")
        head = [c.strip().lower() for c in rows[0]]
        if any(h in COLUMNS for h in head) or not _is_number(rows[0][3] if len(rows[0]) > 3 else ""):
            missing = [c for c in REQUIRED if c not in head]
            if missing:
                raise UserError(
                    f"{self.log} has a header without the column(s) {', '.join(missing)} (found: "
                    f"{', '.join(head)}); name them {', '.join(COLUMNS)} or drop the header line")
            self.col = {c: head.index(c) for c in COLUMNS if c in head}
            self.rows = rows[1:]
        else:
            if len(rows[0]) < 4:
                raise UserError(f"{self.log} rows have {len(rows[0])} columns; a Udacity log has "
                                f"{len(COLUMNS)}: {', '.join(COLUMNS)}")
            self.col = {c: i for i, c in enumerate(COLUMNS)}
            self.rows = rows
        if not self.rows:
            raise UserError(f"{self.log} has a header but no rows")
        if rate_hz is None and stamp_ms(self._cell(self.rows[0], "center")) is None:
            raise UserError(f"image names in {self.log} carry no timestamp (center_YYYY_MM_DD_HH_MM_SS_mmm.jpg); "
                            "give --rate HZ, the rate the rows were recorded at")

    def _cell(self, row: list[str], name: str) -> str:
        i = self.col.get(name)
        return row[i].strip() if i is not None and i < len(row) else ""

    def resolve(self, value: str) -> str:
        """Where the image of a CSV cell is on this machine (see module doc)."""
        v = value.strip().replace("\\", "/")
        if not v:
            return ""
        base = v.rsplit("/", 1)[-1]
        if self.img_dir.is_dir():
            cand = self.img_dir / base
            if cand.is_file():
                return os.fspath(cand)
        rel = self.folder / v
        if not os.path.isabs(v) and rel.is_file():
            return os.fspath(rel)
        return v if os.path.isabs(v) else os.fspath(rel)

    def records(self, camera: str) -> Iterator[Record]:
        base: int | None = None  # first stamp: times relative to it keep ms exact
        for i, row in enumerate(self.rows):
            name = self._cell(row, camera)
            if camera != "center" and not name:
                yield Record(i, float("nan"), float("nan"), None, extra={"skip": "missing_image",
                                                                         "where": f"no {camera} image"})
                continue
            if self.rate_hz is not None:
                t = i / self.rate_hz
            else:
                ms = stamp_ms(self._cell(row, "center") or name)
                if ms is not None and base is None:
                    base = ms
                t = float("nan") if ms is None or base is None else (ms - base) / 1000.0
            yield Record(
                key=i + 1, time_s=t, steering=_float(self._cell(row, "steering")),
                image=self.resolve(name) if name else "",
                throttle=_float(self._cell(row, "throttle")),
                speed=_float(self._cell(row, "speed")),
            )


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return float("nan")


def streams(src: str | os.PathLike, side_offset: float | None, rate_hz: float | None) -> tuple[list[Stream], UdacityLog]:
    log = UdacityLog(src, rate_hz)
    cams = [("center", 0.0)]
    if side_offset is not None:
        if not 0 < side_offset <= 1:
            raise UserError(f"--side-cameras {side_offset}: the steering correction must be in (0, 1], e.g. 0.2")
        missing = [c for c in ("left", "right") if c not in log.col]
        if missing:
            raise UserError(f"--side-cameras needs the {' and '.join(missing)} column(s), which {log.log} lacks")
        cams += [("left", side_offset), ("right", -side_offset)]
    out = [Stream(name=f"{log.log.parent.name or 'log'}:{cam}",
                  records=(lambda c=cam: log.records(c)), steering_offset=off, camera_position=cam,
                  has_speed="speed" in log.col, has_throttle="throttle" in log.col,
                  meta={"log": os.fspath(log.log.resolve()), "camera_position": cam, "steering_offset": off})
           for cam, off in cams]
    return out, log
