"""Crash-safe episodic zarr v3 store for recorded drives (schema: docs/dataset.md).

Why this layout: every episode is its own zarr group, written completely in a staging
directory and then made visible with one atomic directory rename. A recorder killed at any
moment therefore leaves only complete episodes in `episodes/` (plus a staging leftover that
the next writer deletes), several processes can commit episodes side by side under a file
lock, and appending never rewrites data that is already committed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from driving.errors import UserError

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
    "action": "float32",  # steering actually executed after this frame (label + DART noise, or a policy's)
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

DEFAULT_CHUNK_FRAMES = 16
DEFAULT_CODEC = {"name": "blosc", "cname": "lz4", "clevel": 5}


class DatasetError(UserError):
    """A store is missing, damaged or incompatible; the message names the file and the fix."""


class DiskFullError(DatasetError):
    """The disk filled up while writing; committed episodes are intact."""


def _is_enospc(exc: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON next to `path` and `os.replace` it in, so readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _fsync_tree(path: Path) -> None:
    """Flush every file of a finished episode so that a power cut cannot leave it half on disk."""
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and tuples so that metadata is plain JSON."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def _codecs(spec: Mapping[str, Any]) -> list[Any]:
    """Compressor then a CRC32C checksum, so that any flipped or truncated byte is detected."""
    from zarr.codecs import Crc32cCodec

    return [_codec(spec), Crc32cCodec()]


def _codec(spec: Mapping[str, Any]):
    from zarr.codecs import BloscCodec, ZstdCodec

    name = spec.get("name", "blosc")
    if name == "blosc":
        return BloscCodec(
            cname=spec.get("cname", "lz4"), clevel=int(spec.get("clevel", 5)), shuffle="noshuffle"
        )
    if name == "zstd":
        return ZstdCodec(level=int(spec.get("level", 3)))
    raise ValueError(f"unknown codec {name!r}: use 'blosc' or 'zstd'")


def _read_root_meta(root: Path) -> dict[str, Any] | None:
    """Return our root attributes, or None when `root` holds no zarr group at all."""
    meta_path = root / "zarr.json"
    if not meta_path.exists():
        return None
    try:
        doc = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{meta_path} is unreadable ({exc}); it is not a valid dataset") from exc
    attrs = doc.get("attributes", {}).get(FORMAT_NAME)
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


def _episode_names(root: Path) -> list[str]:
    ep_dir = root / EPISODES_DIR
    if not ep_dir.is_dir():
        return []
    return sorted(n for n in os.listdir(ep_dir) if n.startswith(EPISODE_PREFIX) and n[3:].isdigit())


def _read_episode_attrs(root: Path, name: str) -> dict[str, Any]:
    path = root / EPISODES_DIR / name / "zarr.json"
    try:
        doc = json.loads(path.read_text())
        return dict(doc["attributes"]["episode"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(
            f"episode metadata {path} is missing or corrupt ({exc}); run "
            f"`driving dataset verify {root}`"
        ) from exc


def _load_index(root: Path) -> dict[str, dict[str, Any]]:
    """Committed episodes by name. The directories are the truth; index.json only caches their
    metadata, and entries missing from it (a kill between rename and index write) are read back."""
    cached: dict[str, dict[str, Any]] = {}
    idx_path = root / INDEX_FILE
    if idx_path.exists():
        with contextlib.suppress(OSError, json.JSONDecodeError, KeyError, TypeError):
            cached = {e["name"]: e for e in json.loads(idx_path.read_text())["episodes"]}
    out: dict[str, dict[str, Any]] = {}
    for name in _episode_names(root):
        entry = cached.get(name)
        if entry is None:
            entry = {"name": name, **_read_episode_attrs(root, name)}
        out[name] = entry
    return out


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock between processes committing into the same store."""
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class DatasetWriter:
    """Creates a store (or opens one for appending) and commits complete episodes.

    `camera` must hold at least `height` and `width`; appending with another resolution,
    another schema version or `save_depth` setting is refused. Several writers (processes)
    may append to one store at the same time.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        env_id: str,
        env_config: Mapping[str, Any] | None = None,
        camera: Mapping[str, Any] | None = None,
        *,
        save_depth: bool = False,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        codec: Mapping[str, Any] | None = None,
        durable: bool = True,
    ) -> None:
        from driving import __version__

        self.root = Path(root)
        self.env_id = env_id
        self.env_config = _jsonable(dict(env_config or {}))
        camera = _jsonable(dict(camera or {}))
        if "height" not in camera or "width" not in camera:
            raise ValueError("camera must give 'height' and 'width' (pixels) of the frames")
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.durable = durable
        self._executor: Any = None
        self._pending: Any = None
        wanted = {
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            "camera": camera,
            "image_shape": [int(camera["height"]), int(camera["width"]), 3],
            "save_depth": bool(save_depth),
            "chunk_frames": int(chunk_frames),
            "codec": dict(codec or DEFAULT_CODEC),
            "env_id": env_id,
            "env_config": self.env_config,
            "created_by": f"liquid-drive {__version__}",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _codec(wanted["codec"])  # validate early
        self.attrs = self._create_or_open(wanted)
        self.image_shape = tuple(self.attrs["image_shape"])
        self.save_depth = bool(self.attrs["save_depth"])
        self.chunk_frames = int(self.attrs["chunk_frames"])
        self.version = __version__

    # -- store creation -------------------------------------------------------------------------
    def _create_or_open(self, wanted: dict[str, Any]) -> dict[str, Any]:
        root = self.root
        if root.exists() and not root.is_dir():
            raise DatasetError(f"--out {root} is a file, not a directory; choose a directory")
        attrs = _read_root_meta(root) if root.exists() else None
        if attrs is None:
            if root.exists() and any(n not in (STAGING_DIR, LOCK_FILE) for n in os.listdir(root)):
                raise DatasetError(
                    f"--out {root} is a non-empty directory that is not a liquid-drive dataset; "
                    "choose a new or empty directory"
                )
            root.mkdir(parents=True, exist_ok=True)
            with _locked(root):
                attrs = _read_root_meta(root)  # another process may have won the race
                if attrs is None:
                    (root / EPISODES_DIR).mkdir(exist_ok=True)
                    _write_json_atomic(
                        root / EPISODES_DIR / "zarr.json",
                        {"zarr_format": 3, "node_type": "group", "attributes": {}},
                    )
                    _write_json_atomic(
                        root / "zarr.json",
                        {
                            "zarr_format": 3,
                            "node_type": "group",
                            "attributes": {FORMAT_NAME: wanted},
                        },
                    )
                    _fsync_dir(root)
                    return wanted
        for key, what in (
            ("image_shape", "frame resolution (height, width, 3)"),
            ("save_depth", "--save-depth setting"),
        ):
            if attrs.get(key) != wanted[key]:
                raise DatasetError(
                    f"{root} holds episodes with {what} {attrs.get(key)}, but this recording has "
                    f"{wanted[key]}; record into another --out directory or match the existing one"
                )
        return attrs

    # -- episodes ---------------------------------------------------------------------------------
    def committed(self) -> list[dict[str, Any]]:
        """Metadata of all committed episodes (sorted by id)."""
        return list(_load_index(self.root).values())

    def recorded_keys(self) -> set[tuple[str, int, str]]:
        """(env_id, seed, source) of committed episodes: what a resumed `collect` can skip."""
        return {
            (e.get("env_id", ""), int(e.get("seed", -1)), e.get("source", ""))
            for e in self.committed()
            if e.get("seed") is not None
        }

    def begin_episode(self, meta: Mapping[str, Any] | None = None) -> EpisodeBuilder:
        """Start streaming one episode into staging; nothing is visible until `commit()`."""
        return EpisodeBuilder(self, dict(meta or {}))

    def _submit(self, fn: Any) -> Any:
        """Run a commit on the writer's committer thread; at most one waits in line."""
        from concurrent.futures import ThreadPoolExecutor

        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="dataset-commit")
        if self._pending is not None:
            self._pending.result()  # back-pressure, and surface an earlier failure here
        self._pending = self._executor.submit(fn)
        return self._pending

    def wait(self) -> None:
        """Block until background commits are done (raises the first failure)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        """Finish background commits and stop the committer thread."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def append_episode(
        self,
        frames: np.ndarray,
        steps: Mapping[str, np.ndarray],
        meta: Mapping[str, Any] | None = None,
        depth: np.ndarray | None = None,
    ) -> int:
        """Write a whole in-memory episode and commit it; returns its episode id."""
        builder = self.begin_episode(meta)
        try:
            builder.add_block(np.asarray(frames), steps, depth)
            return builder.commit()
        except BaseException:
            builder.abort()
            raise

    def cleanup_staging(self, max_age_s: float = 0.0) -> int:
        """Delete leftovers of killed writers older than `max_age_s`; returns how many."""
        staging = self.root / STAGING_DIR
        if not staging.is_dir():
            return 0
        removed = 0
        now = time.time()
        for name in os.listdir(staging):
            path = staging / name
            try:
                pid = int(name.split("-")[1])
            except (IndexError, ValueError):
                pid = -1
            if pid > 0 and pid != os.getpid() and _pid_alive(pid):
                continue  # a live writer owns it
            if pid == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime >= max_age_s:
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
        return removed

    def _commit(self, staged: Path, meta: dict[str, Any]) -> int:
        if self.durable:
            _fsync_tree(staged)
        with _locked(self.root):
            index = _load_index(self.root)
            names = set(index) | set(_episode_names(self.root))
            next_id = max((int(n[3:]) for n in names), default=-1) + 1
            name = f"{EPISODE_PREFIX}{next_id:06d}"
            # the group's zarr.json carries the id; rewrite it before the rename (atomic)
            doc = json.loads((staged / "zarr.json").read_text())
            doc["attributes"]["episode"]["id"] = next_id
            _write_json_atomic(staged / "zarr.json", doc)
            os.rename(staged, self.root / EPISODES_DIR / name)  # the commit point
            if self.durable:
                _fsync_dir(self.root / EPISODES_DIR)
            index[name] = {"name": name, **doc["attributes"]["episode"]}
            try:
                _write_json_atomic(
                    self.root / INDEX_FILE,
                    {"schema_version": SCHEMA_VERSION, "episodes": list(index.values())},
                )
            except OSError:
                pass  # the index is a cache; readers rebuild missing entries from the episodes
        return next_id


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_META_TEMPLATES: dict[tuple[str, int, str], dict[str, Any]] = {}


