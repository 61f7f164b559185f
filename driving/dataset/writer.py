"""Creating a store and committing complete episodes into it, crash-safely.

Why this shape: every episode is written completely in a staging folder and made visible
with one atomic directory rename, so a recorder killed at any moment leaves only complete
episodes in `episodes/`; several processes commit side by side under a file lock; appending
never rewrites committed data. The store itself is created the same way round: its root
`zarr.json` (the marker that this folder is a dataset) is written last, and a folder that
holds nothing but the earlier creation steps is recognised and completed by the next
writer, so a kill during creation never blocks a rerun (docs/dataset.md, "Crash safety").
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from driving.dataset.codec import (
    DEPTH_CODEC,
    STEP_CODEC,
    ChunkEncoder,
    array_metadata,
    compressor,
    write_file,
)
from driving.dataset.schema import (
    DEFAULT_CHUNK_FRAMES,
    DEFAULT_CODEC,
    EMPTY_GROUP,
    EPISODE_PREFIX,
    EPISODES_DIR,
    FORMAT_NAME,
    INDEX_FILE,
    LOCK_FILE,
    REQUIRED_STEPS,
    SCHEMA_VERSION,
    STAGING_DIR,
    STEP_DTYPES,
    DatasetError,
    DiskFullError,
    episode_names,
    is_enospc,
    load_index,
    read_root_meta,
    step_problems,
    validate_meta,
)
from policies.atomicio import atomic_write_json, fsync_dir, jsonable, remove_stale_temps


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fsync_tree(path: Path) -> None:
    """Flush every file of a finished episode so that a power cut cannot leave it half on disk."""
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def _staged_json(path: Path, doc: Any) -> None:
    """A metadata document inside staging (atomic and durable through the commit's rename)."""
    text = json.dumps(jsonable(doc), indent=2, allow_nan=False)
    write_file(path, text.encode())


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock between processes creating or committing into the same store."""
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _is_our_temp(name: str) -> bool:
    """A temp file a killed `atomic_write_json` of our metadata left (`.zarr.json.<hex>.tmp`)."""
    return name.startswith((".zarr.json.", f".{INDEX_FILE}.")) and name.endswith(".tmp")


def _half_created_problem(root: Path) -> str | None:
    """Why `root` (a folder without a root zarr.json) cannot be completed into a new store,
    or None when it is empty or holds only what an interrupted creation leaves behind:
    `.lock`, `.staging/`, `episodes/` with at most its group `zarr.json`, our temp files."""
    eps = root / EPISODES_DIR
    inside = [n for n in os.listdir(eps) if n != "zarr.json" and not _is_our_temp(n)] if eps.is_dir() else []
    if any(n.startswith(EPISODE_PREFIX) for n in inside):
        return (
            f"{root} holds recorded episodes ({EPISODES_DIR}/{sorted(inside)[0]} ...) but no root "
            "zarr.json: the store's metadata was deleted or damaged; restore DIR/zarr.json from a "
            "backup (nothing was changed) or record into another --out directory"
        )
    names = [n for n in os.listdir(root) if not _is_our_temp(n)]
    foreign = [n for n in names if n not in (LOCK_FILE, STAGING_DIR, EPISODES_DIR)]
    if foreign or (eps.exists() and not eps.is_dir()):
        shown = ", ".join(sorted(foreign or [EPISODES_DIR])[:3]) + (" ..." if len(foreign) > 3 else "")
        return (
            f"--out {root} is a non-empty directory that is not a liquid-drive dataset (it holds "
            f"{shown}); choose a new or empty directory"
        )
    if inside:
        return (
            f"--out {root}/{EPISODES_DIR} holds files that are not ours ({sorted(inside)[0]} ...); "
            "choose a new or empty directory"
        )
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wrap_write_error(exc: BaseException, root: Path) -> BaseException:
    if is_enospc(exc):
        n = len(episode_names(root))
        return DiskFullError(
            f"disk full while writing into {root}: the episode in progress was dropped, the "
            f"{n} committed episodes are intact; free space and rerun the same command to resume"
        )
    return exc


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
        self.env_config = validate_meta(env_config, "env config")
        camera = validate_meta(camera, "camera")
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
            "created_at": _now(),
        }
        compressor(wanted["codec"])  # validate early
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
        attrs = read_root_meta(root) if root.exists() else None
        if attrs is None:
            attrs = self._create(wanted)
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

    def _create(self, wanted: dict[str, Any]) -> dict[str, Any]:
        """Create the store, or complete one whose creation was interrupted.

        The steps (lock file, `episodes/` group, root `zarr.json`) are idempotent and the root
        `zarr.json` goes last, so any prefix of them is a state `_half_created_problem`
        accepts and this method finishes. Nothing is written into a folder that holds
        anything else.
        """
        root = self.root
        if root.is_dir():
            problem = _half_created_problem(root)  # before the lock file is created
            if problem:
                raise DatasetError(problem)
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root):
            attrs = read_root_meta(root)  # another process may have won the race
            if attrs is not None:
                return attrs
            problem = _half_created_problem(root)
            if problem:
                raise DatasetError(problem)
            remove_stale_temps(root)
            (root / EPISODES_DIR).mkdir(exist_ok=True)
            remove_stale_temps(root / EPISODES_DIR)
            atomic_write_json(root / EPISODES_DIR / "zarr.json", EMPTY_GROUP)
            atomic_write_json(
                root / "zarr.json",
                {"zarr_format": 3, "node_type": "group", "attributes": {FORMAT_NAME: wanted}},
            )
            fsync_dir(root.parent)  # the new folder's own entry
            return wanted

    # -- episodes ---------------------------------------------------------------------------------
    def committed(self) -> list[dict[str, Any]]:
        """Metadata of all committed episodes (sorted by id)."""
        return list(load_index(self.root).values())

    def recorded_keys(self) -> set[tuple[str, int, str]]:
        """(env_id, seed, source) of committed episodes: what a resumed `collect` can skip."""
        return {
            (e.get("env_id", ""), int(e.get("seed", -1)), e.get("source", ""))
            for e in self.committed()
            if e.get("seed") is not None
        }

    def begin_episode(self, meta: Mapping[str, Any] | None = None) -> EpisodeBuilder:
        """Start streaming one episode into staging; nothing is visible until `commit()`.

        The metadata is checked first (`validate_meta`): a NaN setting is refused here."""
        return EpisodeBuilder(self, validate_meta(meta))

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

    def cleanup_staging(self, max_age_s: float = 0.0) -> int:
        """Delete leftovers of dead writers older than `max_age_s`; returns how many.

        Staging folders are named `ep-PID-RANDOM`; those of live processes are kept."""
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
            if pid == os.getpid() or (pid > 0 and _pid_alive(pid)):
                continue  # ours, or a live writer's
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime >= max_age_s:
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
        return removed

    def _commit(self, staged: Path, meta: dict[str, Any]) -> int:
        """Give the staged episode the next id and rename it into `episodes/` (the commit)."""
        if self.durable:
            _fsync_tree(staged)
        with _locked(self.root):
            remove_stale_temps(self.root)  # index temp files of a killed commit (we hold the lock)
            index = load_index(self.root)
            next_id = max((int(n[3:]) for n in index), default=-1) + 1
            name = f"{EPISODE_PREFIX}{next_id:06d}"
            meta = {**meta, "id": next_id}
            # the group's zarr.json carries the metadata and the id; written before the rename
            atomic_write_json(
                staged / "zarr.json",
                {"zarr_format": 3, "node_type": "group", "attributes": {"episode": meta}},
            )
            os.rename(staged, self.root / EPISODES_DIR / name)  # the commit point
            if self.durable:
                fsync_dir(self.root / EPISODES_DIR)
            index[name] = {"name": name, **meta}
            try:
                atomic_write_json(
                    self.root / INDEX_FILE,
                    {"schema_version": SCHEMA_VERSION, "episodes": list(index.values())},
                    indent=1,
                    sort_keys=True,
                )
            except OSError:
                pass  # the index is a cache; readers rebuild missing entries from the episodes
        return next_id


class EpisodeBuilder:
    """Streams frames and per-step values of one episode into a staging zarr group.

    Frames are encoded one time-chunk at a time as they arrive (bounded memory); per-step
    values are buffered and written at `commit()`, after checking that they are finite
    (`schema.step_problems`).
    """

    def __init__(self, writer: DatasetWriter, meta: dict[str, Any]) -> None:
        self.writer = writer
        self.meta = meta
        self._n = 0
        self._nbuf = 0
        self._done = False
        self._steps: dict[str, list[Any]] = {}
        h, w, c = writer.image_shape
        cf = writer.chunk_frames
        self._buf = np.empty((cf, h, w, c), np.uint8)
        self._dbuf = np.empty((cf, h, w), np.float16) if writer.save_depth else None
        self._enc = ChunkEncoder(writer.attrs["codec"], 1)
        self._denc = ChunkEncoder(DEPTH_CODEC, 2) if writer.save_depth else None
        self.path = writer.root / STAGING_DIR / f"ep-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            (self.path / "frames").mkdir(parents=True)
        except BaseException as exc:
            self.abort()
            raise _wrap_write_error(exc, writer.root) from exc

    def __len__(self) -> int:
        return self._n + self._nbuf

    def add(self, frame: np.ndarray, steps: Mapping[str, Any], depth: np.ndarray | None = None) -> None:
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
                    raise ValueError(f"step value {k!r} first appears at step {n}; give it every step")
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
        self, frames: np.ndarray, steps: Mapping[str, np.ndarray], depth: np.ndarray | None = None
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
            write_file(self.path / "frames" / f"c.{c}.0.0.0", self._enc.encode(self._buf))
            if self._dbuf is not None:
                if self._nbuf < cf:
                    self._dbuf[self._nbuf :] = 0
                write_file(self.path / "depth" / f"c.{c}.0.0", self._denc.encode(self._dbuf))
        except BaseException as exc:
            self.abort()
            raise _wrap_write_error(exc, self.writer.root) from exc
        self._n += self._nbuf
        self._nbuf = 0

    def commit(self) -> int:
        """Write the per-step arrays and make the episode visible atomically; returns its id."""
        self._finish()
        return self._run_commit()

    def commit_async(self) -> Any:
        """Like `commit`, but flush to disk and rename on the writer's committer thread.

        Returns a `concurrent.futures.Future` of the episode id; the fsyncs (waiting on the
        disk, not the CPU) then overlap with recording the next episode. `writer.wait()`
        blocks until it is visible. A process killed before then leaves it uncommitted.
        """
        self._finish()
        return self.writer._submit(self._run_commit)

    def _run_commit(self) -> int:
        try:
            return self.writer._commit(self.path, self.meta)
        except BaseException as exc:
            self.abort()
            raise _wrap_write_error(exc, self.writer.root) from exc

    def _step_arrays(self, n: int) -> dict[str, np.ndarray]:
        """The buffered per-step values as typed arrays, refused when a value rule fails."""
        missing = [k for k in REQUIRED_STEPS if k not in self._steps]
        if missing:
            raise ValueError(f"episode lacks required per-step arrays {missing}")
        arrays: dict[str, np.ndarray] = {}
        for k, vals in self._steps.items():
            dtype = STEP_DTYPES.get(k)
            arr = np.asarray(vals) if dtype is None else np.asarray(vals, dtype=dtype)
            if arr.shape != (n,) or arr.dtype.kind not in "biuf":
                raise ValueError(
                    f"step array {k!r} must hold one number or bool per step, got "
                    f"{arr.dtype} of shape {arr.shape}"
                )
            problems = step_problems(k, arr, ranges=False)
            if problems:
                raise DatasetError(
                    f"refusing to record an episode whose {problems[0]}; the data would fail "
                    "`driving dataset verify` and training (check the env or action source)"
                )
            arrays[k] = arr
        return arrays

    def _finish(self) -> None:
        """Write the last chunk, the per-step arrays and their metadata (still in staging)."""
        from driving import __version__

        if self._done:
            raise RuntimeError("episode already committed or aborted")
        n = len(self)
        try:
            if n == 0:
                raise ValueError("cannot commit an empty episode (no steps added)")
            arrays = self._step_arrays(n)
            meta = validate_meta(self.meta)  # the caller may have added keys (`ended_by`)
        except ValueError:
            self.abort()
            raise
        self._flush()
        self._done = True
        try:
            h, w, c = self.writer.image_shape
            cf = self.writer.chunk_frames
            codec = self.writer.attrs["codec"]
            docs = {"frames": array_metadata((n, h, w, c), (cf, h, w, c), "uint8", codec)}
            if self._dbuf is not None:
                docs["depth"] = array_metadata((n, h, w), (cf, h, w), "float16", DEPTH_CODEC)
            enc = ChunkEncoder(STEP_CODEC, 1)  # zstd: no typesize
            for k, arr in arrays.items():
                write_file(self.path / k / "c.0", enc.encode(arr))
                docs[k] = array_metadata((n,), (n,), arr.dtype.name, STEP_CODEC)
            for k, doc in docs.items():
                _staged_json(self.path / k / "zarr.json", doc)
            steer = arrays["steering"].astype(np.float64)
            self.meta = {
                "env_id": self.writer.env_id,
                **meta,
                "length": n,
                "package_version": __version__,
                "schema_version": SCHEMA_VERSION,
                "steps": sorted(arrays),
                "has_depth": self._dbuf is not None,
                "duration_s": float(arrays["dt_s"].astype(np.float64).sum()),
                "steering_mean": float(steer.mean()),
                "steering_std": float(steer.std()),
                "recorded_at": _now(),
            }
        except BaseException as exc:
            self.abort()
            raise _wrap_write_error(exc, self.writer.root) from exc

    def abort(self) -> None:
        """Drop the staged episode (nothing committed is touched)."""
        self._done = True
        shutil.rmtree(self.path, ignore_errors=True)
