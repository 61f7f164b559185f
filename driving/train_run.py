"""Everything of a training run that is not the algorithm (`driving/train.py` is that).

- **Input checks before any work**: `--out` (never overwrites; a killed first save counts as
  "never started"), `--device`, `--precision`, the dataset (verified), the policy name.
- **Processes** under torchrun (`Dist`).
- **The run directory**: the training state (`policies.training_state`, one atomic file),
  the best checkpoint (`policies.checkpoint`), `metrics.csv`, resume (settings merged,
  dataset unchanged, a torn best checkpoint repaired), and a full disk turned into a
  one-line error instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from driving.errors import UserError
from policies import training_state as ts
from policies.atomicio import atomic_write_text, looks_pickled
from policies.policy import supports_bf16  # the one bf16 probe (tests patch it here)

if TYPE_CHECKING:
    from driving.train import RunState, TrainConfig

METRICS_FILE = "metrics.csv"
# Settings that may differ on --resume (they change neither the data nor the optimisation).
RESUMABLE_CHANGES = ("epochs", "patience", "workers", "threads", "dagger_rounds", "resume", "data",
                     "out", "device")


@dataclass
class Dist:
    """This process's place under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world: int = 1
    created: bool = False  # we initialised the process group (and must destroy it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()


def init_distributed() -> Dist:
    """Join the process group that `torchrun` describes in the environment (gloo, CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    dist = torch.distributed
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), created=created)



# ----------------------------------------------------------------------------------------
# input checks (all before any work)
# ----------------------------------------------------------------------------------------
def check_out_dir(out: str | os.PathLike, resume: bool, clean: bool = True) -> tuple[Path, bool]:
    """(run_dir, resuming) for --out, or a one-line UserError; refuses to overwrite anything."""
    run_dir = Path(out)
    if run_dir.is_file() and looks_pickled(run_dir):
        raise UserError(f"--out {run_dir} is a pickled PyTorch/pickle file; liquid-drive never "
                        "unpickles; --out takes a run directory (model.safetensors + config.json)")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a directory; choose a new --out")
    parent = next(p for p in [run_dir.absolute(), *run_dir.absolute().parents] if p.exists())
    if not parent.is_dir():
        raise UserError(f"--out {run_dir}: {parent} is a file, so no run directory can be made "
                        "under it; choose --out inside a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {run_dir}: {parent} is not writable; choose a writable --out")
    status = ts.run_dir_status(run_dir, clean=clean)
    if status == "resumable":
        if not resume:
            raise UserError(f"run directory {run_dir} already exists and is not empty; pass --resume "
                            "to continue it, or choose a new --out (nothing was overwritten)")
        return run_dir, True
    if status == "foreign":
        if not resume:
            raise UserError(f"run directory {run_dir} already exists and is not empty; choose a new "
                            "--out (nothing was overwritten)")
        pickles = ts.pickled_files(run_dir)
        hint = f" (it holds pickled files {pickles}, which liquid-drive never loads)" if pickles else ""
        raise UserError(f"--resume: {run_dir} has no training state ({ts.STATE_DIR}/{ts.STATE_FILE})"
                        f"{hint}; it was not written by `driving train`, or by an older version. "
                        "Choose a new --out.")
    return run_dir, False  # new, or only a killed first save's leftovers: start it


def resolve_device(name: str) -> torch.device:
    """cpu | cuda | auto → a torch.device (`policies.policy.resolve_device`), or a UserError
    naming what this machine has."""
    from policies.policy import resolve_device as resolve

    try:
        return resolve(name)
    except ValueError as exc:
        raise UserError(f"--device {name}: no CUDA device here; use --device cpu or auto ({exc})") from None


def check_precision(precision: str, device: torch.device) -> bool:
    """True for bf16 (checked to be native here), False for fp32."""
    if precision == "bf16" and not supports_bf16(device):
        raise UserError(f"--precision bf16: {device.type} here has no native bf16 (the CPU needs "
                        "AVX-512 BF16 or AMX with oneDNN); available: fp32")
    return precision == "bf16"


def open_dataset(root: str | Path):
    """Open and verify a recorded dataset, with a clear error for anything else."""
    from driving import dataset as ds

    path = Path(root)
    if path.is_file() and looks_pickled(path):
        raise UserError(f"{path} is a pickled PyTorch/pickle file; liquid-drive never unpickles (it "
                        "can run arbitrary code). --data takes a dataset directory written by "
                        "`driving collect`.")
    if not path.exists():
        raise UserError(f"dataset {path} does not exist; record one with `driving collect --out {path}`")
    if not path.is_dir():
        raise UserError(f"dataset {path} is a file, not a directory; --data takes a dataset written by `driving collect`")
    try:
        report = ds.verify(path)
    except ValueError as exc:
        raise UserError(f"dataset {path} failed verification: {exc}") from exc
    if report.problems:
        shown = "; ".join(report.problems[:3]) + (" ..." if len(report.problems) > 3 else "")
        raise UserError(f"dataset {path} failed verification ({len(report.problems)} problem(s): {shown}); "
                        f"run `driving dataset verify {path}` and re-record or drop the damaged episodes")
    dataset = ds.Dataset(path)
    if not dataset.episodes:
        raise UserError(f"dataset {path} has no episodes; record some with `driving collect --out {path}`")
    return dataset


def dataset_fingerprint(dataset, episodes: int | None = None) -> str:
    """The fingerprint a new run records: `driving.dataset.fingerprint` of its first
    `episodes` episodes (their data and metadata, without the recording time or host, so
    a same-seed re-recording of the same data matches; docs/dataset.md)."""
    from driving.dataset import fingerprint

    return fingerprint(dataset, episodes)


def legacy_fingerprint(dataset, episodes: int | None = None) -> str:
    """The fingerprint runs recorded before `driving.dataset.fingerprint` existed: SHA-256
    of the episode index (name, length, all metadata, the recording time included)."""
    index = [{"name": e.name, "length": int(e.length), "meta": e.meta}
             for e in list(dataset.episodes)[: episodes if episodes is not None else None]]
    return hashlib.sha256(json.dumps(index, sort_keys=True, default=_json_default).encode()).hexdigest()


def fingerprint_matches(dataset, episodes: int, recorded: str | None) -> bool:
    """Whether the first `episodes` episodes are the data a run recorded as `recorded`
    (its fingerprint of either kind: runs made before the current one still resume)."""
    if not recorded or len(dataset.episodes) < episodes:
        return False
    return recorded in (dataset_fingerprint(dataset, episodes), legacy_fingerprint(dataset, episodes))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def check_policy_name(name: str) -> None:
    from policies.factory import POLICY_NAMES

    if name not in POLICY_NAMES:
        raise UserError(f"unknown policy {name!r}; choose one of: {', '.join(POLICY_NAMES)}")


@contextlib.contextmanager
def writing_run(run_dir: Path) -> Iterator[None]:
    """Turn a failed write of the run (full disk, quota, read-only) into a one-line UserError;
    the atomic writers leave the previous files whole, so --resume continues from them."""
    try:
        yield
    except OSError as exc:
        what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the filesystem is read-only"}.get(exc.errno, exc.strerror or str(exc))
        raise UserError(f"cannot write the run in {run_dir}: {what} ({exc.filename or run_dir}); free "
                        "space or choose another --out, then --resume continues from the last "
                        "completed epoch") from None



def policy_description(policy: nn.Module) -> dict[str, Any]:
    core = getattr(policy, "core", None)
    cnn = getattr(policy, "cnn", None)
    desc: dict[str, Any] = {
        "parameters": int(sum(p.numel() for p in policy.parameters())),
        "cnn_parameters": int(sum(p.numel() for p in cnn.parameters())) if cnn is not None else 0,
        "core": type(core).__name__ if core is not None else None,
    }
    for attr in ("state_size", "output_size"):
        if core is not None and hasattr(core, attr):
            desc[attr] = int(getattr(core, attr))
    wiring = getattr(core, "wiring", None)
    if wiring is not None:
        desc["units"] = int(getattr(wiring, "units", 0))
        desc["synapses"] = int(getattr(wiring, "synapse_count", 0))
    return desc



# ----------------------------------------------------------------------------------------
# run directory: state, best checkpoint, metrics, resume
# ----------------------------------------------------------------------------------------
def save(run_dir: Path, policy: nn.Module, opt, cfg: TrainConfig, run: RunState, best) -> None:
    """The metrics so far, then the training state (the resume point) — both atomic."""
    with writing_run(run_dir):
        write_metrics(run_dir, run.history)
        ts.save_training_state(run_dir, model=policy.state_dict(), optimizer=opt, run=asdict(run),
                               config=asdict(cfg), best=best)


def save_best(run_dir: Path, policy: nn.Module, config: dict) -> None:
    from policies.checkpoint import save_checkpoint

    with writing_run(run_dir):
        save_checkpoint(run_dir, policy, config)


def load_state(run_dir: Path) -> ts.SavedState:
    try:
        return ts.load_training_state(run_dir)
    except ValueError as exc:
        raise UserError(f"--resume: {exc}") from None


def restore(policy: nn.Module, opt, saved: ts.SavedState, cfg: TrainConfig, run_dir: Path,
             hw: tuple[int, int], dist: Dist) -> None:
    """Weights, Adam moments and RNG from the saved state; repair a torn best checkpoint."""
    from policies.checkpoint import load_policy
    from policies.factory import build_policy

    try:
        policy.load_state_dict(saved.model, strict=True)
        policy_best = None
        if saved.best is not None:
            policy_best = build_policy(cfg.policy, image_hw=hw, seed=cfg.seed)
            policy_best.load_state_dict(saved.best[0], strict=True)
        ts.load_optimizer(opt, saved.tensors, saved.optimizer_groups)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"--resume: the saved weights in {run_dir} do not match policy {cfg.policy!r} "
                        f"({str(exc).splitlines()[0]}); start a new --out") from exc
    torch.set_rng_state(saved.rng)
    if dist.main and policy_best is not None:  # a kill between model.safetensors and config.json
        try:
            loaded, _ = load_policy(run_dir)
            ok = all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                        policy_best.state_dict().values()))
        except ValueError:
            ok = False
        if not ok:
            save_best(run_dir, policy_best, saved.best[1])


def merge_resume_config(cfg: TrainConfig, saved: dict, explicit: set[str]) -> TrainConfig:
    """The saved settings win; explicitly given settings must agree unless they are harmless."""
    from driving.train import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in known}
    if cfg.policy != merged.get("policy") and "policy" in explicit:
        raise UserError(f"--resume: {cfg.out} was trained with policy {merged.get('policy')!r}, not "
                        f"{cfg.policy!r}; drop --policy or choose a new --out")
    before = asdict(TrainConfig(**{**merged, "data": "", "out": ""}))  # normalised as now
    for key in explicit & known:
        new = getattr(cfg, key)
        if key in RESUMABLE_CHANGES:
            merged[key] = new
        elif before.get(key) != new and key != "policy":
            raise UserError(f"--resume: {cfg.out} was trained with {key}={before.get(key)!r}, not "
                            f"{new!r}; resume keeps the run's settings (drop the option) or choose a new --out")
    merged.update(resume=True, out=cfg.out)
    if "data" not in explicit:
        merged["data"] = saved.get("data", cfg.data)
    return TrainConfig(**merged)


def check_dataset_unchanged(dataset, run: RunState, data_root: str) -> None:
    """On resume the data must be what the run saw, plus this run's own DAgger episodes."""
    n = run.dataset_episodes
    if not fingerprint_matches(dataset, n, run.dataset_fingerprint):
        raise UserError(f"--resume: dataset {data_root} changed since this run was started (its episode "
                        "index no longer matches the run's fingerprint); train a new --out on the new data")
    for ep in dataset.episodes[n:]:
        if not (ep.meta.get("source") == "dagger" and ep.meta.get("run") == run.run_id):
            raise UserError(f"--resume: dataset {data_root} gained episodes that this run did not record "
                            f"({ep.name}); train a new --out on the new data")


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    keys = list(history[0])
    lines = [",".join(keys)] + [",".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
                                for r in history]
    atomic_write_text(run_dir / METRICS_FILE, "\n".join(lines) + "\n")