def _array_metadata(
    shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, codec: Mapping[str, Any]
) -> dict[str, Any]:
    """zarr v3 array metadata (the `zarr.json` document), as zarr itself writes it.

    The template comes from zarr (an array made in memory, once per process and kind), so
    the codec chain and fields are exactly zarr's; only shape and chunk shape are set here.
    """
    key = (dtype, len(shape), json.dumps(dict(codec), sort_keys=True))
    tpl = _META_TEMPLATES.get(key)
    if tpl is None:
        import zarr
        from zarr.storage import MemoryStore

        arr = zarr.create_array(
            store=MemoryStore(),
            shape=(1,) * len(shape),
            chunks=(1,) * len(shape),
            dtype=dtype,
            compressors=_codecs(codec),
            chunk_key_encoding=CHUNK_KEY_ENCODING,
        )
        tpl = _META_TEMPLATES[key] = json.loads(json.dumps(arr.metadata.to_dict()))
    meta = json.loads(json.dumps(tpl))
    meta["shape"] = [int(x) for x in shape]
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [int(x) for x in chunks]
    return meta


def _direct_decoder(arr: Any) -> tuple[Any, np.dtype] | None:
    """(codec, dtype) to decode chunk files of `arr` directly when it has our layout (bytes →
    blosc/zstd → crc32c, chunks along time over whole frames), else None (use zarr).

    Reading the files ourselves skips zarr's async hand-offs: ~3x faster 16-frame windows."""
    meta = arr.metadata.to_dict()
    codecs = meta.get("codecs", [])
    names = [c.get("name") for c in codecs]
    whole = list(arr.chunks[1:]) == list(arr.shape[1:])
    if not (len(codecs) == 3 and names[0] == "bytes" and names[2] == "crc32c" and whole):
        return None
    endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    if names[1] not in ("blosc", "zstd") or (endian != "little" and arr.dtype.itemsize > 1):
        return None
    from numcodecs import Blosc, Zstd

    return (Blosc() if names[1] == "blosc" else Zstd()), np.dtype(arr.dtype).newbyteorder("<")


