"""Imitation learning for lane keeping: behaviour cloning on windows, then DAgger.

Read top to bottom, this file is the whole algorithm:

1. **Data.** `WindowDataset` cuts the recorded episodes into windows of `seq_len` frames
   (never across an episode boundary); the validation split is by episode, so no road
   stretch is in both sets.
2. **Behaviour cloning with truncated BPTT.** Each window starts from the zero state; the
   recurrent state is carried from frame to frame inside the window and gradients flow
   through the whole window. Liquid cores (LTC, CfC) receive the real elapsed time of each
   frame (`dt`), so a jittery or dropped frame is modelled, not hidden.
3. **The paper's recipe** (Lechner et al. 2020), default for every policy so that the
   comparison between policies is fair:
   - loss = mean( exp(α·|y|) · (ŷ − y)² ): straight road dominates any drive, and the rare
     large steering commands in curves are the ones that matter. Our steering is normalised
     to [−1, 1] (the paper's was inverse turning radius in 1/m, a much smaller number), so α
     is ours: α = 3 weighs full lock e³ ≈ 20× a straight-ahead frame, a typical racetrack
     curve (|y| ≈ 0.3) 2.5×.
   - a lower learning rate for the perception CNN than for the recurrent core
     (`cnn_lr_factor`), via optimizer parameter groups;
   - shadow / brightness / colour augmentation (`driving.augment`), and per-image whitening
     (inside the CNN, so it is part of the model and applies at test time too);
   - gradient-norm clipping, Adam.
4. **Validation and early stopping** on the validation loss; the best epoch's weights are
   the model (`RUN/model.safetensors` + `RUN/config.json`).
5. **DAgger** (Ross et al. 2011): roll the current policy out in the simulator (with
   probability β per step the expert drives instead, β = β₀^round), label every visited frame
   with the expert's steering, append those episodes to the dataset (marked
   `source="dagger"`), and retrain from the current weights.

Checkpoints and resume: after every epoch the complete training state (weights, Adam
moments, RNG state, counters, metrics history) goes into one safetensors file,
`RUN/last/state.safetensors`, written to a temp file and renamed, so a kill at any moment
leaves either the previous or the new state, never half of one. Randomness is re-seeded at
the start of every epoch from (seed, round, epoch, rank), which makes a resumed run produce
exactly the weights of an uninterrupted one.

Distributed: under `torchrun --nproc-per-node N -m driving train ...` each process trains on
its shard (`DistributedSampler`), DDP averages gradients over gloo, and rank 0 writes
everything.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from driving.augment import augment_windows
from driving.errors import UserError

STATE_DIR = "last"
WARMUP_FRAMES_PER_STEP = 64
_UMASK = os.umask(0)
os.umask(_UMASK)
STATE_FILE = "state.safetensors"
METRICS_FILE = "metrics.csv"


@dataclass
class TrainConfig:
    """Every setting of a training run; stored in `RUN/config.json` under "training"."""

    data: str = ""  # dataset directory (zarr, from `driving collect`)
    out: str = ""  # run directory
    policy: str = "ncp-cfc"  # a name of policies.factory.POLICY_NAMES
    epochs: int = 12  # per round (round 0 = behaviour cloning, 1..K = DAgger)
    seq_len: int = 4  # frames per training window (truncated BPTT length); see docs/training.md
    stride: int = 0  # frames between window starts; 0 = seq_len // 2
    batch: int = 16  # windows per step (per process under DDP)
    lr: float = 3e-3  # recurrent core and output head
    cnn_lr_factor: float = 1.0  # the CNN learns at lr · cnn_lr_factor (< 1: the paper's lower CNN rate)
    weight_decay: float = 0.0
    alpha: float = 3.0  # loss weight exp(α·|steering|)
    grad_clip: float = 1.0  # max global gradient norm
    augment: bool = True
    cnn_warmup_steps: int = 100  # steps fitting CNN + a temporary linear head on single frames first
    val_fraction: float = 0.2  # share of episodes held out
    patience: int = 6  # epochs without a better val loss before stopping (0 = never stop)
    seed: int = 0
    workers: int = 0  # DataLoader worker processes
    threads: int = 1  # torch intra-op threads per process
    max_frames: int = 0  # cap on training frames per epoch (windows drawn at random); 0 = all
    dagger_rounds: int = 0
    dagger_episodes: int = 4  # rollouts per DAgger round
    dagger_steps: int = 300  # policy steps per rollout
    dagger_beta: float = 0.5  # expert-drives probability in round 1 (β₀; round k uses β₀^k)
    resume: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "--epochs must be ≥ 1"),
            (self.seq_len >= 1, "--seq-len must be ≥ 1"),
            (self.stride >= 0, "--stride must be ≥ 0"),
            (self.batch >= 1, "--batch must be ≥ 1"),
            (self.lr > 0, "--lr must be > 0"),
            (self.cnn_lr_factor >= 0, "cnn_lr_factor must be ≥ 0"),
            (self.alpha >= 0, "alpha must be ≥ 0"),
            (0.0 <= self.val_fraction < 1.0, "--val-fraction must be in [0, 1)"),
            (self.patience >= 0, "--patience must be ≥ 0"),
            (self.workers >= 0, "--workers must be ≥ 0"),
            (self.threads >= 1, "--threads must be ≥ 1"),
            (self.max_frames >= 0, "--max-frames must be ≥ 0"),
            (self.cnn_warmup_steps >= 0, "--cnn-warmup-steps must be ≥ 0"),
            (self.dagger_rounds >= 0, "--dagger-rounds must be ≥ 0"),
            (self.dagger_episodes >= 1, "--dagger-episodes must be ≥ 1"),
            (self.dagger_steps >= 2, "--dagger-steps must be ≥ 2"),
            (0.0 <= self.dagger_beta <= 1.0, "--dagger-beta must be in [0, 1]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)

    @property
    def window_stride(self) -> int:
        return self.stride or max(1, self.seq_len // 2)


# Settings that may differ on --resume (they change neither the data nor the optimisation).
RESUMABLE_CHANGES = ("epochs", "patience", "workers", "threads", "dagger_rounds", "resume", "data", "out")


@dataclass
class TrainResult:
    run_dir: Path
    best_val_loss: float
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------
# distributed helpers
# ----------------------------------------------------------------------------------------
@dataclass
class Dist:
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
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
        created = True
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), created=created)


# ----------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------
def _looks_pickled(path: Path) -> bool:
    """True for a pickle or a torch.save zip (we never unpickle; we only read the magic)."""
    if path.suffix in {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"}:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head[:1] == b"\x80" or head == b"PK\x03\x04"


def _reject_pickle(path: Path, what: str) -> None:
    if path.is_file() and _looks_pickled(path):
        raise UserError(
            f"{path} is a pickled PyTorch/pickle file; liquid-drive never unpickles (it can run "
            f"arbitrary code). {what}"
        )


def open_dataset(root: str | Path):
    """Open and verify a recorded dataset, with a clear error for anything else."""
    from driving import dataset as ds

    path = Path(root)
    _reject_pickle(path, "--data takes a dataset directory written by `driving collect`.")
    if not path.exists():
        raise UserError(f"dataset {path} does not exist; record one with `driving collect --out {path}`")
    if not path.is_dir():
        raise UserError(f"dataset {path} is not a directory; --data takes a dataset written by `driving collect`")
    try:
        report = ds.verify(path)
    except ValueError as exc:
        raise UserError(f"dataset {path} failed verification: {exc}") from exc
    if report.problems:
        shown = "; ".join(report.problems[:3]) + (" ..." if len(report.problems) > 3 else "")
        raise UserError(
            f"dataset {path} failed verification ({len(report.problems)} problem(s): {shown}); "
            f"run `driving dataset verify {path}` and re-record or drop the damaged episodes"
        )
    dataset = ds.Dataset(path)
    if not dataset.episodes:
        raise UserError(f"dataset {path} has no episodes; record some with `driving collect --out {path}`")
    return dataset


def dataset_fingerprint(dataset, episodes: int | None = None) -> str:
    """SHA-256 of the dataset's episode index (its first `episodes` entries), as hex.

    The index holds each episode's name, length and metadata (seed, source, recording time,
    steering statistics), so any re-recorded, dropped or edited episode changes it.
    """
    index = [
        {"name": e.name, "length": int(e.length), "meta": e.meta}
        for e in list(dataset.episodes)[: episodes if episodes is not None else None]
    ]
    blob = json.dumps(index, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def check_policy_name(name: str) -> None:
    from policies.factory import POLICY_NAMES

    if name not in POLICY_NAMES:
        raise UserError(f"unknown policy {name!r}; choose one of: {', '.join(POLICY_NAMES)}")


# ----------------------------------------------------------------------------------------
# atomic files
# ----------------------------------------------------------------------------------------
def _atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clean_temp_files(run_dir: Path) -> None:
    """Remove temp files a killed run may have left (the real files were never touched)."""
    for p in list(run_dir.glob(".*.tmp")) + list((run_dir / STATE_DIR).glob(".*.tmp")):
        p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------
# training state: weights + Adam moments + RNG + counters in one safetensors file
# ----------------------------------------------------------------------------------------
def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"optim/{idx}/{key}"] = t.detach().clone().contiguous()
    return tensors, sd["param_groups"]


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        if not name.startswith("optim/"):
            continue
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = t
    current = opt.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise UserError("the saved optimizer state does not match this policy's parameters; start a new --out")
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_state(
    run_dir: Path, policy: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, state: dict,
    best: tuple[dict[str, torch.Tensor], dict] | None,
) -> None:
    """Write RUN/last/state.safetensors: everything needed to continue, in one atomic file.

    `best` = (state_dict, checkpoint config) of the best epoch so far, kept here too so that
    a kill in the middle of writing RUN/model.safetensors + config.json is repaired on resume.
    """
    from safetensors.torch import save

    tensors = {f"model/{k}": v.detach().clone().contiguous() for k, v in policy.state_dict().items()}
    opt_tensors, groups = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    meta = {
        "format": "liquid-drive-train-state",
        "format_version": "1",
        "state": json.dumps(state, default=_json_default),
        "config": json.dumps(asdict(cfg)),
        "optimizer_groups": json.dumps(groups),
    }
    if best is not None:
        tensors.update({f"best/{k}": v.detach().clone().contiguous() for k, v in best[0].items()})
        meta["best_config"] = json.dumps(best[1], default=_json_default)
    _atomic_bytes(run_dir / STATE_DIR / STATE_FILE, save(tensors, metadata=meta))


@dataclass
class SavedState:
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    config: dict[str, Any]
    optimizer_groups: list
    best_config: dict[str, Any] | None

    def prefixed(self, prefix: str) -> dict[str, torch.Tensor]:
        n = len(prefix)
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def load_state(run_dir: Path) -> SavedState:
    """Read RUN/last/state.safetensors (never unpickles), or a clear UserError."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = run_dir / STATE_DIR / STATE_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "liquid-drive-train-state":
            raise ValueError("not a liquid-drive training state")
        return SavedState(
            tensors=load_file(str(path)),
            state=json.loads(meta["state"]),
            config=json.loads(meta["config"]),
            optimizer_groups=json.loads(meta["optimizer_groups"]),
            best_config=json.loads(meta["best_config"]) if "best_config" in meta else None,
        )
    except Exception as exc:  # safetensors raises its own error types
        raise UserError(f"{path} is not a valid training state ({exc}); start a new --out") from exc