def log_epoch(row: dict[str, Any], improved: bool, tb, step: int) -> None:
    if tb is not None:
        for key in ("train_loss", "train_mse", "val_loss", "val_mse", "frames_per_s"):
            tb.add_scalar(key, row[key], step)
    print(f"round {row['round']} epoch {row['epoch']}: train loss {row['train_loss']:.4f} "
          f"(mse {row['train_mse']:.4f})  val loss {row['val_loss']:.4f} (mse {row['val_mse']:.4f})  "
          f"{row['frames_per_s']:.0f} frames/s" + ("  *best" if improved else ""), file=sys.stderr)


def tensorboard(run_dir: Path, dist: Dist):
    if not dist.main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: metrics.csv is the record
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def checkpoint_config(cfg: TrainConfig, policy: nn.Module, dataset, extra: dict) -> dict:
    """config.json of the model: with `policies.checkpoint`'s own keys, enough to rebuild and audit it."""
    return {
        "policy": cfg.policy,
        "image_hw": list(dataset.image_shape[:2]),
        "camera": dataset.camera,
        "normalisation": "per-image whitening inside the CNN: (x - mean) / max(std, 1/sqrt(n)) "
                         "over all pixels and channels of each uint8 RGB frame",
        "steering": "normalised to [-1, 1] (the env's action); output = tanh(readout)",
        "policy_info": policy_description(policy),
        "training": asdict(cfg),
        "dataset": {"path": str(Path(cfg.data).resolve()), "fingerprint": dataset_fingerprint(dataset),
                    "episodes": len(dataset.episodes), "frames": int(dataset.num_frames),
                    "env_id": dataset.attrs.get("env_id")},
        "torch_version": torch.__version__,
        **extra,
    }