def _decode_chunk_file(
    path: Path, dec: tuple[Any, np.dtype], chunks: tuple[int, ...]
) -> np.ndarray:
    """Read one chunk file, check its CRC32C, decode it (FileNotFoundError if missing)."""
    import google_crc32c

    data = path.read_bytes()
    if len(data) < 4 or google_crc32c.value(data[:-4]) != int.from_bytes(data[-4:], "little"):
        raise ValueError("CRC32C checksum mismatch (the file was changed or truncated)")
    codec, dtype = dec
    raw = codec.decode(data[:-4])
    return np.frombuffer(raw, dtype=dtype).reshape(chunks)


class _ChunkEncoder:
    """Encodes one chunk as zarr's codec chain does: raw little-endian bytes, the compressor,
    then the CRC32C checksum appended (4 bytes, little-endian)."""

    def __init__(self, codec: Mapping[str, Any], typesize: int) -> None:
        from numcodecs import Blosc, Zstd

        name = codec.get("name", "blosc")
        if name == "blosc":
            self._c = Blosc(
                cname=codec.get("cname", "lz4"),
                clevel=int(codec.get("clevel", 5)),
                shuffle=Blosc.NOSHUFFLE,
                blocksize=0,
                typesize=typesize,
            )
        elif name == "zstd":
            self._c = Zstd(level=int(codec.get("level", 3)), checksum=False)
        else:
            raise ValueError(f"unknown codec {name!r}: use 'blosc' or 'zstd'")

    def encode(self, block: np.ndarray) -> bytes:
        import google_crc32c

        raw = np.ascontiguousarray(block)
        if raw.dtype.byteorder == ">":
            raw = raw.astype(raw.dtype.newbyteorder("<"))
        data = bytes(self._c.encode(raw))
        crc = np.array([google_crc32c.value(data)], dtype="<u4").tobytes()
        return data + crc


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