def _seed_everything(cfg: TrainConfig, rnd: int, epoch: int, rank: int) -> torch.Generator:
    """Seed the global RNG and return a generator for this (round, epoch, rank)."""
    seed = (cfg.seed * 1_000_003 + rnd * 10_007 + epoch * 101 + rank) % (2**63 - 1)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------
# the model, loss and optimizer
# ----------------------------------------------------------------------------------------
def weighted_mse(pred: torch.Tensor, target: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean(exp(α|y|)·(ŷ−y)²), plain MSE) — the paper's loss and an interpretable twin."""
    se = (pred - target).square()
    w = torch.exp(alpha * target.abs())
    return (w * se).mean(), se.mean().detach()


def make_optimizer(policy: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam with the CNN in its own parameter group at a lower learning rate."""
    cnn_params = list(policy.cnn.parameters()) if getattr(policy, "cnn", None) is not None else []
    cnn_ids = {id(p) for p in cnn_params}
    rest = [p for p in policy.parameters() if id(p) not in cnn_ids]
    groups = []
    if rest:
        groups.append({"params": rest, "lr": cfg.lr, "name": "core"})
    if cnn_params:
        groups.append({"params": cnn_params, "lr": cfg.lr * cfg.cnn_lr_factor, "name": "cnn"})
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _forward(model: nn.Module, policy: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    timespans = batch["dt"].float() if getattr(policy, "uses_time", False) else None
    steering, _ = model(batch["image"], None, timespans)
    return steering


def _final_linear(policy: nn.Module) -> nn.Linear | None:
    readout = getattr(policy, "readout", None)
    if isinstance(readout, nn.Linear):
        return readout
    out = getattr(readout, "out", None)
    return out if isinstance(out, nn.Linear) else None


@torch.no_grad()
def init_output_bias(policy: nn.Module, cfg: TrainConfig, dataset) -> float:
    """Shift the readout bias so the untrained policy predicts the mean training steering.

    Racetracks turn mostly one way, so the mean label is far from 0 while a fresh policy's
    output sits anywhere in (−1, 1); without this the first epoch is spent learning a
    constant. Returns the mean label. Uses the training episodes only.
    """
    from driving.loader import split_episodes

    final = _final_linear(policy)
    if final is None or final.bias is None:
        return float("nan")
    names = [e.name for e in dataset.episodes]
    train_idx, _ = split_episodes(names, cfg.val_fraction, cfg.seed)
    labels = np.concatenate([dataset.steps(i, "steering") for i in train_idx])
    target = float(np.clip(labels.mean(), -0.95, 0.95))
    # the mean output over training-length windows from the zero state, as training sees them
    windows = [i for i in train_idx if dataset.episodes[i].length >= cfg.seq_len][:8]
    if not windows:
        return target
    frames = torch.from_numpy(np.stack([dataset.frames(i, 0, cfg.seq_len) for i in windows]))
    dt = torch.from_numpy(np.stack([dataset.steps(i, "dt_s")[: cfg.seq_len] for i in windows]).astype(np.float32))
    was_training = policy.training
    policy.eval()
    pred, _ = policy(frames, None, dt.clamp(min=1e-3) if getattr(policy, "uses_time", False) else None)
    policy.train(was_training)
    current = float(pred.mean().clamp(-0.95, 0.95))
    final.bias += math.atanh(target) - math.atanh(current)
    return target


def warm_up_cnn(policy: nn.Module, cfg: TrainConfig, dataset) -> float | None:
    """Fit the perception CNN with a temporary linear steering head on single frames.

    Why: a fresh CNN's 32 features carry little steering signal, and the sparse NCP (three
    layers of 19 neurons between features and motor) passes too weak a gradient to build it
    quickly: measured on 12 racetrack drives, NCP-CfC behaviour cloning sat on the "predict
    the mean" plateau (val MSE = label variance) for 200+ steps at lr 3e-3 and 1e-2, while
    after 100 warm-up steps it reached a tenth of the variance within 50 steps
    (docs/training.md). The head is thrown away; every weight of the policy is then trained
    end to end as before. Deterministic (seeded), identical on every DDP rank. Returns the
    last warm-up loss, or None when skipped (feed-forward `cnn` policy, 0 steps).
    """
    from driving.loader import WindowDataset

    cnn = getattr(policy, "cnn", None)
    if cfg.cnn_warmup_steps <= 0 or cnn is None or getattr(policy, "core", None) is None:
        return None
    windows = WindowDataset(cfg.data, seq_len=cfg.seq_len, split="train",
                            val_fraction=cfg.val_fraction, seed=cfg.seed)
    if len(windows) == 0:
        return None
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + 17)
    head = nn.Linear(cnn.output_dim, 1)
    with torch.no_grad():
        head.weight.normal_(0.0, 1.0 / math.sqrt(cnn.output_dim), generator=gen)
        head.bias.zero_()
    opt = torch.optim.Adam([*cnn.parameters(), *head.parameters()], lr=cfg.lr)
    loss = torch.zeros(())
    # 64 frames a step whatever --batch is: under torchrun every rank runs this same warm-up
    # on the whole training split, so a 2-process run starts where a 1-process run does.
    per_step = WARMUP_FRAMES_PER_STEP
    from tqdm import tqdm

    for _ in tqdm(range(cfg.cnn_warmup_steps), desc="CNN warm-up", unit="step", leave=False,
                  disable=not sys.stderr.isatty()):
        picks = torch.randint(0, len(windows), (per_step,), generator=gen).tolist()
        offsets = torch.randint(0, cfg.seq_len, (per_step,), generator=gen).tolist()
        items = [windows[i] for i in picks]
        images = torch.from_numpy(np.stack([it["image"][o] for it, o in zip(items, offsets)]))
        labels = torch.tensor([float(it["steering"][o]) for it, o in zip(items, offsets)])
        if cfg.augment:
            images = augment_windows(images[:, None], gen)[:, 0]
        pred = torch.tanh(head(cnn(images))).squeeze(-1)
        loss = weighted_mse(pred, labels, cfg.alpha)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


def policy_description(policy: nn.Module) -> dict[str, Any]:
    core = getattr(policy, "core", None)
    desc: dict[str, Any] = {
        "parameters": int(sum(p.numel() for p in policy.parameters())),
        "cnn_parameters": int(sum(p.numel() for p in policy.cnn.parameters())) if getattr(policy, "cnn", None) is not None else 0,
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
# data
# ----------------------------------------------------------------------------------------
def _loaders(cfg: TrainConfig, dist: Dist, data_root: Path):
    from torch.utils.data import DataLoader, DistributedSampler

    from driving.loader import WindowDataset

    def make(split: str) -> WindowDataset:
        return WindowDataset(
            data_root, seq_len=cfg.seq_len, split=split, val_fraction=cfg.val_fraction,
            seed=cfg.seed, stride=cfg.window_stride,
        )

    train_ds = make("train")
    if len(train_ds) == 0:
        raise UserError(
            f"dataset {data_root} has no training window of {cfg.seq_len} frames; record longer "
            "episodes or lower --seq-len"
        )
    val_ds = make("val") if cfg.val_fraction > 0 else None
    if val_ds is not None and len(val_ds) == 0:
        val_ds = None
    train_sampler = DistributedSampler(train_ds, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed)
    train_loader = DataLoader(train_ds, batch_size=cfg.batch, sampler=train_sampler, num_workers=cfg.workers)
    val_loader = None
    if val_ds is not None:
        val_sampler = DistributedSampler(val_ds, num_replicas=dist.world, rank=dist.rank, shuffle=False)
        val_loader = DataLoader(val_ds, batch_size=cfg.batch, sampler=val_sampler, num_workers=cfg.workers)
    return train_loader, val_loader


def _as_tensors(batch: dict) -> dict[str, torch.Tensor]:
    return {k: (v if torch.is_tensor(v) else torch.as_tensor(np.asarray(v))) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------
# one epoch of training, one pass of validation
# ----------------------------------------------------------------------------------------
def train_epoch(
    model: nn.Module, policy: nn.Module, loader, opt: torch.optim.Optimizer, cfg: TrainConfig,
    gen: torch.Generator, dist: Dist, desc: str,
) -> dict[str, float]:
    from tqdm import tqdm

    model.train()
    steps_cap = math.inf
    if cfg.max_frames:
        steps_cap = max(1, math.ceil(cfg.max_frames / (cfg.batch * cfg.seq_len * dist.world)))
    total = int(min(len(loader), steps_cap))
    sums = [0.0, 0.0, 0.0]  # weighted loss·n, mse·n, n frames (this rank)
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="step", disable=not dist.main or None, leave=False, file=sys.stderr)
    for i, raw in enumerate(loader):
        if i >= total:
            break
        batch = _as_tensors(raw)
        if cfg.augment:
            batch["image"] = augment_windows(batch["image"], gen)
        pred = _forward(model, policy, batch)
        loss, mse = weighted_mse(pred, batch["steering"].float(), cfg.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        n = pred.numel()
        sums[0] += float(loss.detach()) * n
        sums[1] += float(mse) * n
        sums[2] += n
        fps = sums[2] * dist.world / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}", fps=f"{fps:.0f}")
        bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - t0
    loss_sum, mse_sum, frames = dist.all_sum(sums)
    return {
        "train_loss": loss_sum / max(frames, 1),
        "train_mse": mse_sum / max(frames, 1),
        "frames": int(frames),
        "seconds": elapsed,
        "frames_per_s": frames / max(elapsed, 1e-9),
    }


@torch.no_grad()
def validate(policy: nn.Module, loader, cfg: TrainConfig, dist: Dist) -> dict[str, float]:
    """Mean losses over the validation windows (all processes' shares summed)."""
    policy.eval()
    sums = [0.0, 0.0, 0.0]
    if loader is not None:
        for raw in loader:
            batch = _as_tensors(raw)
            pred = _forward(policy, policy, batch)  # no DDP wrapper needed without gradients
            loss, mse = weighted_mse(pred, batch["steering"].float(), cfg.alpha)
            n = pred.numel()
            sums[0] += float(loss) * n
            sums[1] += float(mse) * n
            sums[2] += n
    loss_sum, mse_sum, frames = dist.all_sum(sums)
    if frames == 0:
        return {"val_loss": float("nan"), "val_mse": float("nan")}
    return {"val_loss": loss_sum / frames, "val_mse": mse_sum / frames}


# ----------------------------------------------------------------------------------------
# run directory: checks, config, metrics
# ----------------------------------------------------------------------------------------
def _prepare_run_dir(cfg: TrainConfig) -> tuple[Path, bool]:
    """Return (run_dir, resuming). Refuses to overwrite anything that exists."""
    run_dir = Path(cfg.out)
    _reject_pickle(run_dir, "--out takes a run directory (model.safetensors + config.json).")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a directory; choose a new --out")
    has_state = (run_dir / STATE_DIR / STATE_FILE).is_file()
    non_empty = run_dir.is_dir() and any(p for p in run_dir.iterdir() if not p.name.startswith(".") or p.suffix != ".tmp")
    if not cfg.resume:
        if non_empty:
            raise UserError(
                f"run directory {run_dir} already exists and is not empty; pass --resume to continue "
                "it, or choose a new --out (nothing was overwritten)"
            )
        return run_dir, False
    if has_state:
        return run_dir, True
    if non_empty:
        pickles = sorted(p.name for p in run_dir.iterdir() if p.is_file() and _looks_pickled(p))
        hint = f" (it holds pickled files {pickles}, which liquid-drive never loads)" if pickles else ""
        raise UserError(
            f"--resume: {run_dir} has no training state ({STATE_DIR}/{STATE_FILE}){hint}; it was not "
            "written by `driving train`, or was written by an older version. Choose a new --out."
        )
    return run_dir, False  # --resume on a run that never started: start it


def _merge_resume_config(cfg: TrainConfig, saved: dict, explicit: set[str]) -> TrainConfig:
    """The saved settings win; explicitly given settings must agree unless they are harmless."""
    if cfg.policy != saved.get("policy") and "policy" in explicit:
        raise UserError(
            f"--resume: {cfg.out} was trained with policy {saved.get('policy')!r}, not {cfg.policy!r}; "
            "drop --policy or choose a new --out"
        )
    merged = dict(saved)
    known = {f.name for f in fields(TrainConfig)}
    merged = {k: v for k, v in merged.items() if k in known}
    for key in explicit:
        if key not in known:
            continue
        new = getattr(cfg, key)
        if key in RESUMABLE_CHANGES:
            merged[key] = new
        elif merged.get(key) != new and key != "policy":
            raise UserError(
                f"--resume: {cfg.out} was trained with {key}={merged.get(key)!r}, not {new!r}; resume "
                "keeps the run's settings (drop the option) or choose a new --out"
            )
    merged["resume"] = True
    merged["out"] = cfg.out
    if "data" not in explicit:
        merged["data"] = saved.get("data", cfg.data)
    return TrainConfig(**merged)


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    keys = list(history[0].keys())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    _atomic_bytes(run_dir / METRICS_FILE, buf.getvalue().encode())


def _tensorboard(run_dir: Path, dist: Dist):
    if not dist.main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: metrics.csv is the record
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _checkpoint_config(cfg: TrainConfig, policy: nn.Module, dataset, extra: dict) -> dict:
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
        "dataset": {
            "path": str(Path(cfg.data).resolve()),
            "fingerprint": dataset_fingerprint(dataset),
            "episodes": len(dataset.episodes),
            "frames": int(dataset.num_frames),
            "env_id": dataset.attrs.get("env_id"),
        },
        "torch_version": torch.__version__,
        **extra,
    }


