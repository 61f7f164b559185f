"""`driving demo`: record, train, evaluate under corruptions and explain, in one command."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="from nothing to a driving, explained agent judged on roads it never saw (≤ 10 min on 2 cores)",
        description=(
            "Record expert drives on RandomRoad-v0 (train split), train an NCP-CfC agent "
            "(behaviour cloning, then DAgger), evaluate it with the strict "
            "intervention rule on the held-out test roads and on Racetrack-v0 and LaneKeeping-v0 "
            "(never trained on), clean and under fog, rain, noise, snow, night and glare at two "
            "severities plus dropped frames and jitter, print the held-out table, and render an "
            "explanatory video in fog. Rerunning with the same --out resumes."
        ),
    )
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, training and evaluation")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="a one-to-two-minute smoke run of every stage (tiny data, 1 epoch)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from driving.demo import config_from_args, run_demo
    from driving.outputs import check_out_dir

    # an earlier demo output is resumed; a file, a path under one, or a folder holding a
    # dataset, run or report is refused before the first stage starts
    check_out_dir(args.out, "demo", existing="append")
    run_demo(config_from_args(args))
    return 0