STEP_CODEC = {"name": "zstd", "level": 3}
#: chunk files `c.<t>.0.0.0` side by side (zarr v3 "default" encoding, "." separator): no
#: directory per chunk index, so fewer files to create and fsync per episode.
CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}
DEPTH_CODEC = {"name": "zstd", "level": 3}


class EpisodeBuilder:
    """Streams frames and per-step values of one episode into a staging zarr group.

    Frames are encoded one time-chunk at a time as they arrive (bounded memory); per-step
    values are buffered and written at `commit()`. Everything is written with plain file
    writes in the calling thread, byte-identical to what zarr writes (tests compare):
    zarr's own async write path costs ~15x the compression and, on a loaded machine, a
    thread hand-off per file, which would make recording slower than the simulator.
    Readers use zarr.
    """

    def __init__(self, writer: DatasetWriter, meta: dict[str, Any]) -> None:
        self.writer = writer
        self.meta = _jsonable(meta)
        self._n = 0
        self._nbuf = 0
        self._done = False
        self._steps: dict[str, list[Any]] = {}
        h, w, c = writer.image_shape
        cf = writer.chunk_frames
        self._buf = np.empty((cf, h, w, c), np.uint8)
        self._dbuf = np.empty((cf, h, w), np.float16) if writer.save_depth else None
        self._enc = _ChunkEncoder(writer.attrs["codec"], 1)
        self._denc = _ChunkEncoder(DEPTH_CODEC, 2) if writer.save_depth else None
        staging = writer.root / STAGING_DIR
        self.path = staging / f"ep-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            self.path.mkdir(parents=True)
            (self.path / "frames").mkdir()
        except BaseException as exc:
            self.abort()
            raise _wrap_write_error(exc, writer.root) from exc

    def __len__(self) -> int:
        return self._n + self._nbuf

    def add(
        self,
        frame: np.ndarray,
        steps: Mapping[str, Any],
        depth: np.ndarray | None = None,
    ) -> None:
        """Append one step: the frame the agent saw and the per-step values for it."""
        if self._done:
            raise RuntimeError("episode already committed or aborted")
        frame = np.asarray(frame)
        if frame.shape != self.writer.image_shape or frame.dtype != np.uint8:
            raise DatasetError(
                f"frame has shape {frame.shape} {frame.dtype}, the dataset stores "
                f"{self.writer.image_shape} uint8; record into another --out for another camera"
            )
        if self._dbuf is not None and depth is None:
            raise ValueError("this dataset stores depth (--save-depth): pass depth per step")
        n = len(self)
        for k in steps:
            if k not in self._steps:
                if n:
                    raise ValueError(
                        f"step value {k!r} first appears at step {n}; give it every step"
                    )
                self._steps[k] = []
        if n and len(steps) != len(self._steps):
            lacking = sorted(set(self._steps) - set(steps))
            raise ValueError(f"step {n} lacks values {lacking}; give every value every step")
        self._buf[self._nbuf] = frame
        if self._dbuf is not None:
            self._dbuf[self._nbuf] = np.minimum(np.asarray(depth, np.float32), 65000.0)
        for k, v in steps.items():
            self._steps[k].append(v)
        self._nbuf += 1
        if self._nbuf == len(self._buf):
            self._flush()

    def add_block(
        self,
        frames: np.ndarray,
        steps: Mapping[str, np.ndarray],
        depth: np.ndarray | None = None,
    ) -> None:
        """Append many steps at once (frames (T,H,W,3), steps name -> (T,))."""
        frames = np.asarray(frames)
        n = len(frames)
        for k, v in steps.items():
            if np.asarray(v).shape[:1] != (n,):
                raise ValueError(f"step array {k!r} has shape {np.shape(v)}, expected ({n},)")
        for t in range(n):
            self.add(
                frames[t],
                {k: np.asarray(v)[t] for k, v in steps.items()},
                None if depth is None else depth[t],
            )

    def _flush(self) -> None:
        """Encode and write the buffered time-chunk (zero fill past the end, as zarr does)."""
        if self._nbuf == 0:
            return
        cf = len(self._buf)
        c = self._n // cf
        try:
            if self._nbuf < cf:
                self._buf[self._nbuf :] = 0
            _write_file(self.path / "frames" / f"c.{c}.0.0.0", self._enc.encode(self._buf))
            if self._dbuf is not None:
                if self._nbuf < cf:
                    self._dbuf[self._nbuf :] = 0
                _write_file(self.path / "depth" / f"c.{c}.0.0", self._denc.encode(self._dbuf))
        except BaseException as exc:
            self.abort()
            raise _wrap_write_error(exc, self.writer.root) from exc
        self._n += self._nbuf
        self._nbuf = 0

    def commit(self) -> int:
        """Write the per-step arrays and make the episode visible atomically; returns its id."""
        self._finish()
        try:
            return self.writer._commit(self.path, self.meta)
        except BaseException as exc:
            self.abort()
            raise _wrap_write_error(exc, self.writer.root) from exc

    def commit_async(self) -> Any:
        """Like `commit`, but flush to disk and rename on the writer's committer thread.

        Returns a `concurrent.futures.Future` of the episode id; the fsyncs (waiting on the
        disk, not the CPU) then overlap with recording the next episode. `writer.wait()`
        blocks until it is visible. A process killed before then leaves it uncommitted.
        """
        self._finish()

        def run() -> int:
            try:
                return self.writer._commit(self.path, self.meta)
            except BaseException as exc:
                self.abort()
                raise _wrap_write_error(exc, self.writer.root) from exc

        return self.writer._submit(run)

    def _finish(self) -> None:
        """Write the last chunk, the per-step arrays and all metadata (still in staging)."""
        from driving import __version__

        if self._done:
            raise RuntimeError("episode already committed or aborted")
        n = len(self)
        if n == 0:
            self.abort()
            raise ValueError("cannot commit an empty episode (no steps added)")
        missing = [k for k in REQUIRED_STEPS if k not in self._steps]
        if missing:
            self.abort()
            raise ValueError(f"episode lacks required per-step arrays {missing}")
        try:
            arrays: dict[str, np.ndarray] = {}
            for k, vals in self._steps.items():
                dtype = STEP_DTYPES.get(k)
                arr = np.asarray(vals) if dtype is None else np.asarray(vals, dtype=dtype)
                if arr.shape != (n,) or arr.dtype.kind not in "biuf":
                    raise ValueError(
                        f"step array {k!r} must hold one number or bool per step, got "
                        f"{arr.dtype} of shape {arr.shape}"
                    )
                arrays[k] = arr
        except ValueError:
            self.abort()
            raise
        self._flush()
        self._done = True
        try:
            h, w, c = self.writer.image_shape
            cf = self.writer.chunk_frames
            docs = {
                "frames": _array_metadata(
                    (n, h, w, c), (cf, h, w, c), "uint8", self.writer.attrs["codec"]
                )
            }
            if self._dbuf is not None:
                docs["depth"] = _array_metadata((n, h, w), (cf, h, w), "float16", DEPTH_CODEC)
            enc = _ChunkEncoder(STEP_CODEC, 1)  # zstd: no typesize
            for k, arr in arrays.items():
                _write_file(self.path / k / "c.0", enc.encode(arr))
                docs[k] = _array_metadata((n,), (n,), arr.dtype.name, STEP_CODEC)
            for k, doc in docs.items():
                _write_file(self.path / k / "zarr.json", json.dumps(doc, indent=2).encode())
            steer = arrays["steering"].astype(np.float64)
            meta = {
                "env_id": self.writer.env_id,
                **self.meta,
                "length": n,
                "package_version": __version__,
                "schema_version": SCHEMA_VERSION,
                "steps": sorted(arrays),
                "has_depth": self._dbuf is not None,
                "duration_s": float(arrays["dt_s"].astype(np.float64).sum()),
                "steering_mean": float(steer.mean()),
                "steering_std": float(steer.std()),
                "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            self.meta = _jsonable(meta)
            group = {"zarr_format": 3, "node_type": "group", "attributes": {"episode": self.meta}}
            _write_file(self.path / "zarr.json", json.dumps(group, indent=2).encode())
        except BaseException as exc:
            self.abort()
            raise _wrap_write_error(exc, self.writer.root) from exc

    def abort(self) -> None:
        """Drop the staged episode (nothing committed is touched)."""
        self._done = True
        shutil.rmtree(self.path, ignore_errors=True)


def _wrap_write_error(exc: BaseException, root: Path) -> BaseException:
    if _is_enospc(exc):
        n = len(_episode_names(root))
        return DiskFullError(
            f"disk full while writing into {root}: the episode in progress was dropped, the "
            f"{n} committed episodes are intact; free space and rerun the same command to resume"
        )
    return exc


# ------------------------------------------------------------------------------------------------
# reading


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
        if not self.root.is_dir():
            raise DatasetError(
                f"dataset {self.root} does not exist; record one with `driving collect`"
            )
        attrs = _read_root_meta(self.root)
        if attrs is None:
            raise DatasetError(
                f"{self.root} is not a liquid-drive dataset (no zarr.json); record one with "
                "`driving collect --out DIR`"
            )
        self.attrs = attrs
        self.image_shape: tuple[int, int, int] = tuple(attrs["image_shape"])  # type: ignore[assignment]
        self.chunk_frames = int(attrs["chunk_frames"])
        index = _load_index(self.root)
        self.episodes: list[Episode] = []
        for name, e in index.items():
            self.episodes.append(Episode(int(name[3:]), name, int(e["length"]), e))
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

    def array(self, i: int, name: str):
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
            arr = self.array(i, name)
            if arr.shape[0] != self.episodes[i].length:
                raise DatasetError(
                    f"{self._path(i) / name} has {arr.shape[0]} steps, the episode "
                    f"{self.episodes[i].length}; run `driving dataset verify {self.root}`"
                )
            out = self._read_images(i, name, 0, arr.shape[0], cache=False)
            if len(out) != self.episodes[i].length:
                raise DatasetError(
                    f"{self._path(i) / name} has {len(out)} steps, the episode {self.episodes[i].length}; "
                    f"run `driving dataset verify {self.root}`"
                )
            self._steps[key] = out
        return out

    def frames(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames [start, stop) of episode index `i`, uint8 (T,H,W,3)."""
        return self._read_images(i, "frames", start, stop)

    def depth(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Depth [start, stop) in metres (float32); only for stores recorded with --save-depth."""
        if not self.episodes[i].meta.get("has_depth"):
            raise DatasetError(
                f"episode {self.episodes[i].name} has no depth (record with --save-depth)"
            )
        return self._read_images(i, "depth", start, stop).astype(np.float32)

    def _read_images(
        self, i: int, name: str, start: int, stop: int | None, cache: bool = True
    ) -> np.ndarray:
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
            self._decoders[key] = _direct_decoder(arr)
        return self._decoders[key]

    def _chunk(
        self, i: int, name: str, arr: Any, dec: Any, c: int, cache: bool = True
    ) -> np.ndarray:
        """Chunk `c` of an array, checksum verified, decoded (a few recent ones cached)."""
        key = (i, name, c)
        block = self._chunk_cache.get(key)
        if block is not None:
            self._chunk_cache.move_to_end(key)
            return block
        rel = arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))
        path = self._path(i) / name / rel
        try:
            block = _decode_chunk_file(path, dec, arr.chunks)
        except FileNotFoundError:
            raise DatasetError(
                f"chunk file {path} is missing (damaged dataset); run `driving dataset verify "
                f"{self.root}` and re-record or drop episode {self.episodes[i].name}"
            ) from None
        except Exception as exc:
            raise self._damage(i, name, exc) from exc
        if not cache:
            return block
        self._chunk_cache[key] = block
        if len(self._chunk_cache) > 8:
            self._chunk_cache.popitem(last=False)
        return block

    def _check_chunk(self, i: int, name: str, arr: Any, c: int) -> None:
        """zarr silently returns fill values for a missing chunk file: refuse that instead."""
        key = (i, name, c)
        if key in self._checked_chunks:
            return
        coords = (c,) + (0,) * (arr.ndim - 1)
        rel = arr.metadata.encode_chunk_key(coords)
        path = self._path(i) / name / rel
        if not path.exists():
            raise DatasetError(
                f"chunk file {path} is missing (damaged dataset); run `driving dataset verify "
                f"{self.root}` and re-record or drop episode {self.episodes[i].name}"
            )
        self._checked_chunks.add(key)

    def _damage(self, i: int, name: str, exc: Exception) -> DatasetError:
        return DatasetError(
            f"cannot decode {self._path(i) / name} ({type(exc).__name__}: {exc}); the dataset is "
            f"damaged: run `driving dataset verify {self.root}`"
        )

    def summary(self) -> dict[str, Any]:
        """Counts and metadata for `driving dataset info`."""
        size = 0
        for dirpath, _, files in os.walk(self.root / EPISODES_DIR):
            for f in files:
                with contextlib.suppress(OSError):
                    size += os.path.getsize(os.path.join(dirpath, f))
        by_env: dict[str, int] = {}
        by_source: dict[str, int] = {}
        duration = 0.0
        for e in self.episodes:
            by_env[e.meta.get("env_id", "?")] = by_env.get(e.meta.get("env_id", "?"), 0) + 1
            by_source[e.meta.get("source", "?")] = by_source.get(e.meta.get("source", "?"), 0) + 1
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


