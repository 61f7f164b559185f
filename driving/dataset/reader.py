"""Reading a store: the episode list, frames by range, per-step arrays, and its fingerprint.

Why chunk files are decoded here rather than through zarr-python: random 16-frame windows
are ~3x faster (no async hand-offs), and a missing chunk file is an error instead of
zarr's silent fill value. Arrays in another layout fall back to zarr-python.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from driving.dataset.codec import chunk_checksum, chunk_key, decode_chunk_file, direct_decoder
from driving.dataset.schema import (
    EPISODES_DIR,
    STAGING_DIR,
    VOLATILE_META,
    DatasetError,
    load_index,
    open_root,
    read_json,
    store_size,
)


@dataclass
class Episode:
    """A committed episode: its id, directory name, length and metadata."""

    id: int
    name: str
    length: int
    meta: dict[str, Any] = field(repr=False)


class Dataset:
    """Read access to a store: episode list, frames by range, per-step arrays.

    Zarr arrays are opened lazily and cached per process, so a `Dataset` built in the parent
    can be used inside forked/spawned DataLoader workers.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.attrs = open_root(self.root)
        self.image_shape: tuple[int, int, int] = tuple(self.attrs["image_shape"])  # type: ignore[assignment]
        self.chunk_frames = int(self.attrs["chunk_frames"])
        self.episodes: list[Episode] = [
            Episode(int(name[3:]), name, int(e["length"]), e)
            for name, e in load_index(self.root).items()
        ]
        self.num_frames = sum(e.length for e in self.episodes)
        self._arrays: dict[tuple[int, str], Any] = {}
        self._steps: dict[tuple[int, str], np.ndarray] = {}
        self._checked_chunks: set[tuple[int, str, int]] = set()
        self._decoders: dict[tuple[int, str], Any] = {}
        self._chunk_cache: OrderedDict[tuple[int, str, int], np.ndarray] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.episodes)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # zarr handles are reopened in each worker
        state["_chunk_cache"] = OrderedDict()
        state["_decoders"] = {}
        return state

    @property
    def camera(self) -> dict[str, Any]:
        return dict(self.attrs.get("camera", {}))

    def _path(self, i: int) -> Path:
        return self.root / EPISODES_DIR / self.episodes[i].name

    def array(self, i: int, name: str) -> Any:
        """The zarr array `name` of episode index `i` (opened once per process)."""
        import zarr

        if self._pid != os.getpid():
            self._arrays.clear()
            self._pid = os.getpid()
        key = (i, name)
        arr = self._arrays.get(key)
        if arr is None:
            path = self._path(i) / name
            try:
                arr = zarr.open_array(path, mode="r", zarr_format=3)
            except Exception as exc:
                raise DatasetError(
                    f"cannot open {path} ({type(exc).__name__}: {exc}); run "
                    f"`driving dataset verify {self.root}`"
                ) from exc
            self._arrays[key] = arr
        return arr

    def steps(self, i: int, name: str) -> np.ndarray:
        """A whole per-step array of episode index `i` (cached in memory: it is small)."""
        key = (i, name)
        out = self._steps.get(key)
        if out is None:
            n = self.episodes[i].length
            arr = self.array(i, name)
            out = self._read(i, name, 0, arr.shape[0], cache=False) if arr.shape[0] == n else None
            if out is None or len(out) != n:
                got = arr.shape[0] if out is None else len(out)
                raise DatasetError(
                    f"{self._path(i) / name} has {got} steps, the episode {n}; run "
                    f"`driving dataset verify {self.root}`"
                )
            self._steps[key] = out
        return out

    def frames(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames [start, stop) of episode index `i`, uint8 (T,H,W,3)."""
        return self._read(i, "frames", start, stop)

    def depth(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Depth [start, stop) in metres (float32); only for stores recorded with --save-depth."""
        if not self.episodes[i].meta.get("has_depth"):
            raise DatasetError(f"episode {self.episodes[i].name} has no depth (record with --save-depth)")
        return self._read(i, "depth", start, stop).astype(np.float32)

    def _read(self, i: int, name: str, start: int, stop: int | None, cache: bool = True) -> np.ndarray:
        """Rows [start, stop) of an array, chunk by chunk (each checksum verified)."""
        n = self.episodes[i].length
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise IndexError(f"range [{start}, {stop}) outside episode {i} of length {n}")
        arr = self.array(i, name)
        cf = arr.chunks[0]
        chunks = range(start // cf, (max(stop, start + 1) - 1) // cf + 1)
        dec = self._decoder(i, name, arr)
        if dec is None:  # not our layout: zarr's general path
            for c in chunks:
                self._check_chunk(i, name, arr, c)
            try:
                return arr[start:stop]
            except Exception as exc:
                raise self._damage(i, name, exc) from exc
        out = np.empty((stop - start, *arr.shape[1:]), dtype=arr.dtype)
        for c in chunks:
            block = self._chunk(i, name, arr, dec, c, cache)
            a, b = max(start, c * cf), min(stop, (c + 1) * cf)
            out[a - start : b - start] = block[a - c * cf : b - c * cf]
        return out

    def _decoder(self, i: int, name: str, arr: Any) -> Any:
        key = (i, name)
        if key not in self._decoders:
            self._decoders[key] = direct_decoder(arr)
        return self._decoders[key]

    def _missing(self, i: int, path: Path) -> DatasetError:
        return DatasetError(
            f"chunk file {path} is missing (damaged dataset); run `driving dataset verify "
            f"{self.root}` and re-record or drop episode {self.episodes[i].name}"
        )

    def _chunk(self, i: int, name: str, arr: Any, dec: Any, c: int, cache: bool = True) -> np.ndarray:
        """Chunk `c` of an array, checksum verified, decoded (a few recent ones cached)."""
        key = (i, name, c)
        block = self._chunk_cache.get(key)
        if block is not None:
            self._chunk_cache.move_to_end(key)
            return block
        path = self._path(i) / name / chunk_key(arr, c)
        try:
            block = decode_chunk_file(path, dec, arr.chunks)
        except FileNotFoundError:
            raise self._missing(i, path) from None
        except Exception as exc:
            raise self._damage(i, name, exc) from exc
        if cache:
            self._chunk_cache[key] = block
            if len(self._chunk_cache) > 8:
                self._chunk_cache.popitem(last=False)
        return block

    def _check_chunk(self, i: int, name: str, arr: Any, c: int) -> None:
        """zarr silently returns fill values for a missing chunk file: refuse that instead."""
        key = (i, name, c)
        if key in self._checked_chunks:
            return
        path = self._path(i) / name / chunk_key(arr, c)
        if not path.exists():
            raise self._missing(i, path)
        self._checked_chunks.add(key)

    def _damage(self, i: int, name: str, exc: Exception) -> DatasetError:
        return DatasetError(
            f"cannot decode {self._path(i) / name} ({type(exc).__name__}: {exc}); the dataset is "
            f"damaged: run `driving dataset verify {self.root}`"
        )

    def summary(self) -> dict[str, Any]:
        """Counts and metadata for `driving dataset info`."""
        size = store_size(self.root)
        by_env: dict[str, int] = {}
        by_source: dict[str, int] = {}
        duration = 0.0
        for e in self.episodes:
            env, source = e.meta.get("env_id", "?"), e.meta.get("source", "?")
            by_env[env] = by_env.get(env, 0) + 1
            by_source[source] = by_source.get(source, 0) + 1
            duration += float(e.meta.get("duration_s", 0.0))
        staging = self.root / STAGING_DIR
        return {
            "root": str(self.root),
            "schema_version": self.attrs["schema_version"],
            "created_by": self.attrs.get("created_by"),
            "image_shape": list(self.image_shape),
            "camera": self.camera,
            "episodes": len(self.episodes),
            "frames": self.num_frames,
            "duration_s": duration,
            "bytes_on_disk": size,
            "bytes_per_frame": size / self.num_frames if self.num_frames else 0.0,
            "episodes_by_env": by_env,
            "episodes_by_source": by_source,
            "save_depth": bool(self.attrs.get("save_depth")),
            "chunk_frames": self.chunk_frames,
            "codec": self.attrs.get("codec"),
            "uncommitted_leftovers": len(os.listdir(staging)) if staging.is_dir() else 0,
        }


def fingerprint(dataset: Dataset, episodes: int | None = None) -> str:
    """SHA-256 (hex) of what the first `episodes` episodes hold, stable across re-recordings.

    Hashed per episode: its name, length, metadata without `VOLATILE_META` (recording
    time, host, package version: a byte-identical re-recording differs only there), each
    array's zarr metadata and the stored CRC32C of every chunk file (its last 4 bytes, so
    the data itself counts without being read or decoded). An episode re-recorded with
    other data, dropped or edited changes it; a same-seed re-recording of the same data
    does not. Training records it to refuse resuming on other data (docs/dataset.md).
    """
    h = hashlib.sha256()
    for i, e in enumerate(list(dataset.episodes)[:episodes]):
        meta = {k: v for k, v in e.meta.items() if k not in VOLATILE_META}
        entry = {"name": e.name, "length": int(e.length), "meta": meta}
        h.update(json.dumps(entry, sort_keys=True, default=repr).encode())
        ep = dataset._path(i)
        try:
            for a in sorted(p.name for p in ep.iterdir() if p.is_dir()):
                doc = read_json(ep / a / "zarr.json")
                h.update(json.dumps([a, doc], sort_keys=True).encode())
                for c in sorted(n for n in os.listdir(ep / a) if n.startswith("c")):
                    h.update(c.encode() + chunk_checksum(ep / a / c))
        except (OSError, ValueError) as exc:
            raise DatasetError(
                f"cannot fingerprint episode {e.name} of {dataset.root} ({exc}); run "
                f"`driving dataset verify {dataset.root}`"
            ) from exc
    return h.hexdigest()
