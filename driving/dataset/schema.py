"""The store's layout, metadata and value rules, shared by the writer, the reader and `verify`.

Why one module: what a valid store is (names, dtypes, label ranges, finite values, JSON-able
metadata) must be stated once, so that the writer refuses exactly what `verify` would flag.
The schema itself is documented in docs/dataset.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from driving.errors import UserError
from policies.atomicio import jsonable, looks_pickled

FORMAT_NAME = "liquid-drive-dataset"
SCHEMA_VERSION = 1
EPISODES_DIR = "episodes"
STAGING_DIR = ".staging"
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
EPISODE_PREFIX = "ep_"

#: Per-step arrays every episode has: name -> dtype.
REQUIRED_STEPS: dict[str, str] = {
    "steering": "float32",  # expert steering label in [-1, 1] for this frame
    "action": "float32",  # steering executed after this frame (label + DART noise, or a policy's)
    "speed": "float32",  # m/s, as in obs["speed"]
    "time_s": "float64",  # simulated time of this frame
    "dt_s": "float32",  # elapsed time since the previous frame (first frame: the nominal step)
}
#: Privileged state copied from `info` when the env provides it: name -> dtype.
OPTIONAL_STEPS: dict[str, str] = {
    "cross_track_m": "float32",
    "heading_error_rad": "float32",
    "curvature": "float32",
    "distance_m": "float32",
    "lap_progress": "float32",
    "on_road": "bool",
    "crashed": "bool",
    "collision": "bool",
}
STEP_DTYPES: dict[str, str] = {**REQUIRED_STEPS, **OPTIONAL_STEPS}
#: Closed ranges of the steering columns (the env's action space).
LABEL_RANGES: dict[str, tuple[float, float]] = {"steering": (-1.0, 1.0), "action": (-1.0, 1.0)}
#: Episode metadata that differs between byte-identical re-recordings; `fingerprint` skips it.
VOLATILE_META = frozenset({"recorded_at", "host", "hostname", "pid", "package_version"})

DEFAULT_CHUNK_FRAMES = 16
DEFAULT_CODEC = {"name": "blosc", "cname": "lz4", "clevel": 5}
EMPTY_GROUP: dict[str, Any] = {"zarr_format": 3, "node_type": "group", "attributes": {}}


class DatasetError(UserError):
    """A store is missing, damaged or incompatible; the message names the file and the fix."""


class DiskFullError(DatasetError):
    """The disk filled up while writing; committed episodes are intact."""


def is_enospc(exc: BaseException) -> bool:
    """True when `exc` or anything in its cause chain is a full disk or quota."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


# ------------------------------------------------------------------------------------------------
# value rules