# ----------------------------------------------------------------------------------------
# closed loop: roll a policy out (DAgger data, and the simplest evaluation)
# ----------------------------------------------------------------------------------------
@dataclass
class RolloutStats:
    """What happened in one closed-loop drive."""

    steps: int = 0
    distance_m: float = 0.0
    time_s: float = 0.0
    off_road_events: int = 0  # times the car left the road (then put back when recover=True)
    crashes: int = 0  # steps with info["crashed"] (off-road or collision)
    mean_abs_cross_track_m: float = 0.0
    max_abs_cross_track_m: float = 0.0
    laps: float = 0.0  # lap progress accumulated over the drive (1.0 = one full lap)


@torch.no_grad()
def rollout(
    policy: nn.Module, env, steps: int, *, seed: int | None = None, recover: bool = True,
    expert_prob: float = 0.0, rng: np.random.Generator | None = None, record: bool = False,
    save_depth: bool = False, progress: bool = False,
) -> tuple[RolloutStats, dict[str, list] | None]:
    """Drive `env` for up to `steps` policy steps with `policy.step`, its state carried along.

    With `expert_prob` > 0 the expert's steering is executed instead of the policy's on that
    share of steps (DAgger's β mixture). Leaving the road counts one off-road event; with
    `recover` the car is then put back on the lane centre (`env.unwrapped.recover()`) and the
    drive goes on with the policy's state kept, as the paper counted manual recoveries.
    With `record`, also returns every frame the car saw with the expert's steering for it
    and the per-step signals of the dataset schema (DAgger data).
    """
    from tqdm import tqdm

    rng = rng or np.random.default_rng(0 if seed is None else seed)
    obs, info = env.reset(seed=seed)
    h = None
    dt = float(info.get("dt_s") or 0.0) or None
    stats = RolloutStats()
    cte_sum = 0.0
    last_progress = info.get("lap_progress")
    was_on_road = bool(info.get("on_road", True))
    rec: dict[str, list] | None = {} if record else None
    from driving.dataset import OPTIONAL_STEPS

    optional = [k for k in OPTIONAL_STEPS if k in info]  # as `driving collect` stores them
    policy.eval()
    for _ in tqdm(range(steps), desc="rollout", unit="step", disable=not progress, leave=False, file=sys.stderr):
        steer, h = policy.step(obs["image"], h, dt=dt)
        action = float(np.clip(float(torch.as_tensor(steer).reshape(-1)[0]), -1.0, 1.0))
        expert = float(info["expert_steering"]) if "expert_steering" in info else float("nan")
        if expert_prob > 0 and rng.random() < expert_prob:
            action = expert
        if rec is not None:
            _record_step(rec, obs, info, expert, action, dt, save_depth, optional)
        obs, _, terminated, truncated, info = env.step(np.array([action], dtype=np.float32))
        stats.steps += 1
        dt = float(info.get("dt_s") or 0.0) or dt
        stats.time_s += float(dt or 0.0)
        cte = abs(float(info.get("cross_track_m", 0.0)))
        cte_sum += cte
        stats.max_abs_cross_track_m = max(stats.max_abs_cross_track_m, cte)
        stats.distance_m = float(info.get("distance_m", stats.distance_m))
        stats.crashes += int(bool(info.get("crashed", False)))
        progress_now = info.get("lap_progress")
        if progress_now is not None and last_progress is not None:
            delta = float(progress_now) - float(last_progress)
            if delta < -0.5:  # crossed the start line
                delta += 1.0
            if abs(delta) < 0.5:
                stats.laps += delta
        last_progress = progress_now
        on_road = bool(info.get("on_road", True))
        if was_on_road and not on_road:
            stats.off_road_events += 1
        was_on_road = on_road
        if not on_road and recover:
            obs, info = env.unwrapped.recover()
            last_progress = info.get("lap_progress", last_progress)
            was_on_road = bool(info.get("on_road", True))
        if terminated or truncated:
            break
    stats.mean_abs_cross_track_m = cte_sum / max(stats.steps, 1)
    return stats, rec


