"""Atomic, durable file writes and the pickle guard: the one place every output goes through.

Why here (the lowest layer, beside the checkpoint code): `policies.checkpoint` must not
import `driving`, and `driving` (datasets, reports, plots, stills, training state) and the
scripts all build on `policies`, so one copy here serves every writer.

The promise: a reader sees the old file or the new one, never half of one; a crash or a
full disk leaves no temp file behind; the data is on disk (fsync of the file, then of its
folder) before the call returns; files are created with the usual mode (0666 & ~umask,
0644 under the default umask), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()

#: Suffixes of files that hold pickles (PyTorch's `torch.save`, joblib, raw pickle).
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib", ".tar"})


def temp_path(path: str | os.PathLike) -> Path:
    """A unique hidden temp name next to ``path`` (``.NAME.<hex>.tmp``), same filesystem."""
    p = Path(path)
    return p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it and rename it over ``path``.

    The temp file is removed on every error path (including KeyboardInterrupt and a full
    disk); ``path`` is then untouched. Returns ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = os.fspath(target)  # a full disk's error from write() names no file
        raise
    fsync_dir(target.parent)
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably."""
    return atomic_write_with(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and durably."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(obj: Any) -> Any:
    """Plain-JSON copy of ``obj``: numpy scalars and arrays, tuples, Paths and dataclass-free
    objects converted; non-finite floats become ``None`` (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, str) or obj is None:
        return obj
    return repr(obj)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
                      sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON (via `jsonable`, so never NaN) atomically, ending in a newline."""
    text = json.dumps(jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def atomic_write_png(path: str | os.PathLike, rgb: np.ndarray, compression: int = 6) -> Path:
    """Write an RGB (or grey) uint8 image as PNG atomically."""
    import cv2

    img = np.asarray(rgb)
    if img.dtype != np.uint8:
        raise ValueError(f"PNG image must be uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[..., ::-1]  # OpenCV writes BGR
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[..., [2, 1, 0, 3]]
    elif img.ndim != 2:
        raise ValueError(f"PNG image must be (H,W), (H,W,3) or (H,W,4), got shape {img.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img), [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:
        raise ValueError(f"could not encode {path} as PNG")
    return atomic_write_bytes(path, buf.tobytes())


def atomic_save_figure(path: str | os.PathLike, fig: Any, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure atomically (the format comes from ``path``'s suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write_with(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs))


def looks_pickled(path: str | os.PathLike) -> bool:
    """True for a pickle or a ``torch.save`` zip, by suffix or by magic bytes.

    We never unpickle (it can run arbitrary code); this only reads the first bytes.
    """
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(10)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if head[:4] == b"PK\x03\x04":  # torch.save's zip
        return True
    if head[:1] == b"\x80":  # pickle protocol >= 2 ... or a safetensors header length 128 + 256k
        n = int.from_bytes(head[:8], "little")
        is_safetensors = len(head) >= 9 and head[8:9] == b"{" and 8 + n <= size
        return not is_safetensors
    return False


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temp files (``.*.tmp``) a killed writer may have left in ``folder``."""
    removed = []
    d = Path(folder)
    if d.is_dir():
        for p in d.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                p.unlink()
                removed.append(p)
    return removed


__all__ = [
    "PICKLE_SUFFIXES", "atomic_save_figure", "atomic_write_bytes", "atomic_write_json",
    "atomic_write_png", "atomic_write_text", "atomic_write_with", "fsync_dir", "jsonable",
    "looks_pickled", "remove_stale_temps", "temp_path",
]
