"""`driving compare`: one table and robustness curves for several `driving eval` reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from driving.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare several eval reports: table + robustness curves with 95%% intervals",
        description=(
            "Read DIR/report.json of several `driving eval` runs (e.g. one per policy, same --seed "
            "so the episodes are paired) and write OUT/compare.md, OUT/compare.json and "
            "OUT/compare_<metric>.png: mean and 95% interval over episodes per condition, "
            "and the mean over severities per corruption."
        ),
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="report directories (driving eval --out DIR)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--no-plots", action="store_true", help="skip the curves")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from driving.compare import compare
    from driving.outputs import check_out_dir, writing

    # An earlier comparison is regenerated; a folder holding a report (one of the inputs, say),
    # run or dataset is not written into; a path under or onto a file fails here, before work.
    check_out_dir(args.out, "compare", existing="overwrite")
    try:
        with writing(args.out):
            data = compare(args.dirs, args.out, plots=not args.no_plots)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {Path(args.out) / 'compare.md'}: {len(data['policies'])} reports, "
          f"{len(data['table'])} rows", file=sys.stderr)
    return 0