def _non_finite(obj: Any, where: str) -> str | None:
    """Path of the first non-finite number inside `obj` (e.g. "env_config.dart_noise")."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            found = _non_finite(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _non_finite(v, f"{where}[{i}]")
            if found:
                return found
    elif isinstance(obj, np.ndarray):
        return _non_finite(obj.tolist(), where)
    elif isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return f"{where} = {float(obj)}"
    return None


def validate_meta(meta: Mapping[str, Any] | None, what: str = "episode metadata") -> dict[str, Any]:
    """Check metadata before anything is recorded and return its plain-JSON copy.

    JSON has no NaN or infinity, and a NaN setting (`--dart-noise nan`) silently means
    something else (no noise), so any non-finite number is refused, as is a negative
    `dart_noise` / `dt_jitter`. Callers (`collect`) may call this before building an env.
    """
    meta = dict(meta or {})
    bad = _non_finite(meta, "")
    if bad:
        key = bad.split(" = ")[0]
        hint = " (e.g. --dart-noise 0.1)" if key.endswith("dart_noise") else ""
        raise DatasetError(
            f"{what} {bad} is not a finite number; JSON cannot store it and it would change "
            f"what is recorded: pass a finite value{hint}"
        )
    for key in ("dart_noise", "dt_jitter"):
        v = meta.get(key)
        if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and v < 0:
            raise DatasetError(f"{what} {key} = {v} is negative; pass a value >= 0")
    return jsonable(meta)


def step_problems(name: str, values: np.ndarray, ranges: bool = True) -> list[str]:
    """What is wrong with a per-step array: non-finite values and (with `ranges`) labels
    outside `LABEL_RANGES`. Each problem names the array, the first bad step and how many
    steps are bad.

    The writer refuses non-finite values (never meaningful, and JSON statistics of them
    would be NaN) but stores any finite number, so tools and tests may record tags or
    other ranges; `verify`, and therefore training, refuses labels out of range.
    """
    arr = np.asarray(values)
    out: list[str] = []
    if arr.dtype.kind == "f" and arr.ndim >= 1 and len(arr):
        flat = arr.reshape(len(arr), -1)
        bad_steps = ~np.isfinite(flat).all(axis=1)
        if bad_steps.any():
            t = int(np.argmax(bad_steps))
            first = float(flat[t][~np.isfinite(flat[t])][0])
            out.append(
                f"{name}: non-finite value {first} at step {t} ({int(bad_steps.sum())} step(s))"
            )
    lim = LABEL_RANGES.get(name)
    if ranges and lim is not None and arr.ndim == 1 and arr.dtype.kind in "iuf":
        with np.errstate(invalid="ignore"):
            outside = (arr < lim[0]) | (arr > lim[1])
        if outside.any():
            t = int(np.argmax(outside))
            out.append(
                f"{name}: value {float(arr[t])} at step {t} is outside [{lim[0]:g}, {lim[1]:g}] "
                f"({int(outside.sum())} step(s))"
            )
    return out


# ------------------------------------------------------------------------------------------------
# reading the layout


def require_dataset_dir(root: Path) -> None:
    """Refuse a path that is not a directory, saying what it is instead."""
    if root.is_dir():
        return
    if not root.exists():
        raise DatasetError(f"dataset {root} does not exist; record one with `driving collect --out {root}`")
    kind = "a pickled file" if looks_pickled(root) else "a file"
    raise DatasetError(
        f"dataset {root} is {kind}, not a dataset directory; pass the directory that "
        "`driving collect --out DIR` wrote"
    )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_json(path: Path, strict: bool = False) -> Any:
    """Parse a JSON file. Readers accept the NaN that old writers produced (`verify` flags
    it); `strict` refuses NaN/Infinity like any other syntax error, as other JSON tools do."""
    text = path.read_text()
    return json.loads(text, parse_constant=_no_constants) if strict else json.loads(text)


def read_root_meta(root: Path) -> dict[str, Any] | None:
    """Our root attributes, or None when `root` holds no root `zarr.json` at all."""
    meta_path = root / "zarr.json"
    if not meta_path.exists():
        return None
    try:
        doc = read_json(meta_path)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{meta_path} is unreadable ({exc}); it is not a valid dataset") from exc
    doc = doc if isinstance(doc, dict) else {}
    attrs = (doc.get("attributes") or {}).get(FORMAT_NAME)
    if doc.get("zarr_format") != 3 or doc.get("node_type") != "group" or attrs is None:
        raise DatasetError(
            f"{root} is a zarr store but not a liquid-drive dataset (no '{FORMAT_NAME}' "
            "attributes); choose another --out directory"
        )
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(
            f"{root} has dataset schema version {attrs.get('schema_version')!r}, this "
            f"liquid-drive reads version {SCHEMA_VERSION}; record into a new directory"
        )
    return attrs


def open_root(root: Path) -> dict[str, Any]:
    """Root attributes of an existing store, with a message for every kind of wrong path."""
    require_dataset_dir(root)
    attrs = read_root_meta(root)
    if attrs is None:
        raise DatasetError(
            f"{root} is not a liquid-drive dataset (no zarr.json); record one with "
            "`driving collect --out DIR`"
        )
    return attrs


def episode_names(root: Path) -> list[str]:
    """Committed episode directories (`ep_NNNNNN`), sorted by id."""
    ep_dir = root / EPISODES_DIR
    if not ep_dir.is_dir():
        return []
    return sorted(n for n in os.listdir(ep_dir) if n.startswith(EPISODE_PREFIX) and n[3:].isdigit())


def read_episode_attrs(root: Path, name: str) -> dict[str, Any]:
    """An episode's metadata from its own group `zarr.json` (the truth, not the index)."""
    path = root / EPISODES_DIR / name / "zarr.json"
    try:
        return dict(read_json(path)["attributes"]["episode"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(
            f"episode metadata {path} is missing or corrupt ({exc}); run "
            f"`driving dataset verify {root}`"
        ) from exc


def read_index_cache(
    root: Path, strict: bool = False
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The cached entries of index.json by name, and why it was unusable (None when fine)."""
    idx_path = root / INDEX_FILE
    if not idx_path.exists():
        return {}, None
    try:
        return {e["name"]: e for e in read_json(idx_path, strict)["episodes"]}, None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {}, f"{idx_path} is unreadable ({exc}); it is a cache and will be rebuilt"


def load_index(root: Path) -> dict[str, dict[str, Any]]:
    """Committed episodes by name. The directories are the truth; index.json only caches their
    metadata, and entries missing from it (a kill between rename and index write) are read back."""
    cached, _ = read_index_cache(root)
    out: dict[str, dict[str, Any]] = {}
    for name in episode_names(root):
        entry = cached.get(name)
        out[name] = entry if entry is not None else {"name": name, **read_episode_attrs(root, name)}
    return out


def store_size(root: Path) -> int:
    """Bytes of the committed episodes' files."""
    size = 0
    for dirpath, _, files in os.walk(root / EPISODES_DIR):
        for f in files:
            with contextlib.suppress(OSError):
                size += os.path.getsize(os.path.join(dirpath, f))
    return size
