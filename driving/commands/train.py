"""`driving train`: behaviour cloning on recorded drives, then optional DAgger rounds."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from driving.errors import UserError

# CLI flag → TrainConfig field; defaults come from TrainConfig so the docs stay in one place.
_OPTIONS: list[tuple[str, str, type, str]] = [
    ("--data", "data", str, "dataset directory recorded by `driving collect`"),
    ("--policy", "policy", str, "policy name: {policies}"),
    ("--out", "out", str, "run directory to create (model.safetensors, config.json, metrics.csv)"),
    ("--epochs", "epochs", int, "epochs per round (round 0 = behaviour cloning, then each DAgger round)"),
    ("--seq-len", "seq_len", int, "frames per training window (truncated back-propagation length)"),
    ("--stride", "stride", int, "frames between window starts (0 = (seq-len - burn-in)/2)"),
    ("--burn-in", "burn_in", int,
     "leading frames of each window that only warm the recurrent state up and get no loss "
     "(0 ≤ K < seq-len; a window that starts its episode gets loss on every frame)"),
    ("--batch", "batch", int, "windows per optimisation step (per process under torchrun)"),
    ("--lr", "lr", float, "learning rate of the recurrent core and head"),
    ("--cnn-lr-factor", "cnn_lr_factor", float, "the CNN's learning rate is lr × this"),
    ("--alpha", "alpha", float, "loss weight exp(alpha·|steering|) (0 = plain MSE)"),
    ("--weight-decay", "weight_decay", float, "Adam weight decay"),
    ("--grad-clip", "grad_clip", float, "max gradient norm (0 = off)"),
    ("--val-fraction", "val_fraction", float, "share of episodes held out for validation"),
    ("--patience", "patience", int, "stop after this many epochs without a better val loss (0 = never)"),
    ("--seed", "seed", int, "random seed (same seed + data + threads = same weights)"),
    ("--workers", "workers", int, "data-loading worker processes"),
    ("--threads", "threads", int, "torch threads per process"),
    ("--max-frames", "max_frames", int, "at most this many training frames per epoch (0 = all)"),
    ("--augment", "augment", str,
     "comma-separated augmentations: photometric (gamma, gain, colour cast), shadow (sliding "
     "shadow edge), noise (pixel noise); 'default' = photometric,shadow; 'none' = off"),
    ("--device", "device", str, "cpu, cuda or auto (cuda when available)"),
    ("--precision", "precision", str,
     "fp32, or bf16 (autocast of the perception CNN where the CPU/GPU has native bf16; the "
     "recurrent cores stay fp32)"),
    ("--cnn-warmup-steps", "cnn_warmup_steps", int,
     "steps fitting the CNN with a temporary linear head on single frames before end-to-end training (0 = off)"),
    ("--dagger-rounds", "dagger_rounds", int, "DAgger rounds after behaviour cloning"),
    ("--dagger-episodes", "dagger_episodes", int, "closed-loop rollouts recorded per DAgger round"),
    ("--dagger-steps", "dagger_steps", int, "steps per DAgger rollout"),
    ("--dagger-beta", "dagger_beta", float, "probability that the expert drives a step in round 1 (β^k in round k)"),
    ("--init-from", "init_from", str,
     "start from this checkpoint's weights and wiring (a run directory or pretrained:NAME) "
     "instead of a fresh policy: fine-tuning, e.g. on your own drives; skips the CNN warm-up"),
    ("--init-cnn-from", "init_cnn_from", str,
     "start the perception CNN from this checkpoint's CNN (any policy with the same CNN and "
     "image size; e.g. a trained NCP-CfC's for an NCP-LTC); the core starts fresh; skips the warm-up"),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    from driving.train import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    p = subparsers.add_parser(
        "train",
        help="train a policy by imitation (behaviour cloning, then DAgger)",
        description=(
            "Behaviour cloning on windows of recorded drives with truncated back-propagation "
            "through time (optionally with a burn-in prefix or a state carried across windows), the "
            "paper's recipe (steering-weighted loss, lower CNN learning rate, named augmentations, "
            "per-image whitening), validation on whole held-out episodes, "
            "early stopping, then optional DAgger rounds in the simulator. Writes RUN/model.safetensors "
            "+ RUN/config.json (best epoch), RUN/metrics.csv and RUN/last/ (resume state). "
            "Multi-process: torchrun --nproc-per-node 2 -m driving train ..."
        ),
    )
    from policies.factory import POLICY_NAMES

    for flag, name, typ, text in _OPTIONS:
        text = text.replace("{policies}", ", ".join(POLICY_NAMES))
        default = defaults[name]
        shown = f" (default: {default})" if default not in ("", None) else ""
        p.add_argument(flag, dest=name, type=typ, default=None, help=text + shown)
    p.add_argument("--no-augment", dest="augment", action="store_const", const="none", default=None,
                   help="turn off every augmentation (= --augment none)")
    p.add_argument("--stateful", action="store_true", default=None,
                   help="stateful truncated BPTT: carry the recurrent state across consecutive "
                        "windows of an episode (each batch row drives whole episodes)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from driving.train import TrainConfig, train

    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None and k != "resume"}
    if not given.get("out"):
        raise UserError("--out RUN is required (a new directory for the trained policy)")
    if not args.resume and not given.get("data"):
        raise UserError("--data DIR is required (a dataset recorded by `driving collect`)")
    cfg = TrainConfig(**given, resume=bool(args.resume))
    result = train(cfg, explicit=set(given))
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(f"trained {result.epochs_run} epochs; best val loss {result.best_val_loss:.5f}; "
              f"run in {result.run_dir}")
    return 0