def _record_step(rec: dict[str, list], obs: dict, info: dict, expert: float, action: float,
                 dt: float | None, save_depth: bool, optional: list[str]) -> None:
    """One row of DAgger data: the frame seen, the expert's label and the executed action."""
    rec.setdefault("image", []).append(np.asarray(obs["image"], dtype=np.uint8))
    if save_depth:
        rec.setdefault("depth", []).append(np.asarray(info["depth"], dtype=np.float32))
    row = {
        "steering": expert,
        "action": action,
        "speed": float(np.asarray(obs["speed"]).reshape(-1)[0]),
        "time_s": float(info.get("time_s", 0.0)),
        "dt_s": float(dt or info.get("dt_s") or 0.1),
    }
    for key in optional:
        row[key] = info.get(key, 0)
    for key, val in row.items():
        rec.setdefault(key, []).append(val)


# ----------------------------------------------------------------------------------------
# DAgger: collect expert-labelled rollouts of the current policy into the dataset
# ----------------------------------------------------------------------------------------
def dagger_collect(policy: nn.Module, dataset, cfg: TrainConfig, rnd: int, run_id: str) -> int:
    """Append this round's missing DAgger episodes (a resumed round only adds the rest)."""
    import gymnasium as gym
    from tqdm import tqdm

    import envs  # noqa: F401  (registers the liquid_drive/* envs)
    from driving.dataset import DatasetWriter

    env_id = dataset.attrs.get("env_id")
    if not env_id:
        raise UserError("DAgger needs the env the dataset was recorded in, and this dataset names none")
    env_config = dict(dataset.attrs.get("env_config") or {})
    writer = DatasetWriter(cfg.data, env_id, env_config, dataset.camera,
                           save_depth=bool(dataset.attrs.get("save_depth")),
                           chunk_frames=int(dataset.attrs.get("chunk_frames", 16)),
                           codec=dataset.attrs.get("codec"))
    done = {int(e.meta.get("episode_in_round", -1)) for e in dataset.episodes
            if e.meta.get("source") == "dagger" and e.meta.get("run") == run_id and e.meta.get("round") == rnd}
    beta = cfg.dagger_beta**rnd
    try:
        env = gym.make(env_id, **env_config)
    except gym.error.Error as exc:
        raise UserError(f"DAgger cannot create the dataset's env {env_id!r}: {exc}") from exc
    added = 0
    try:
        todo = [i for i in range(cfg.dagger_episodes) if i not in done]
        for i in tqdm(todo, desc=f"DAgger round {rnd}: rollouts", unit="episode", file=sys.stderr):
            seed = 1_000_000 + cfg.seed * 10_007 + rnd * 101 + i
            stats, rec = rollout(policy, env, cfg.dagger_steps, seed=seed, expert_prob=beta,
                                 rng=np.random.default_rng(seed), record=True,
                                 save_depth=writer.save_depth)
            assert rec is not None
            frames = np.stack(rec.pop("image"))
            depth = np.stack(rec.pop("depth")) if "depth" in rec else None
            steps = {k: np.asarray(v) for k, v in rec.items()}
            meta = {"source": "dagger", "env_id": env_id, "seed": seed, "run": run_id, "round": rnd,
                    "episode_in_round": i, "beta": beta, "policy": cfg.policy,
                    "off_road_events": stats.off_road_events}
            writer.append_episode(frames, steps, meta, depth=depth)
            added += 1
    finally:
        env.close()
    return added


