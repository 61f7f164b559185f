"""The resumable training state of a run: one safetensors file, `RUN/last/state.safetensors`.

Why one file: a run killed at any moment must resume exactly, so everything that decides
the next epoch (weights, Adam moments, the RNG state, the run's counters and history, its
settings and the best weights so far) is written together by one atomic rename
(`policies.atomicio`): a reader finds the previous state or the new one, never a mix.
Tensors are safetensors, everything else JSON in the file's metadata; nothing is pickled.

`run_dir_status` is the reader's half of the crash-window promise: a run killed during its
*first* save (or stopped by a full disk there) leaves only temp files and empty folders,
which count as "never started", so both a fresh command and `--resume` start it again.

This sits beside `policies.checkpoint` (the model a user loads) and, like it, never imports
`driving`; errors are `ValueError`s that name the file and the fix.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from policies.atomicio import atomic_write_bytes, jsonable, looks_pickled, remove_stale_temps

FORMAT = "liquid-drive-train-state"
FORMAT_VERSION = "1"
STATE_DIR = "last"
STATE_FILE = "state.safetensors"

Status = Literal["new", "resumable", "foreign"]


def state_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / STATE_DIR / STATE_FILE


def _only_leftovers(folder: Path) -> bool:
    """True when `folder` holds nothing but temp files (`.*.tmp`) and folders of the same."""
    for p in folder.iterdir():
        if p.is_dir() and not p.is_symlink():
            if not _only_leftovers(p):
                return False
        elif not (p.name.startswith(".") and p.name.endswith(".tmp")):
            return False
    return True


def run_dir_status(run_dir: str | os.PathLike, *, clean: bool = True) -> Status:
    """"new" (absent, empty, or only a killed first save's leftovers), "resumable" (holds a
    training state) or "foreign" (holds other files). With `clean`, leftover temp files are
    removed (only the process that writes the run may clean: under DDP, rank 0)."""
    run = Path(run_dir)
    if not run.is_dir():
        return "new"
    if clean:
        remove_stale_temps(run)
        remove_stale_temps(run / STATE_DIR)
    if state_path(run).is_file():
        return "resumable"
    return "new" if _only_leftovers(run) else "foreign"


def pickled_files(run_dir: str | os.PathLike) -> list[str]:
    """Names of pickled files directly in `run_dir` (an old PyTorch run, never loaded)."""
    run = Path(run_dir)
    if not run.is_dir():
        return []
    return sorted(p.name for p in run.iterdir() if p.is_file() and looks_pickled(p))


# ---------------------------------------------------------------------- optimizer
def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Adam's per-parameter tensors as `optim/<index>/<key>` and its JSON param groups."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"optim/{idx}/{key}"] = t.detach().cpu().clone().contiguous()
    return tensors, sd["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    """Inverse of `optimizer_tensors` (tensors follow the parameters' device)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = t
    current = opt.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise ValueError("the saved optimizer state does not match this policy's parameters; "
                         "start a new run directory")
    opt.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------------- save / load
def _safetensors_header(path: Path) -> bool:
    """A safetensors file starts with its header's length (u64, little endian) and then "{".

    Why: that length's first byte can be 0x80, pickle's magic, so `looks_pickled` alone
    would call some valid states pickles (issue 12, "header too large" for pickles).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


def _cpu(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().cpu().clone().contiguous() for k, v in sd.items()}


def save_training_state(
    run_dir: str | os.PathLike, *, model: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
    run: dict[str, Any], config: dict[str, Any],
    best: tuple[dict[str, torch.Tensor], dict[str, Any]] | None,
) -> Path:
    """Write RUN/last/state.safetensors atomically; returns its path.

    `run` is the run's counters and history, `config` its settings (both JSON), `best` the
    (state_dict, checkpoint config) of the best epoch so far, kept so that a kill between
    the two files of RUN/model.safetensors + config.json can be repaired on resume. If the
    write fails (a full disk, a kill signal turned into an exception) and it created the
    `last/` folder, the folder goes too: the run then reads as never started.
    """
    from safetensors.torch import save

    tensors = _cpu(model, "model/")
    opt_tensors, groups = optimizer_tensors(optimizer)
    tensors.update(opt_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state": json.dumps(jsonable(run), allow_nan=False),
        "config": json.dumps(jsonable(config), allow_nan=False),
        "optimizer_groups": json.dumps(jsonable(groups), allow_nan=False),
    }
    if best is not None:
        tensors.update(_cpu(best[0], "best/"))
        meta["best_config"] = json.dumps(jsonable(best[1]), allow_nan=False)
    path = state_path(run_dir)
    created = not path.parent.exists()
    try:
        atomic_write_bytes(path, save(tensors, metadata=meta))
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only if empty: the temp file is already gone
        raise
    return path


@dataclass
class SavedState:
    """What `load_training_state` read: tensors by prefix, the JSON parts decoded."""

    tensors: dict[str, torch.Tensor]
    run: dict[str, Any]
    config: dict[str, Any]
    optimizer_groups: list
    best_config: dict[str, Any] | None

    def prefixed(self, prefix: str) -> dict[str, torch.Tensor]:
        n = len(prefix)
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def model(self) -> dict[str, torch.Tensor]:
        return self.prefixed("model/")

    @property
    def best(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        return None if self.best_config is None else (self.prefixed("best/"), self.best_config)

    @property
    def rng(self) -> torch.Tensor:
        return self.tensors["rng/torch"]


def load_training_state(run_dir: str | os.PathLike) -> SavedState:
    """Read RUN/last/state.safetensors (never unpickles), or a ValueError naming the file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = state_path(run_dir)
    if looks_pickled(path) and not _safetensors_header(path):
        raise ValueError(f"{path} is a pickled file; liquid-drive never unpickles (it can run "
                         "arbitrary code); start a new run directory")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, not {FORMAT!r}")
        if int(meta.get("format_version", "0")) > int(FORMAT_VERSION):
            raise ValueError(f"format version {meta['format_version']} is newer than this "
                             f"liquid-drive reads ({FORMAT_VERSION}); upgrade the package")
        return SavedState(
            tensors=load_file(str(path)),
            run=json.loads(meta["state"]),
            config=json.loads(meta["config"]),
            optimizer_groups=json.loads(meta["optimizer_groups"]),
            best_config=json.loads(meta["best_config"]) if "best_config" in meta else None,
        )
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a valid training state ({exc}); start a new run "
                         "directory") from None


def nan_from_none(row: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """JSON has no NaN (`jsonable` writes None): give float columns their NaN back."""
    return {k: (math.nan if v is None and k in keys else v) for k, v in row.items()}


__all__ = [
    "FORMAT", "STATE_DIR", "STATE_FILE", "SavedState", "load_optimizer", "load_training_state",
    "nan_from_none", "optimizer_tensors", "pickled_files", "run_dir_status", "save_training_state",
    "state_path",
]
