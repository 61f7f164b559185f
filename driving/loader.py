"""Fixed-length training windows from a recorded dataset (a torch `Dataset`).

Why windows: recurrent policies (LTC/CfC/LSTM) train on short sequences with their real
elapsed times; a window never crosses an episode boundary because the car's state does not
carry over between drives. Train/validation is split by whole episodes so that validation
frames are never neighbours of training frames.

Also here: `stateful_plan`, the batch schedule of stateful truncated BPTT (consecutive
windows of an episode in one batch row, so the recurrent state can be carried across them),
and `die_with_parent`, the DataLoader `worker_init_fn` that ends a worker when the training
process dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from driving.dataset import Dataset

SPLITS = ("train", "val", "all")


def split_episodes(names: list[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of train and val episodes.

    Episodes are ranked by a hash of (seed, episode name), so the split does not depend on
    the order episodes were committed in (parallel workers) and is the same in every process.
    With at least two episodes and `val_fraction > 0`, each side gets at least one episode.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(names)
    ranked = sorted(
        range(n),
        key=lambda i: hashlib.sha256(f"{seed}:{names[i]}".encode()).hexdigest(),
    )
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    val = sorted(ranked[:n_val])
    train = sorted(ranked[n_val:])
    return train, val


class WindowDataset(TorchDataset):
    """Windows of `seq_len` consecutive steps from the episodes of one split.

    Item: `{"image": uint8 (T,H,W,3), "steering": float32 (T,) expert label, "dt": float32 (T,)
    seconds since the previous frame, "speed": float32 (T,), "action": float32 (T,) executed
    steering, "episode": int (episode id), "start": int (first step in the episode)}`, all
    torch tensors (the default `DataLoader` collate stacks them to (B,T,...)).

    `stride` (default `seq_len`) spaces window starts; the last window of an episode is moved
    to end on its last step so that no frame is left out. Episodes shorter than `seq_len` are
    skipped. `sources` keeps only episodes whose `source` metadata is listed (e.g. `{"expert",
    "dagger"}`). Zarr arrays open lazily in each process, so `num_workers > 0` works.

    `tile=True` (stateful training) cuts each episode into consecutive, non-overlapping
    windows `[0, T), [T, 2T), ...` and drops the last `n mod T` steps instead of moving the
    last window back, so that window k+1 continues exactly where window k ended.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        seq_len: int = 16,
        split: str = "train",
        val_fraction: float = 0.2,
        seed: int = 0,
        stride: int | None = None,
        sources: Iterable[str] | None = None,
        tile: bool = False,
    ) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        stride = seq_len if stride is None or tile else int(stride)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.root = os.fspath(root)
        self.seq_len = seq_len
        self.stride = stride
        self.split = split
        self.store = Dataset(root)
        eps = self.store.episodes
        keep = list(range(len(eps)))
        if sources is not None:
            wanted = set(sources)
            keep = [i for i in keep if eps[i].meta.get("source", "expert") in wanted]
        train, val = split_episodes([eps[i].name for i in keep], val_fraction, seed)
        chosen = {"train": train, "val": val, "all": list(range(len(keep)))}[split]
        self.episode_indices = [keep[j] for j in chosen]
        starts: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        for i in self.episode_indices:
            n = eps[i].length
            if n < seq_len:
                continue
            s = np.arange(0, n - seq_len + 1, stride, dtype=np.int64)
            if s[-1] != n - seq_len and not tile:
                s = np.append(s, n - seq_len)
            starts.append(s)
            owners.append(np.full(len(s), i, dtype=np.int64))
        self._starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self._owners = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        self.skipped_short = sum(1 for i in self.episode_indices if eps[i].length < seq_len)

    @property
    def episode_ids(self) -> list[int]:
        """Ids (the N of `ep_N`) of the episodes in this split."""
        return [self.store.episodes[i].id for i in self.episode_indices]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.store.image_shape

    def __len__(self) -> int:
        return len(self._starts)

    def window(self, index: int) -> tuple[int, int]:
        """(episode index in the store, start step) of window `index`."""
        return int(self._owners[index]), int(self._starts[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range (0..{len(self) - 1})")
        ep, s = self.window(index)
        e = s + self.seq_len
        st = self.store
        return {
            "image": torch.from_numpy(np.ascontiguousarray(st.frames(ep, s, e))),
            "steering": torch.from_numpy(st.steps(ep, "steering")[s:e].astype(np.float32)),
            "dt": torch.from_numpy(st.steps(ep, "dt_s")[s:e].astype(np.float32)),
            "speed": torch.from_numpy(st.steps(ep, "speed")[s:e].astype(np.float32)),
            "action": torch.from_numpy(st.steps(ep, "action")[s:e].astype(np.float32)),
            "episode": st.episodes[ep].id,
            "start": s,
        }


# ----------------------------------------------------------------------------------------
# stateful truncated BPTT: which window each batch row trains on, step by step
# ----------------------------------------------------------------------------------------
def stateful_plan(windows: WindowDataset, streams: int, gen: Any,
                  start_anywhere: bool = False) -> list[list[tuple[int, int, bool]]]:
    """Steps of `(stream, window index, reset)` rows for stateful truncated BPTT.

    Each of `streams` batch rows walks through whole episodes (drawn in a random order from
    `gen`, a torch.Generator), one window per step, in order; when its episode ends it takes
    the next one. `reset` is True on an episode's first window (the state starts from zero,
    as in closed loop); otherwise the trainer carries the row's state from its previous
    window. Rows whose stream has run out of episodes leave the batch, so the last steps
    are smaller. `windows` must be tiled (`WindowDataset(..., tile=True)`).

    `start_anywhere`: each stream's first episode begins at a random window (drawn from
    `gen`, `reset` True there: the state starts from zero mid-episode, which a burn-in
    covers). Why: an epoch capped by --max-frames stops after a few steps, and without it
    every capped epoch would train only the episodes' first seconds.
    """
    import torch

    if streams < 1:
        raise ValueError(f"streams must be >= 1, got {streams}")
    per_episode: dict[int, list[int]] = {}
    for i in range(len(windows)):
        per_episode.setdefault(windows.window(i)[0], []).append(i)
    for idx in per_episode.values():
        starts = [windows.window(i)[1] for i in idx]
        if starts != [k * windows.seq_len for k in range(len(starts))]:
            raise ValueError("stateful_plan needs tiled windows (WindowDataset(..., tile=True))")
    order = [list(per_episode)[j] for j in torch.randperm(len(per_episode), generator=gen).tolist()]
    queue = iter(order)
    current: list[list[int]] = [[] for _ in range(streams)]
    first = [True] * streams
    plan: list[list[tuple[int, int, bool]]] = []
    while True:
        step: list[tuple[int, int, bool]] = []
        for s in range(streams):
            reset = False
            if not current[s]:
                nxt = next(queue, None)
                if nxt is None:
                    continue
                current[s] = list(per_episode[nxt])
                if start_anywhere and first[s]:
                    skip = int(torch.randint(0, len(current[s]), (1,), generator=gen))
                    current[s] = current[s][skip:]
                first[s] = False
                reset = True
            step.append((s, current[s].pop(0), reset))
        if not step:
            return plan
        plan.append(step)


# ----------------------------------------------------------------------------------------
# DataLoader workers end with the training process
# ----------------------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent_pid: int, worker_id: int) -> None:
    """In a worker: ask the kernel for SIGKILL when the parent dies (Linux prctl), and exit
    at once if it already has. Without this a worker of a SIGKILLed trainer lives on until
    PyTorch's watchdog notices, seconds later, holding memory and dataset file handles."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def die_with_parent() -> Callable[[int], None]:
    """A `worker_init_fn` for DataLoader (picklable, bound to this process's pid)."""
    return functools.partial(_die_with_parent, os.getpid())