# ----------------------------------------------------------------------------------------
# the training run
# ----------------------------------------------------------------------------------------
def train(cfg: TrainConfig, explicit: set[str] | None = None) -> TrainResult:
    """Train (or resume) a run; see the module docstring.

    `explicit` names the options the user gave (the CLI's), which on --resume must agree with
    the run's saved settings; without it every field of `cfg` counts as given.
    """
    explicit = {f.name for f in fields(TrainConfig)} - {"resume"} if explicit is None else explicit
    dist = init_distributed()
    try:
        return _train(cfg, explicit, dist)
    finally:
        if dist.created and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, explicit: set[str], dist: Dist) -> TrainResult:
    from policies.checkpoint import save_checkpoint
    from policies.factory import build_policy

    torch.set_num_threads(cfg.threads)
    run_dir, resuming = _prepare_run_dir(cfg)
    saved = load_state(run_dir) if resuming else None
    if saved is not None:
        cfg = _merge_resume_config(cfg, saved.config, explicit)
    check_policy_name(cfg.policy)
    dataset = open_dataset(cfg.data)

    policy = build_policy(cfg.policy, image_hw=tuple(dataset.image_shape[:2]), seed=cfg.seed)
    opt = make_optimizer(policy, cfg)
    best: tuple[dict[str, torch.Tensor], dict] | None = None
    state: dict[str, Any] = {
        "round": 0, "epoch": 0, "best_val": None, "best_epoch": None, "since_best": 0,
        "stopped": False, "history": [], "frames_total": 0,
        "run_id": f"{cfg.seed}-{int(time.time())}-{os.getpid()}",
        "dataset_episodes": len(dataset.episodes), "dataset_fingerprint": dataset_fingerprint(dataset),
        "dagger_collected": False,
    }
    if saved is not None:
        state = saved.state
        _check_dataset_unchanged(dataset, state, cfg.data)
        try:
            policy.load_state_dict(saved.prefixed("model/"), strict=True)
            if saved.best_config is not None:
                best = (saved.prefixed("best/"), saved.best_config)
                policy_best = build_policy(cfg.policy, image_hw=tuple(dataset.image_shape[:2]), seed=cfg.seed)
                policy_best.load_state_dict(best[0], strict=True)
        except RuntimeError as exc:
            raise UserError(
                f"--resume: the saved weights in {run_dir} do not match policy {cfg.policy!r} "
                f"({str(exc).splitlines()[0]}); start a new --out"
            ) from exc
        _load_optimizer(opt, saved.tensors, saved.optimizer_groups)
        torch.set_rng_state(saved.tensors["rng/torch"])
        if dist.main and best is not None:
            _repair_best_checkpoint(run_dir, policy_best, best[1])
    else:
        warmup_loss = warm_up_cnn(policy, cfg, dataset)
        if warmup_loss is not None and dist.main:
            print(f"CNN warm-up: {cfg.cnn_warmup_steps} steps on single frames, "
                  f"loss {warmup_loss:.4f}", file=sys.stderr)
        init_output_bias(policy, cfg, dataset)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _clean_temp_files(run_dir)
        if saved is None:  # record the run before the first epoch, so that it can be resumed
            save_state(run_dir, policy, opt, cfg, state, best)
    dist.barrier()

    model: nn.Module = nn.parallel.DistributedDataParallel(policy) if dist.world > 1 else policy
    tb = _tensorboard(run_dir, dist)
    while state["round"] <= cfg.dagger_rounds:
        rnd = state["round"]
        if rnd > 0 and not state["dagger_collected"]:
            # DAgger: the best policy of the previous round drives, the expert labels
            if best is not None:
                policy.load_state_dict(best[0])
            if dist.main:
                dagger_collect(policy, dataset, cfg, rnd, state["run_id"])
            dist.barrier()
            dataset = open_dataset(cfg.data)
            opt = make_optimizer(policy, cfg)  # fresh moments for the grown dataset
            best = None
            state.update(dagger_collected=True, dataset_episodes=len(dataset.episodes),
                         dataset_fingerprint=dataset_fingerprint(dataset))
            if dist.main:
                save_state(run_dir, policy, opt, cfg, state, best)
        train_loader, val_loader = _loaders(cfg, dist, Path(cfg.data))

        while state["epoch"] < cfg.epochs and not state["stopped"]:
            epoch = state["epoch"]
            gen = _seed_everything(cfg, rnd, epoch, dist.rank)
            train_loader.sampler.set_epoch(rnd * 100_000 + epoch)
            desc = f"epoch {epoch + 1}/{cfg.epochs}" + (f" DAgger {rnd}" if rnd else "")
            row: dict[str, Any] = {"round": rnd, "epoch": epoch + 1}
            row.update(train_epoch(model, policy, train_loader, opt, cfg, gen, dist, desc))
            row.update(validate(policy, val_loader, cfg, dist))
            state["frames_total"] += row["frames"]
            score = row["val_loss"] if not math.isnan(row["val_loss"]) else row["train_loss"]
            improved = state["best_val"] is None or score < state["best_val"]
            row["best"] = int(improved)
            if improved:
                state.update(best_val=score, best_epoch=epoch + 1, since_best=0)
                info = {"best": {"round": rnd, "epoch": epoch + 1, "val_loss": row["val_loss"],
                                 "val_mse": row["val_mse"], "train_loss": row["train_loss"]}}
                best = ({k: v.detach().clone() for k, v in policy.state_dict().items()},
                        _checkpoint_config(cfg, policy, dataset, info))
            else:
                state["since_best"] += 1
            state["epoch"] = epoch + 1
            state["history"].append(row)
            if cfg.patience and state["since_best"] >= cfg.patience:
                state["stopped"] = True
            if dist.main:
                if improved:
                    save_checkpoint(run_dir, policy, best[1])
                _write_metrics(run_dir, state["history"])
                save_state(run_dir, policy, opt, cfg, state, best)
                _log_epoch(row, improved, tb, len(state["history"]))
            dist.barrier()
        if rnd >= cfg.dagger_rounds:
            break  # the state stays at this round: --resume --epochs N can extend it
        # the next DAgger round starts from this round's best weights, with fresh counters
        state.update(round=rnd + 1, epoch=0, best_val=None, best_epoch=None, since_best=0,
                     stopped=False, dagger_collected=False)
        if dist.main:
            save_state(run_dir, policy, opt, cfg, state, best)
        dist.barrier()
    if tb is not None:
        tb.close()
    vals = [r["val_loss"] for r in state["history"] if r["round"] == cfg.dagger_rounds]
    best_val = min((v for v in vals if not math.isnan(v)), default=float("nan"))
    return TrainResult(run_dir=run_dir, best_val_loss=best_val, epochs_run=len(state["history"]),
                       history=state["history"])


