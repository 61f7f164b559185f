"""`driving collect`: record expert drives into a crash-safe zarr dataset (resumable)."""

from __future__ import annotations

import argparse
import json
import sys

from driving.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "collect",
        help="record expert drives into a dataset",
        description=(
            "Record expert drives (pure pursuit; DART noise on the executed steering, the "
            "stored label stays the expert's) into a zarr v3 dataset. Episode j uses seed "
            "SEED+j; rerunning the same command after a crash resumes (recorded seeds are "
            "skipped); another --seed appends new episodes."
        ),
    )
    p.add_argument("--env", required=True, help="env id, e.g. liquid_drive/Racetrack-v0")
    p.add_argument("--episodes", type=int, required=True, help="number of episodes")
    p.add_argument("--steps", type=int, required=True, help="max frames per episode")
    p.add_argument("--out", required=True, help="dataset directory (created, or appended to)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (default 0)")
    p.add_argument("--workers", type=int, default=1, help="parallel recording processes")
    p.add_argument(
        "--dart-noise",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="std of Gaussian noise added to the executed steering (DART), e.g. 0.1",
    )
    p.add_argument("--save-depth", action="store_true", help="also store per-pixel depth (large)")
    p.add_argument(
        "--dt-jitter",
        type=float,
        default=0.0,
        metavar="J",
        help="irregular frame intervals: each dt = nominal * U(1-J, 1+J) (default 0)",
    )
    p.add_argument(
        "--env-kwargs",
        "--env-config",
        dest="env_kwargs",
        default=None,
        metavar="JSON",
        help="env config overrides (as eval's --env-config), e.g. "
             "'{\"track_kwargs\": {\"radius_m\": [10, 60]}}' for tighter bends; "
             "add \"straight_prob\": 0.25 for back-to-back bends (chicanes)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from driving.collect import collect
    from driving.outputs import check_out_dir

    # Before any env starts: --out under a file, onto a file, or holding a run/report/...;
    # an existing dataset is appended to (or resumed).
    check_out_dir(args.out, "dataset", existing="append")
    env_kwargs = None
    if args.env_kwargs:
        try:
            env_kwargs = json.loads(args.env_kwargs)
        except json.JSONDecodeError as exc:
            raise UserError(f"--env-kwargs is not valid JSON ({exc})") from exc
        if not isinstance(env_kwargs, dict):
            raise UserError("--env-kwargs must be a JSON object, e.g. '{\"key\": 1}'")
    try:
        res = collect(
            args.env,
            args.episodes,
            args.steps,
            args.out,
            seed=args.seed,
            workers=args.workers,
            dart_noise=args.dart_noise,
            save_depth=args.save_depth,
            dt_jitter=args.dt_jitter,
            env_kwargs=env_kwargs,
            progress=not args.quiet,
        )
    except OSError as exc:
        raise UserError(f"cannot write dataset {args.out}: {exc}") from exc
    print(
        f"recorded {len(res.recorded)} episodes, {res.frames} frames in {res.seconds:.1f} s "
        f"({res.frames_per_s:.0f} frames/s) into {res.out}"
        + (f"; {len(res.skipped_seeds)} already present" if res.skipped_seeds else ""),
        file=sys.stdout,
    )
    return 0
