"""Imitation learning for lane keeping: behaviour cloning on windows, then DAgger.

Read top to bottom, this file is the whole algorithm (`train` at the end drives it):

1. **Data.** `driving.loader.WindowDataset` cuts the recorded episodes into windows of
   `seq_len` frames (never across an episode boundary); the validation split is by episode,
   so no road stretch is in both sets.
2. **Behaviour cloning with truncated BPTT**, in one of two schemes (docs/training.md says
   which drives better, measured):
   - *windows from the zero state* (default): each window starts from the zero state; its
     first `burn_in` frames only warm the state up and get no loss (unless the window starts
     the episode, where the zero state is the true one);
   - *stateful* (`stateful=True`): each batch row walks through an episode window after
     window, and the recurrent state is carried (detached) from one window to the next, as
     in closed loop, where the agent drives hundreds of steps on one state (a row that
     starts mid-episode from the zero state gets the burn-in on its first window).
   Liquid cores (LTC, CfC) receive the real elapsed time of each frame (`dt`).
3. **The paper's recipe** (Lechner et al. 2020), the default for every policy:
   loss = mean(exp(α·|y|)·(ŷ − y)²) (steering normalised to [−1, 1]; α = 3 weighs full lock
   e³ ≈ 20× a straight frame), a CNN learning rate of lr·`cnn_lr_factor` (own parameter
   group), named augmentations (`driving.augment`), per-image whitening inside the CNN,
   gradient-norm clipping, Adam. Before end-to-end training the CNN is warmed up on single
   frames and the readout bias is set to the mean label (docs/training.md, "CNN warm-up").
4. **Validation and early stopping** on whole held-out episodes run from the zero state with
   the state carried (as in closed loop); the best epoch's weights are the model
   (`RUN/model.safetensors` + `RUN/config.json`). A non-finite loss stops the run (exit 2)
   and keeps the last good checkpoint; `best` is only ever a finite-loss model.
5. **DAgger** (Ross et al. 2011): roll the best policy out in the simulator (with probability
   β per step the expert drives instead, β = β₀^round), label every visited frame with the
   expert's steering, append those episodes to the dataset (`source="dagger"`), retrain.

Checkpoints and resume: after every epoch the complete training state goes into one file
(`policies.training_state`, written atomically). Randomness is re-seeded at the start of
every epoch from (seed, round, epoch, rank), so a resumed run gives exactly the weights of an
uninterrupted one. Distributed: under `torchrun` each process trains on its shard, DDP
averages gradients over gloo, rank 0 writes everything.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from driving import train_run as runio
from driving.augment import augment_windows, parse_augment
from driving.errors import UserError
from policies import training_state as ts

WARMUP_FRAMES_PER_STEP = 64
VAL_CHUNK = 64  # frames per forward call when validating whole episodes (state carried)
DEVICES = ("cpu", "cuda", "auto")
PRECISIONS = ("fp32", "bf16")


# ----------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Every setting of a training run; stored in `RUN/config.json` under "training"."""

    data: str = ""  # dataset directory (zarr, from `driving collect`); stored absolute
    out: str = ""  # run directory
    policy: str = "ncp-cfc"  # a name of policies.factory.POLICY_NAMES
    epochs: int = 12  # per round (round 0 = behaviour cloning, 1..K = DAgger)
    seq_len: int = 4  # frames per training window (truncated BPTT length); see docs/training.md
    stride: int = 0  # frames between window starts; 0 = (seq_len - burn_in) // 2
    burn_in: int = 0  # leading frames of a window that only warm the state up (no loss)
    stateful: bool = False  # carry the state across consecutive windows of an episode
    batch: int = 16  # windows per step (per process under DDP)
    lr: float = 3e-3  # recurrent core and output head
    cnn_lr_factor: float = 1.0  # the CNN learns at lr · cnn_lr_factor (< 1: the paper's lower CNN rate)
    weight_decay: float = 0.0
    alpha: float = 3.0  # loss weight exp(α·|steering|)
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    augment: str = ",".join(parse_augment("default"))  # names of driving.augment.AUGMENTATIONS
    cnn_warmup_steps: int = 100  # steps fitting CNN + a temporary linear head on single frames first
    val_fraction: float = 0.2  # share of episodes held out
    patience: int = 6  # epochs without a better val loss before stopping (0 = never stop)
    seed: int = 0
    workers: int = 0  # DataLoader worker processes
    threads: int = 1  # torch intra-op threads per process
    max_frames: int = 0  # cap on training frames per epoch (windows drawn at random); 0 = all
    device: str = "cpu"  # cpu | cuda | auto
    precision: str = "fp32"  # fp32 | bf16 (autocast of the CNN; the cores stay fp32)
    dagger_rounds: int = 0
    dagger_episodes: int = 4  # rollouts per DAgger round
    dagger_steps: int = 300  # policy steps per rollout
    dagger_beta: float = 0.5  # expert-drives probability in round 1 (β₀; round k uses β₀^k)
    init_from: str = ""  # fine-tune: a checkpoint (run dir or pretrained:NAME) to start from
    init_cnn_from: str = ""  # a checkpoint whose perception CNN this run starts from
    resume: bool = False

    def __post_init__(self) -> None:
        self.augment = ",".join(parse_augment(self.augment))  # also reads old runs' True/False
        if self.data:
            self.data = os.path.abspath(self.data)  # resume must not depend on the cwd
        for name in ("init_from", "init_cnn_from"):
            value = getattr(self, name)
            if value and not value.startswith("pretrained:"):
                setattr(self, name, os.path.abspath(value))
        if self.init_from and self.init_cnn_from:
            raise UserError("--init-from already brings a CNN: pass --init-from or --init-cnn-from, not both")
        finite = ("lr", "cnn_lr_factor", "weight_decay", "alpha", "grad_clip", "val_fraction", "dagger_beta")
        for name in finite:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"--{name.replace('_', '-')} {value} is not a finite number")
        checks = [
            ("epochs", self.epochs >= 1, "≥ 1"),
            ("seq_len", self.seq_len >= 1, "≥ 1"),
            ("burn_in", 0 <= self.burn_in < self.seq_len, f"in [0, --seq-len - 1] = [0, {self.seq_len - 1}]"),
            ("stride", self.stride >= 0, "≥ 0"),
            ("batch", self.batch >= 1, "≥ 1"),
            ("lr", self.lr > 0, "> 0 (e.g. 0.003)"),
            ("cnn_lr_factor", self.cnn_lr_factor >= 0, "≥ 0"),
            ("weight_decay", self.weight_decay >= 0, "≥ 0 (0 = off)"),
            ("alpha", self.alpha >= 0, "≥ 0"),
            ("grad_clip", self.grad_clip >= 0, "≥ 0 (0 = off)"),
            ("val_fraction", 0.0 <= self.val_fraction < 1.0, "in [0, 1)"),
            ("patience", self.patience >= 0, "≥ 0"),
            ("workers", self.workers >= 0, "≥ 0"),
            ("threads", self.threads >= 1, "≥ 1"),
            ("max_frames", self.max_frames >= 0, "≥ 0"),
            ("cnn_warmup_steps", self.cnn_warmup_steps >= 0, "≥ 0"),
            ("device", self.device in DEVICES, f"one of {', '.join(DEVICES)}"),
            ("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            ("dagger_rounds", self.dagger_rounds >= 0, "≥ 0"),
            ("dagger_episodes", self.dagger_episodes >= 1, "≥ 1"),
            ("dagger_steps", self.dagger_steps >= 2, "≥ 2"),
            ("dagger_beta", 0.0 <= self.dagger_beta <= 1.0, "in [0, 1]"),
        ]
        for name, ok, valid in checks:
            if not ok:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)} is out of range: "
                                f"it must be {valid}")

    @property
    def window_stride(self) -> int:
        if self.stateful:
            return self.seq_len
        return self.stride or max(1, (self.seq_len - self.burn_in) // 2)

    @property
    def augmentations(self) -> tuple[str, ...]:
        return parse_augment(self.augment)


@dataclass
class RunState:
    """Where a run stands: saved after every epoch, restored on --resume."""

    round: int = 0
    epoch: int = 0  # epochs completed in this round
    best_val: float | None = None
    best_epoch: int | None = None
    since_best: int = 0
    stopped: bool = False  # early stopping ended this round
    history: list[dict[str, Any]] = field(default_factory=list)  # the rows of metrics.csv
    frames_total: int = 0
    run_id: str = ""  # names this run's DAgger episodes in the dataset
    dataset_episodes: int = 0
    dataset_fingerprint: str = ""
    dagger_collected: bool = False  # this round's rollouts are in the dataset

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        known = {f.name for f in fields(cls)}
        run = cls(**{k: v for k, v in d.items() if k in known})
        run.history = [ts.nan_from_none(r, ("val_loss", "val_mse", "train_loss", "train_mse"))
                       for r in run.history]
        return run


@dataclass
class TrainResult:
    run_dir: Path
    best_val_loss: float
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------
# the model, loss and optimizer
# ----------------------------------------------------------------------------------------
def weighted_mse(pred: torch.Tensor, target: torch.Tensor, alpha: float,
                 mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean(exp(α|y|)·(ŷ−y)²), plain MSE) over the frames where `mask` is True (all without)."""
    se = (pred - target).square()
    w = torch.exp(alpha * target.abs())
    if mask is None:
        return (w * se).mean(), se.mean().detach()
    m = mask.to(se.dtype)
    n = m.sum().clamp(min=1.0)
    return (w * se * m).sum() / n, ((se * m).sum() / n).detach()


def loss_mask(starts: torch.Tensor, seq_len: int, burn_in: int) -> torch.Tensor | None:
    """(B,T) True where a frame gets loss: after the burn-in, or everywhere in a window that
    starts its episode (the zero state is then the true one). None without burn-in."""
    if burn_in <= 0:
        return None
    t = torch.arange(seq_len)[None, :]
    return (t >= burn_in) | (torch.as_tensor(starts).reshape(-1, 1) == 0)


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


@contextlib.contextmanager
def cnn_autocast(policy: nn.Module, device: torch.device, enabled: bool) -> Iterator[None]:
    """Run the perception CNN under bf16 autocast (its features back in fp32) while the
    recurrent core stays fp32: the CNN is ~99 % of a step and bf16-native CPUs run its
    convolutions faster; the liquid cores' ODE solvers want full precision."""
    cnn = getattr(policy, "cnn", None)
    if not enabled or cnn is None:
        yield
        return
    plain = cnn.forward

    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = plain(*args, **kwargs)
        return out.float()

    cnn.forward = forward
    try:
        yield
    finally:
        del cnn.forward  # back to the class's method


def _forward(model: nn.Module, policy: nn.Module, batch: dict[str, torch.Tensor], h0=None):
    timespans = batch["dt"].float() if getattr(policy, "uses_time", False) else None
    return model(batch["image"], h0, timespans)


def finite_or_stop(value: float, where: str) -> float:
    """Stop the run (exit 2) on a non-finite loss, before anything of it is saved."""
    if not math.isfinite(value):
        raise UserError(f"training diverged: the loss became {value} at {where}; the run keeps its "
                        "last good checkpoint and state. Check the labels (`driving dataset verify`: "
                        "steering must be in [-1, 1]) or lower --lr, then train a new --out")
    return value


def _final_linear(policy: nn.Module) -> nn.Linear | None:
    readout = getattr(policy, "readout", None)
    if isinstance(readout, nn.Linear):
        return readout
    out = getattr(readout, "out", None)
    return out if isinstance(out, nn.Linear) else None


@torch.no_grad()
def init_output_bias(policy: nn.Module, cfg: TrainConfig, dataset, device: torch.device) -> float:
    """Shift the readout bias so the untrained policy predicts the mean training steering.

    Racetracks turn mostly one way, so the mean label is far from 0 while a fresh policy's
    output sits anywhere in (−1, 1); without this the first epoch is spent learning a
    constant. Returns the mean label. Uses the training episodes only.
    """
    from driving.loader import split_episodes

    final = _final_linear(policy)
    if final is None or final.bias is None:
        return float("nan")
    train_idx, _ = split_episodes([e.name for e in dataset.episodes], cfg.val_fraction, cfg.seed)
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
    pred, _ = policy(frames.to(device), None, dt.clamp(min=1e-3) if getattr(policy, "uses_time", False) else None)
    policy.train(was_training)
    current = float(pred.mean().clamp(-0.95, 0.95))
    if math.isfinite(current):
        final.bias += math.atanh(target) - math.atanh(current)
    return target


def warm_up_cnn(policy: nn.Module, cfg: TrainConfig, dataset, device: torch.device) -> float | None:
    """Fit the perception CNN with a temporary linear steering head on single frames.

    Why: a fresh CNN's 32 features carry little steering signal, and the sparse NCP passes
    too weak a gradient to build it quickly (measured: NCP-CfC sat on the "predict the mean"
    plateau for 200+ steps without it, reached a tenth of the label variance within 50 steps
    with it; docs/training.md). The head is thrown away. Deterministic (seeded), identical on
    every DDP rank. Returns the last warm-up loss, or None when skipped.
    """
    from tqdm import tqdm

    from driving.loader import WindowDataset

    cnn = getattr(policy, "cnn", None)
    if cfg.cnn_warmup_steps <= 0 or cnn is None or getattr(policy, "core", None) is None:
        return None
    windows = WindowDataset(cfg.data, seq_len=cfg.seq_len, split="train", val_fraction=cfg.val_fraction, seed=cfg.seed)
    if len(windows) == 0:
        return None
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + 17)
    head = nn.Linear(cnn.output_dim, 1)
    with torch.no_grad():
        head.weight.normal_(0.0, 1.0 / math.sqrt(cnn.output_dim), generator=gen)
        head.bias.zero_()
    head = head.to(device)
    opt = torch.optim.Adam([*cnn.parameters(), *head.parameters()], lr=cfg.lr)
    loss = torch.zeros(())
    # 64 frames a step whatever --batch is: under torchrun every rank runs this same warm-up
    # on the whole training split, so a 2-process run starts where a 1-process run does.
    per_step = WARMUP_FRAMES_PER_STEP
    for step in tqdm(range(cfg.cnn_warmup_steps), desc="CNN warm-up", unit="step", leave=False,
                     disable=not sys.stderr.isatty()):
        picks = torch.randint(0, len(windows), (per_step,), generator=gen).tolist()
        offsets = torch.randint(0, cfg.seq_len, (per_step,), generator=gen).tolist()
        items = [windows[i] for i in picks]
        images = torch.from_numpy(np.stack([it["image"][o] for it, o in zip(items, offsets)]))
        labels = torch.tensor([float(it["steering"][o]) for it, o in zip(items, offsets)])
        if cfg.augmentations:
            images = augment_windows(images[:, None], gen, names=cfg.augmentations)[:, 0]
        pred = torch.tanh(head(cnn(images.to(device)))).squeeze(-1)
        loss = weighted_mse(pred, labels.to(device), cfg.alpha)[0]
        finite_or_stop(float(loss.detach()), f"CNN warm-up step {step + 1}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


# ----------------------------------------------------------------------------------------
# data: windows (shuffled) or a stateful plan (episodes in order, one per batch row)
# ----------------------------------------------------------------------------------------
def _train_loader(cfg: TrainConfig, dist: runio.Dist, device: torch.device, gen: torch.Generator, epoch_key: int):
    """(DataLoader, stateful plan or None) of one epoch's training windows."""
    from torch.utils.data import DataLoader, DistributedSampler

    from driving.loader import WindowDataset, die_with_parent, stateful_plan

    windows = WindowDataset(cfg.data, seq_len=cfg.seq_len, split="train", val_fraction=cfg.val_fraction,
                            seed=cfg.seed, stride=cfg.window_stride, tile=cfg.stateful)
    if len(windows) == 0:
        raise UserError(f"dataset {cfg.data} has no training window of {cfg.seq_len} frames; record "
                        "longer episodes or lower --seq-len")
    common = {"num_workers": cfg.workers, "pin_memory": device.type == "cuda",
              "worker_init_fn": die_with_parent() if cfg.workers else None}
    if cfg.stateful:
        plan = stateful_plan(windows, cfg.batch, gen, start_anywhere=cfg.max_frames > 0)
        batches = [[w for _, w, _ in step] for step in plan]
        return DataLoader(windows, batch_sampler=batches, **common), plan
    sampler = DistributedSampler(windows, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed)
    sampler.set_epoch(epoch_key)
    return DataLoader(windows, batch_size=cfg.batch, sampler=sampler, **common), None


def carry(state, rows: list[int], reset: list[bool], initial):
    """The rows' carried state, with `reset` rows from `initial` (a (h, c) tuple for LSTMs)."""
    idx = torch.tensor(rows, dtype=torch.long)
    fresh = torch.tensor(reset, dtype=torch.bool)

    def pick(s: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        f = fresh.to(s.device).reshape(-1, *([1] * (s.dim() - 1)))
        return torch.where(f, i, s[idx.to(s.device)])

    if isinstance(state, (tuple, list)):
        return tuple(pick(s, i) for s, i in zip(state, initial))
    return pick(state, initial)


def store(state, rows: list[int], h):
    """`state` with the rows replaced by `h`, detached: truncated BPTT stops at the window."""
    idx = torch.tensor(rows, dtype=torch.long)
    if isinstance(state, (tuple, list)):
        return tuple(s.index_copy(0, idx.to(s.device), v.detach()) for s, v in zip(state, h))
    return state.index_copy(0, idx.to(state.device), h.detach())


# ----------------------------------------------------------------------------------------
# one epoch of training, one pass of validation
# ----------------------------------------------------------------------------------------
def train_epoch(model: nn.Module, policy: nn.Module, loader, plan, opt: torch.optim.Optimizer,
                cfg: TrainConfig, gen: torch.Generator, dist: runio.Dist, desc: str,
                device: torch.device) -> dict[str, float]:
    from tqdm import tqdm

    model.train()
    steps_cap = math.inf
    if cfg.max_frames:
        steps_cap = max(1, math.ceil(cfg.max_frames / (cfg.batch * cfg.seq_len * dist.world)))
    total = int(min(len(loader), steps_cap))
    carried = policy.initial_state(cfg.batch) if plan is not None else None
    sums = [0.0, 0.0, 0.0, 0.0]  # weighted loss·n, mse·n, n frames with loss, frames run (this rank)
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="step", disable=not dist.main or None, leave=False, file=sys.stderr)
    for i, batch in enumerate(loader):
        if i >= total:
            break
        if cfg.augmentations:
            batch["image"] = augment_windows(batch["image"], gen, names=cfg.augmentations)
        batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        h0 = None
        if plan is not None:
            rows, reset = [r[0] for r in plan[i]], [r[2] for r in plan[i]]
            h0 = carry(carried, rows, reset, policy.initial_state(len(rows)))
        pred, h = _forward(model, policy, batch, h0)
        if plan is not None:
            carried = store(carried, rows, h)
        mask = loss_mask(batch["start"], cfg.seq_len, cfg.burn_in)
        if mask is not None and plan is not None:  # a carried state needs no burn-in
            mask = mask | ~torch.tensor(reset)[:, None]
        mask = None if mask is None else mask.to(device)
        loss, mse = weighted_mse(pred, batch["steering"].float(), cfg.alpha, mask)
        value = finite_or_stop(float(loss.detach()), f"{desc}, step {i + 1}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        n = pred.numel() if mask is None else int(mask.sum())
        sums[0] += value * n
        sums[1] += float(mse) * n
        sums[2] += n
        sums[3] += pred.numel()  # burn-in frames cost compute too
        fps = sums[3] * dist.world / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{value:.4f}", fps=f"{fps:.0f}")
        bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - t0
    loss_sum, mse_sum, supervised, frames = dist.all_sum(sums)
    return {"train_loss": loss_sum / max(supervised, 1), "train_mse": mse_sum / max(supervised, 1),
            "frames": int(frames), "seconds": elapsed, "frames_per_s": frames / max(elapsed, 1e-9)}


@torch.no_grad()
def validate(policy: nn.Module, dataset, cfg: TrainConfig, dist: runio.Dist, device: torch.device) -> dict[str, float]:
    """Losses over whole held-out episodes, each from the zero state with the state carried
    (in chunks of VAL_CHUNK frames, which is exactly one pass over the episode): the
    open-loop twin of closed-loop driving, the same for every training scheme."""
    from driving.loader import split_episodes

    policy.eval()
    _, val_idx = split_episodes([e.name for e in dataset.episodes], cfg.val_fraction, cfg.seed)
    if cfg.val_fraction <= 0:
        val_idx = []
    sums = [0.0, 0.0, 0.0]
    for i in val_idx[dist.rank::dist.world]:
        h = None
        labels = torch.from_numpy(dataset.steps(i, "steering").astype(np.float32))
        dts = torch.from_numpy(dataset.steps(i, "dt_s").astype(np.float32))
        for s in range(0, dataset.episodes[i].length, VAL_CHUNK):
            e = min(s + VAL_CHUNK, dataset.episodes[i].length)
            frames = torch.from_numpy(np.ascontiguousarray(dataset.frames(i, s, e)))[None].to(device)
            batch = {"image": frames, "dt": dts[None, s:e].to(device)}
            pred, h = _forward(policy, policy, batch, h)
            loss, mse = weighted_mse(pred, labels[None, s:e].to(device), cfg.alpha)
            sums[0] += float(loss) * (e - s)
            sums[1] += float(mse) * (e - s)
            sums[2] += e - s
    loss_sum, mse_sum, frames = dist.all_sum(sums)
    if frames == 0:
        return {"val_loss": float("nan"), "val_mse": float("nan")}
    return {"val_loss": finite_or_stop(loss_sum / frames, "validation"), "val_mse": mse_sum / frames}


# ----------------------------------------------------------------------------------------
# DAgger: expert-labelled drives of the current policy, recorded as `driving collect` does
# ----------------------------------------------------------------------------------------
def dagger_collect(policy: nn.Module, dataset, cfg: TrainConfig, rnd: int, run_id: str) -> int:
    """Append this round's missing DAgger episodes (a resumed round only adds the rest).

    Each episode is the shared closed-loop drive (`driving.rollout`) recorded by
    `driving.collect.record_episode` with DAgger's β mixture as the actor: the policy sees
    every frame, the expert's steering is executed on a share β^round of the steps, the
    label is always the expert's and the stored action the executed one — the same rows,
    intervention rule and recovery as `driving collect`.
    """
    from tqdm import tqdm

    from driving.collect import make_env, record_episode
    from driving.dataset import DatasetWriter
    from driving.rollout import MixtureActor, PolicyActor

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
        env = make_env(env_id, env_config, max_steps=cfg.dagger_steps + 1)
    except UserError as exc:
        raise UserError(f"DAgger cannot create the dataset's env {env_id!r}: {exc}") from exc
    policy.eval()
    added = 0
    try:
        todo = [i for i in range(cfg.dagger_episodes) if i not in done]
        for i in tqdm(todo, desc=f"DAgger round {rnd}: rollouts", unit="episode", file=sys.stderr):
            seed = 1_000_000 + cfg.seed * 10_007 + rnd * 101 + i
            actor = MixtureActor(PolicyActor(policy), beta, np.random.default_rng(seed))
            meta = {"run": run_id, "round": rnd, "episode_in_round": i, "beta": beta, "policy": cfg.policy}
            record_episode(env, writer, seed=seed, max_steps=cfg.dagger_steps, actor=actor,
                           source="dagger", env_id=env_id, meta=meta)
            added += 1
    finally:
        env.close()
        writer.close()
    return added


# ----------------------------------------------------------------------------------------
# the training run
# ----------------------------------------------------------------------------------------
def _load_source(flag: str, source: str, hw: tuple[int, int]) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint a run starts from (`flag` names it in errors); its images must be the dataset's."""
    from policies.checkpoint import load_policy

    try:
        policy, config = load_policy(source)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"{flag} {source}: {exc}") from None
    if tuple(config["image_hw"]) != tuple(hw):
        raise UserError(f"{flag} {source} sees {tuple(config['image_hw'])} images but the "
                        f"dataset's are {tuple(hw)}: record with the checkpoint's camera size")
    return policy, config


def initial_policy(cfg: TrainConfig, hw: tuple[int, int], explicit: set[str]) -> nn.Module:
    """The policy of `--init-from`, rebuilt from its own spec (its wiring, its seed) with its
    weights, in train mode: fine-tuning keeps the architecture the weights were learnt in."""
    policy, config = _load_source("--init-from", cfg.init_from, hw)
    if "policy" in explicit and config["policy"] != cfg.policy:
        raise UserError(f"--init-from {cfg.init_from} holds a {config['policy']!r} policy but --policy "
                        f"is {cfg.policy!r}: drop --policy or pass --policy {config['policy']}")
    cfg.policy = config["policy"]
    return policy.train()


def load_cnn_from(policy: nn.Module, source: str, hw: tuple[int, int]) -> None:
    """Copy the perception CNN of checkpoint `source` into `policy` (every `cnn.` tensor,
    shapes checked): the perception of one trained policy, a fresh core on top."""
    donor, config = _load_source("--init-cnn-from", source, hw)
    theirs = {k: v for k, v in donor.state_dict().items() if k.startswith("cnn.")}
    ours = {k: v for k, v in policy.state_dict().items() if k.startswith("cnn.")}
    shapes = lambda d: {k: tuple(v.shape) for k, v in d.items()}  # noqa: E731
    if not ours or shapes(theirs) != shapes(ours):
        raise UserError(f"--init-cnn-from {source}: its {config['policy']} CNN does not match this "
                        f"policy's CNN (tensors {sorted(shapes(theirs).items())[:3]}... vs "
                        f"{sorted(shapes(ours).items())[:3]}...)")
    with torch.no_grad():
        for k, v in ours.items():
            v.copy_(theirs[k])


def train(cfg: TrainConfig, explicit: set[str] | None = None) -> TrainResult:
    """Train (or resume) a run; see the module docstring.

    `explicit` names the options the user gave (the CLI's), which on --resume must agree with
    the run's saved settings; without it every field of `cfg` counts as given.
    """
    explicit = {f.name for f in fields(TrainConfig)} - {"resume"} if explicit is None else explicit
    dist = runio.init_distributed()
    try:
        return _train(cfg, explicit, dist)
    finally:
        if dist.created and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, explicit: set[str], dist: runio.Dist) -> TrainResult:
    from policies.factory import build_policy

    torch.set_num_threads(cfg.threads)
    run_dir, resuming = runio.check_out_dir(cfg.out, cfg.resume, clean=dist.main)
    if cfg.resume and not resuming and not cfg.data:
        raise UserError(f"--resume: {run_dir} holds no run to resume (no training state yet); start "
                        f"it without --resume and with --data DATASET (`driving train --data DS --out {run_dir}`)")
    saved = runio.load_state(run_dir) if resuming else None
    if saved is not None:
        cfg = runio.merge_resume_config(cfg, saved.config, explicit)
    runio.check_policy_name(cfg.policy)
    if cfg.stateful and dist.world > 1:
        raise UserError("--stateful trains in one process (its batch rows are whole episodes); "
                        "run it without torchrun, or drop --stateful")
    device = runio.resolve_device(cfg.device)
    bf16 = runio.check_precision(cfg.precision, device)
    dataset = runio.open_dataset(cfg.data)
    if cfg.dagger_rounds > 0:  # recorded real drives have no simulator to roll out in
        from driving.importers import require_simulator

        require_simulator(dataset)
    hw = tuple(dataset.image_shape[:2])

    if cfg.init_from:
        policy = initial_policy(cfg, hw, explicit).to(device)
    else:
        policy = build_policy(cfg.policy, image_hw=hw, seed=cfg.seed).to(device)
        if cfg.init_cnn_from and saved is None:
            load_cnn_from(policy, cfg.init_cnn_from, hw)
    opt = make_optimizer(policy, cfg)
    best: tuple[dict[str, torch.Tensor], dict] | None = None
    run = RunState(run_id=f"{cfg.seed}-{int(time.time())}-{os.getpid()}", dataset_episodes=len(dataset.episodes),
                   dataset_fingerprint=runio.dataset_fingerprint(dataset))
    if saved is not None:
        run = RunState.from_dict(saved.run)
        runio.check_dataset_unchanged(dataset, run, cfg.data)
        best = saved.best
        runio.restore(policy, opt, saved, cfg, run_dir, hw, dist)
    elif cfg.init_from:
        if dist.main:
            print(f"fine-tuning from {cfg.init_from} (no CNN warm-up, output bias kept)", file=sys.stderr)
    elif cfg.init_cnn_from:
        init_output_bias(policy, cfg, dataset, device)
        if dist.main:
            print(f"CNN from {cfg.init_cnn_from} (no CNN warm-up); the core starts fresh", file=sys.stderr)
    else:
        with cnn_autocast(policy, device, bf16):
            warmup_loss = warm_up_cnn(policy, cfg, dataset, device)
            init_output_bias(policy, cfg, dataset, device)
        if warmup_loss is not None and dist.main:
            print(f"CNN warm-up: {cfg.cnn_warmup_steps} steps on single frames, loss {warmup_loss:.4f}",
                  file=sys.stderr)
    if dist.main and saved is None:  # record the run before the first epoch, so that it can be resumed
        runio.save(run_dir, policy, opt, cfg, run, best)
    dist.barrier()

    model: nn.Module = nn.parallel.DistributedDataParallel(policy) if dist.world > 1 else policy
    tb = runio.tensorboard(run_dir, dist)
    while run.round <= cfg.dagger_rounds:
        rnd = run.round
        if rnd > 0 and not run.dagger_collected:
            # DAgger: the best policy of the previous round drives, the expert labels
            if best is not None:
                policy.load_state_dict(best[0])
            if dist.main:
                dagger_collect(policy, dataset, cfg, rnd, run.run_id)
            dist.barrier()
            dataset = runio.open_dataset(cfg.data)
            opt = make_optimizer(policy, cfg)  # fresh moments for the grown dataset
            best = None
            run.dagger_collected = True
            run.dataset_episodes, run.dataset_fingerprint = len(dataset.episodes), runio.dataset_fingerprint(dataset)
            if dist.main:
                runio.save(run_dir, policy, opt, cfg, run, best)

        while run.epoch < cfg.epochs and not run.stopped:
            epoch = run.epoch
            gen = _seed_everything(cfg, rnd, epoch, dist.rank)
            loader, plan = _train_loader(cfg, dist, device, gen, rnd * 100_000 + epoch)
            desc = f"epoch {epoch + 1}/{cfg.epochs}" + (f" DAgger {rnd}" if rnd else "")
            row: dict[str, Any] = {"round": rnd, "epoch": epoch + 1}
            with cnn_autocast(policy, device, bf16):
                row.update(train_epoch(model, policy, loader, plan, opt, cfg, gen, dist, desc, device))
                row.update(validate(policy, dataset, cfg, dist, device))
            run.frames_total += row["frames"]
            score = row["val_loss"] if not math.isnan(row["val_loss"]) else row["train_loss"]
            improved = math.isfinite(score) and (run.best_val is None or score < run.best_val)
            row["best"] = int(improved)
            if improved:
                run.best_val, run.best_epoch, run.since_best = score, epoch + 1, 0
                info = {"best": {"round": rnd, "epoch": epoch + 1, "val_loss": row["val_loss"],
                                 "val_mse": row["val_mse"], "train_loss": row["train_loss"]}}
                best = ({k: v.detach().clone() for k, v in policy.state_dict().items()},
                        runio.checkpoint_config(cfg, policy, dataset, info))
            else:
                run.since_best += 1
            run.epoch = epoch + 1
            run.history.append(row)
            if cfg.patience and run.since_best >= cfg.patience:
                run.stopped = True
            if dist.main:
                if improved:
                    runio.save_best(run_dir, policy, best[1])
                runio.save(run_dir, policy, opt, cfg, run, best)
                runio.log_epoch(row, improved, tb, len(run.history))
            dist.barrier()
        if rnd >= cfg.dagger_rounds:
            break  # the state stays at this round: --resume --epochs N can extend it
        # the next DAgger round starts from this round's best weights, with fresh counters
        run.round, run.epoch, run.best_val, run.best_epoch = rnd + 1, 0, None, None
        run.since_best, run.stopped, run.dagger_collected = 0, False, False
        if dist.main:
            runio.save(run_dir, policy, opt, cfg, run, best)
        dist.barrier()
    if tb is not None:
        tb.close()
    vals = [r["val_loss"] for r in run.history if r["round"] == cfg.dagger_rounds]
    best_val = min((v for v in vals if not math.isnan(v)), default=float("nan"))
    return TrainResult(run_dir=run_dir, best_val_loss=best_val, epochs_run=len(run.history), history=run.history)


def _seed_everything(cfg: TrainConfig, rnd: int, epoch: int, rank: int) -> torch.Generator:
    """Seed the global RNG and return a generator for this (round, epoch, rank)."""
    seed = (cfg.seed * 1_000_003 + rnd * 10_007 + epoch * 101 + rank) % (2**63 - 1)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)