# ------------------------------------------------------------------------------------------------
# verification


@dataclass
class VerifyReport:
    """What `verify` checked and what it found damaged (empty `problems` = healthy)."""

    root: str
    episodes: int = 0
    frames: int = 0
    chunks: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    damaged_episodes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(root: str | os.PathLike, progress: bool = False) -> VerifyReport:
    """Decode every chunk of every committed episode and check boundaries and metadata."""
    import zarr

    root = Path(root)
    rep = VerifyReport(str(root))
    if not root.is_dir():
        raise DatasetError(f"dataset {root} does not exist")
    attrs = _read_root_meta(root)
    if attrs is None:
        raise DatasetError(f"{root} is not a liquid-drive dataset (no zarr.json)")
    image_shape = tuple(attrs["image_shape"])
    idx_path = root / INDEX_FILE
    cached: dict[str, Any] = {}
    if idx_path.exists():
        try:
            cached = {e["name"]: e for e in json.loads(idx_path.read_text())["episodes"]}
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            rep.warnings.append(
                f"{idx_path} is unreadable ({exc}); it is a cache and will be rebuilt"
            )
    names = _episode_names(root)
    for name in cached:
        if name not in names:
            rep.problems.append(f"{name}: listed in {INDEX_FILE} but its directory is missing")
            rep.damaged_episodes.append(name)
    staging = root / STAGING_DIR
    if staging.is_dir() and os.listdir(staging):
        rep.warnings.append(
            f"{len(os.listdir(staging))} uncommitted episode(s) in {staging} (a killed recorder); "
            "they are not part of the dataset and are removed by the next `collect`"
        )
    from tqdm import tqdm

    for name in tqdm(names, desc="verify", unit="ep", disable=not progress):
        before = len(rep.problems)
        ep_path = root / EPISODES_DIR / name
        try:
            meta = _read_episode_attrs(root, name)
        except DatasetError as exc:
            rep.problems.append(f"{name}: {exc}")
            rep.damaged_episodes.append(name)
            continue
        n = int(meta.get("length", -1))
        if name in cached and int(cached[name].get("length", -1)) != n:
            rep.problems.append(
                f"{name}: length {n} disagrees with {INDEX_FILE} ({cached[name].get('length')})"
            )
        arrays = ["frames", *meta.get("steps", REQUIRED_STEPS)]
        if meta.get("has_depth"):
            arrays.append("depth")
        for k in REQUIRED_STEPS:
            if k not in arrays:
                rep.problems.append(f"{name}: required per-step array {k!r} missing from metadata")
        for a in arrays:
            apath = ep_path / a
            try:
                arr = zarr.open_array(apath, mode="r", zarr_format=3)
            except Exception as exc:
                rep.problems.append(f"{name}/{a}: cannot open ({type(exc).__name__}: {exc})")
                continue
            if arr.shape[0] != n:
                rep.problems.append(f"{name}/{a}: {arr.shape[0]} steps, episode length is {n}")
            if a == "frames" and tuple(arr.shape[1:]) != image_shape:
                rep.problems.append(
                    f"{name}/frames: shape {arr.shape[1:]} != dataset {image_shape}"
                )
            cf = arr.chunks[0]
            dec = _direct_decoder(arr)
            last_t = -np.inf
            for c in range(-(-arr.shape[0] // cf)):
                rep.chunks += 1
                coords = (c,) + (0,) * (arr.ndim - 1)
                rel = arr.metadata.encode_chunk_key(coords)
                if not (apath / rel).exists():
                    rep.problems.append(f"{name}/{a}: chunk file {rel} is missing")
                    continue
                try:
                    if dec is not None:
                        block = _decode_chunk_file(apath / rel, dec, arr.chunks)
                        block = block[: max(0, min(cf, arr.shape[0] - c * cf))]
                    else:
                        block = arr[c * cf : (c + 1) * cf]
                except Exception as exc:
                    rep.problems.append(
                        f"{name}/{a}: chunk {rel} does not decode ({type(exc).__name__}: {exc})"
                    )
                    continue
                if a in ("steering", "action", "speed", "dt_s", "time_s") and not np.all(
                    np.isfinite(block)
                ):
                    rep.problems.append(f"{name}/{a}: non-finite values in chunk {rel}")
                if a == "dt_s" and np.any(block < 0):
                    rep.problems.append(f"{name}/dt_s: negative time steps")
                if a == "time_s" and len(block):
                    if np.any(np.diff(block) < 0) or block[0] < last_t:
                        rep.problems.append(f"{name}/time_s: time goes backwards")
                    last_t = float(block[-1])
        if len(rep.problems) > before:
            rep.damaged_episodes.append(name)
        else:
            rep.episodes += 1
            rep.frames += n
    return rep
