"""Donkeycar tub (format v2) reader, written from donkeycar's documentation and source.

A v2 tub is a folder:

    manifest.json              five JSON lines: input keys, their types, user metadata,
                               manifest metadata (created_at, sessions), catalog metadata
                               {"paths": [...], "current_index", "max_len", "deleted_indexes"}
    catalog_N.catalog          JSON lines, one record each (keys sorted), "\\n" or "\\r\\n"
    catalog_N.catalog_manifest one JSON line {"path", "created_at", "start_index", "line_lengths"}
    images/                    frames, named in the record ("cam/image_array": "12_cam_image_array_.jpg")

Record fields used: `cam/image_array`, `user/angle` (steering in [-1, 1], + = right),
`user/throttle`, `user/mode` ("user", "local_angle", "local"), `_timestamp_ms` (wall
clock), `_index` (running record number; `deleted_indexes` lists deleted ones),
`_session_id` ("YY-MM-DD_N": one per `manage.py drive` run). Nothing of donkeycar is
imported: the format is plain JSON, so it is read directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from driving.errors import UserError
from driving.importers.common import Record, Stream

IMAGE_KEY = "cam/image_array"
ANGLE_KEY = "user/angle"
THROTTLE_KEY = "user/throttle"
MODE_KEY = "user/mode"


def _json_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return [ln.strip() for ln in f.read().splitlines() if ln.strip()]


def read_manifest(tub: Path) -> dict[str, Any]:
    """Parse manifest.json; UserError naming the problem when it is not a v2 tub manifest."""
    path = tub / "manifest.json"
    try:
        lines = _json_lines(path)
        docs = [json.loads(ln) for ln in lines[:5]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a readable donkeycar tub manifest ({exc}); "
                        "point SRC at a tub folder written by donkeycar >= 4 (tub v2)") from None
    if len(docs) < 5 or not isinstance(docs[0], list) or not isinstance(docs[4], dict) \
            or "paths" not in docs[4]:
        raise UserError(f"{path} does not have the five header lines of a donkeycar v2 manifest "
                        "(inputs, types, metadata, manifest metadata, catalog metadata); "
                        "point SRC at a tub written by donkeycar >= 4")
    inputs, types, meta, manifest_meta, catalogs = docs
    return {"inputs": inputs, "types": types, "metadata": meta, "manifest_metadata": manifest_meta,
            "paths": list(catalogs.get("paths") or []),
            "deleted_indexes": sorted(int(i) for i in catalogs.get("deleted_indexes") or []),
            "current_index": catalogs.get("current_index"), "max_len": catalogs.get("max_len")}


def find_tubs(src: Path) -> list[Path]:
    """SRC itself when it is a tub, else the tubs directly inside it (a data/ folder)."""
    if not src.exists():
        raise UserError(f"donkeycar tub {src} does not exist; give the tub folder (with manifest.json)")
    if not src.is_dir():
        raise UserError(f"donkeycar tub {src} is a file; give the tub folder (with manifest.json)")
    if (src / "manifest.json").is_file():
        return [src]
    tubs = sorted(p for p in src.iterdir() if p.is_dir() and (p / "manifest.json").is_file())
    if tubs:
        return tubs
    if any(src.glob("record_*.json")):
        raise UserError(f"{src} is a donkeycar v1 tub (record_*.json files); convert it with "
                        "donkeycar's scripts/convert_to_tub_v2.py --tub SRC --output NEW and import NEW")
    raise UserError(f"{src} is not a donkeycar tub: no manifest.json in it or in its sub-folders; "
                    "give the tub folder that `manage.py drive` wrote (e.g. mycar/data)")


class TubReader:
    """Records of one tub in index order, with deleted records flagged (`records()`)."""

    def __init__(self, tub: Path, modes: set[str] | None) -> None:
        self.tub = tub
        self.manifest = read_manifest(tub)
        inputs = self.manifest["inputs"]
        for key in (IMAGE_KEY, ANGLE_KEY):
            if key not in inputs:
                raise UserError(f"tub {tub} records no {key!r} (inputs: {', '.join(map(str, inputs))}); "
                                "import a tub recorded with the camera and the user's steering")
        if not self.manifest["paths"]:
            raise UserError(f"tub {tub} lists no catalog files in manifest.json; it holds no records")
        self.deleted = set(self.manifest["deleted_indexes"])
        self.modes = modes

    def raw(self) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        """(index, record or None if the line is not JSON, catalog name) for every line."""
        index = 0
        for name in self.manifest["paths"]:
            cat = self.tub / name
            if not cat.is_file():
                raise UserError(f"catalog {cat} listed in {self.tub / 'manifest.json'} is missing; "
                                "the tub is incomplete (copy it again from the car)")
            start = None
            man = cat.with_name(f"{cat.stem}.catalog_manifest")
            if man.is_file():
                try:
                    start = int(json.loads(_json_lines(man)[0]).get("start_index"))
                except (OSError, IndexError, ValueError, TypeError, AttributeError):
                    start = None
            if start is not None:
                index = start
            for ln in _json_lines(cat):
                try:
                    rec = json.loads(ln)
                    if not isinstance(rec, dict):
                        rec = None
                except json.JSONDecodeError:
                    rec = None
                yield index, rec, name
                index += 1

    def records(self) -> Iterator[Record]:
        """Every record in index order; deleted ones, unselected modes and unreadable lines
        carry `extra["skip"]` (the pipeline counts them), and the first kept record after
        such a hole carries `extra["after_deleted"]` (an episode boundary)."""
        after_deleted = False
        images = self.tub / "images"
        nan = float("nan")
        base: float | None = None  # first timestamp: times relative to it keep ms exact
        for pos, rec, cat in self.raw():
            if rec is None:
                yield Record(pos, nan, nan, None, extra={"skip": "bad_record", "where": cat})
                continue
            try:
                idx = int(rec.get("_index", pos))
            except (TypeError, ValueError):
                idx = pos
            if idx in self.deleted:
                after_deleted = True
                yield Record(idx, nan, nan, None, extra={"skip": "deleted"})
                continue
            mode = rec.get(MODE_KEY)
            if self.modes is not None and mode is not None and str(mode) not in self.modes:
                after_deleted = True  # a pilot-driven stretch is a hole in the human drive
                yield Record(idx, nan, nan, None, extra={"skip": "mode", "where": f"user/mode={mode}"})
                continue
            ts = _num(rec.get("_timestamp_ms"))
            if base is None and ts == ts:
                base = ts
            name = rec.get(IMAGE_KEY)
            yield Record(
                key=idx, time_s=(ts - base) / 1000.0 if base is not None else nan,
                steering=_num(rec.get(ANGLE_KEY)),
                image=os.fspath(images / name) if isinstance(name, str) and name else "",
                session=f"{self.tub.name}/{rec.get('_session_id', '')}",
                throttle=_num(rec.get(THROTTLE_KEY)),
                extra={"after_deleted": after_deleted, "mode": mode},
            )
            after_deleted = False


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def streams(src: str | os.PathLike, modes: set[str] | None) -> tuple[list[Stream], list[TubReader]]:
    """One stream per tub in SRC (a tub, or a folder of tubs)."""
    readers = [TubReader(t, modes) for t in find_tubs(Path(src))]
    out = [Stream(name=r.tub.name, records=r.records, has_throttle=True,
                  meta={"tub": os.fspath(r.tub.resolve()),
                        "tub_metadata": r.manifest["metadata"],
                        "deleted_indexes": len(r.deleted)})
           for r in readers]
    return out, readers
