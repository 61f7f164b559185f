"""`verify`: check a whole store, chunk by chunk, against the schema's rules.

Why separate from the reader: the reader trusts committed episodes and fails loudly on the
first damaged chunk it touches; `verify` visits everything and lists every problem, so a
damaged store is diagnosed once (which episode, which array, which step) and training can
refuse it before it starts (labels out of range or NaN would otherwise train a NaN model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from driving.dataset.codec import chunk_key, decode_chunk_file, direct_decoder
from driving.dataset.schema import (
    EPISODES_DIR,
    INDEX_FILE,
    REQUIRED_STEPS,
    STAGING_DIR,
    DatasetError,
    episode_names,
    open_root,
    read_episode_attrs,
    read_index_cache,
    step_problems,
    validate_meta,
)


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
    decoded: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems


def _index_checks(root: Path, names: list[str], rep: VerifyReport) -> dict[str, Any]:
    """Cached index entries; index.json that is not strict JSON (an old NaN) is a warning."""
    cached, why = read_index_cache(root, strict=True)
    if why is not None:
        rep.warnings.append(why)
        cached, _ = read_index_cache(root)  # still compare lengths when only NaN was wrong
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
    return cached


def _read_all(apath: Path, arr: Any, rep: VerifyReport, where: str) -> np.ndarray | None:
    """Every chunk of one array, each checked (presence, checksum, decode); None if any fails."""
    cf = arr.chunks[0]
    dec = direct_decoder(arr)
    blocks = []
    ok = True
    for c in range(-(-arr.shape[0] // cf)):
        rep.chunks += 1
        rel = chunk_key(arr, c)
        if not (apath / rel).exists():
            rep.problems.append(f"{where}: chunk file {rel} is missing")
            ok = False
            continue
        if not rep.decoded:
            if (apath / rel).stat().st_size <= 4:
                rep.problems.append(f"{where}: chunk file {rel} is truncated (no data)")
                ok = False
            continue
        try:
            if dec is not None:
                block = decode_chunk_file(apath / rel, dec, arr.chunks)
                blocks.append(block[: max(0, min(cf, arr.shape[0] - c * cf))])
            else:
                blocks.append(arr[c * cf : (c + 1) * cf])
        except Exception as exc:
            rep.problems.append(f"{where}: chunk {rel} does not decode ({type(exc).__name__}: {exc})")
            ok = False
    if not ok or not rep.decoded:
        return None
    return np.concatenate(blocks) if blocks else np.empty((0, *arr.shape[1:]), arr.dtype)


def _value_checks(name: str, a: str, values: np.ndarray, rep: VerifyReport) -> None:
    """The schema's value rules on a whole array (frames are uint8: nothing to check)."""
    if a == "frames":
        return
    rep.problems.extend(f"{name}/{p}" for p in step_problems(a, values))
    if a == "dt_s" and np.any(values < 0):
        rep.problems.append(f"{name}/dt_s: negative time step at step {int(np.argmax(values < 0))}")
    if a == "time_s" and len(values) > 1:
        back = np.diff(values.astype(np.float64)) < 0
        if back.any():
            rep.problems.append(f"{name}/time_s: time goes backwards at step {int(np.argmax(back)) + 1}")


def _check_episode(root: Path, name: str, cached: dict[str, Any], image_shape: tuple, rep: VerifyReport) -> int:
    """Append the episode's problems to `rep`; returns its length."""
    import zarr

    meta = read_episode_attrs(root, name)
    n = int(meta.get("length", -1))
    if name in cached and int(cached[name].get("length", -1)) != n:
        rep.problems.append(f"{name}: length {n} disagrees with {INDEX_FILE} ({cached[name].get('length')})")
    try:
        validate_meta(meta)
    except DatasetError as exc:
        rep.problems.append(f"{name}: {exc}")
    arrays = ["frames", *meta.get("steps", REQUIRED_STEPS)]
    if meta.get("has_depth"):
        arrays.append("depth")
    for k in REQUIRED_STEPS:
        if k not in arrays:
            rep.problems.append(f"{name}: required per-step array {k!r} missing from metadata")
    for a in arrays:
        apath = root / EPISODES_DIR / name / a
        try:
            arr = zarr.open_array(apath, mode="r", zarr_format=3)
        except Exception as exc:
            rep.problems.append(f"{name}/{a}: cannot open ({type(exc).__name__}: {exc})")
            continue
        if arr.shape[0] != n:
            rep.problems.append(f"{name}/{a}: {arr.shape[0]} steps, episode length is {n}")
        if a == "frames" and tuple(arr.shape[1:]) != image_shape:
            rep.problems.append(f"{name}/frames: shape {arr.shape[1:]} != dataset {image_shape}")
        values = _read_all(apath, arr, rep, f"{name}/{a}")
        if values is not None:
            _value_checks(name, a, values, rep)
    return n


def verify(root: str | os.PathLike, progress: bool = False, *, decode: bool = True) -> VerifyReport:
    """Check every committed episode: metadata, array shapes, every chunk file present and,
    with `decode` (the default), decoded with its checksum and the values checked (finite
    everywhere, steering and action in [-1, 1], `dt_s >= 0`, `time_s` non-decreasing).

    `decode=False` is the quick structural check of `driving dataset info` (no chunk read).
    """
    from tqdm import tqdm

    root = Path(root)
    rep = VerifyReport(str(root), decoded=decode)
    image_shape = tuple(open_root(root)["image_shape"])
    names = episode_names(root)
    cached = _index_checks(root, names, rep)
    for name in tqdm(names, desc="verify", unit="ep", disable=not progress):
        before = len(rep.problems)
        try:
            n = _check_episode(root, name, cached, image_shape, rep)
        except DatasetError as exc:
            rep.problems.append(f"{name}: {exc}")
            n = 0
        if len(rep.problems) > before:
            rep.damaged_episodes.append(name)
        else:
            rep.episodes += 1
            rep.frames += n
    return rep