def _log_epoch(row: dict[str, Any], improved: bool, tb, step: int) -> None:
    if tb is not None:
        for key in ("train_loss", "train_mse", "val_loss", "val_mse", "frames_per_s"):
            tb.add_scalar(key, row[key], step)
    print(
        f"round {row['round']} epoch {row['epoch']}: train loss {row['train_loss']:.4f} "
        f"(mse {row['train_mse']:.4f})  val loss {row['val_loss']:.4f} (mse {row['val_mse']:.4f})  "
        f"{row['frames_per_s']:.0f} frames/s" + ("  *best" if improved else ""),
        file=sys.stderr,
    )


def _repair_best_checkpoint(run_dir: Path, policy_best: nn.Module, config: dict) -> None:
    """Rewrite RUN/model.safetensors + config.json from the training state if a kill tore them."""
    from policies.checkpoint import load_policy, save_checkpoint

    try:
        loaded, _ = load_policy(run_dir)
        ok = all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), policy_best.state_dict().values()))
    except ValueError:
        ok = False
    if not ok:
        save_checkpoint(run_dir, policy_best, config)


def _check_dataset_unchanged(dataset, state: dict, data_root: str) -> None:
    """On resume the data must be what the run saw, plus this run's own DAgger episodes."""
    n = int(state.get("dataset_episodes", 0))
    if len(dataset.episodes) < n or dataset_fingerprint(dataset, n) != state.get("dataset_fingerprint"):
        raise UserError(
            f"--resume: dataset {data_root} changed since this run was started (its episode index "
            "no longer matches the run's fingerprint); train a new --out on the new data"
        )
    for ep in dataset.episodes[n:]:
        if not (ep.meta.get("source") == "dagger" and ep.meta.get("run") == state.get("run_id")):
            raise UserError(
                f"--resume: dataset {data_root} gained episodes that this run did not record "
                f"({ep.name}); train a new --out on the new data"
            )
