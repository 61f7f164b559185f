"""`driving dataset info|verify DIR`: summarise a recorded dataset or check it for damage."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dataset",
        help="inspect or verify a recorded dataset",
        description="Inspect (info) or check every chunk and boundary (verify) of a dataset.",
    )
    sub = p.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    info = sub.add_parser(
        "info",
        help="print a summary (episodes, frames, size, camera); exit 2 when the store is damaged",
        description="Summarise a dataset after a quick structural check (metadata, every chunk "
        "file present; no chunk decoded: that is `verify`). A damaged store prints a warning "
        "on stderr and exits 2.",
    )
    info.add_argument("dir", help="dataset directory")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=run_info)
    ver = sub.add_parser(
        "verify",
        help="decode every chunk, check boundaries, label ranges and finite values; exit 1 when damaged",
    )
    ver.add_argument("dir", help="dataset directory")
    ver.add_argument("--json", action="store_true", help="print JSON")
    ver.add_argument("--quiet", action="store_true", help="no progress bar")
    ver.set_defaults(func=run_verify)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_info(args: argparse.Namespace) -> int:
    import sys

    from driving.dataset import Dataset, verify

    s = Dataset(args.dir).summary()
    check = verify(args.dir, decode=False)
    s["damaged"] = not check.ok
    s["problems"] = check.problems
    code = 0
    if not check.ok:
        shown = "; ".join(check.problems[:3]) + (" ..." if len(check.problems) > 3 else "")
        print(
            f"WARNING: dataset {args.dir} is DAMAGED ({len(check.damaged_episodes)} episode(s), "
            f"{len(check.problems)} problem(s): {shown}); run `driving dataset verify {args.dir}` "
            "and re-record or drop the damaged episodes",
            file=sys.stderr,
        )
        code = 2
    if args.json:
        print(json.dumps(s, indent=1))
        return code
    h, w, _ = s["image_shape"]
    print(f"dataset        {s['root']}")
    print(f"schema         v{s['schema_version']} ({s['created_by']})")
    print(
        f"episodes       {s['episodes']}  "
        + "  ".join(f"{k}: {v}" for k, v in s["episodes_by_env"].items())
    )
    print("sources        " + "  ".join(f"{k}: {v}" for k, v in s["episodes_by_source"].items()))
    print(f"frames         {s['frames']}  ({s['duration_s']:.1f} s simulated)")
    print(
        f"camera         {w}x{h}  "
        + ", ".join(f"{k}={v}" for k, v in s["camera"].items() if k not in ("height", "width"))
    )
    print(
        f"size           {s['bytes_on_disk'] / 1e6:.1f} MB, {s['bytes_per_frame']:.0f} bytes/frame"
    )
    print(
        f"storage        chunks of {s['chunk_frames']} frames, codec {s['codec']}, depth {'yes' if s['save_depth'] else 'no'}"
    )
    if s["uncommitted_leftovers"]:
        print(
            f"leftovers      {s['uncommitted_leftovers']} uncommitted episode(s) from a killed recorder (ignored)"
        )
    if code:
        print(f"DAMAGED        {len(check.problems)} problem(s); see the warning above")
    return code


def run_verify(args: argparse.Namespace) -> int:
    from driving.dataset import verify

    rep = verify(args.dir, progress=not args.quiet and not args.json)
    if args.json:
        print(
            json.dumps(
                {
                    "root": rep.root,
                    "ok": rep.ok,
                    "episodes_ok": rep.episodes,
                    "frames_ok": rep.frames,
                    "chunks_checked": rep.chunks,
                    "damaged_episodes": rep.damaged_episodes,
                    "problems": rep.problems,
                    "warnings": rep.warnings,
                },
                indent=1,
            )
        )
    else:
        for w in rep.warnings:
            print(f"warning: {w}")
        for p in rep.problems:
            print(f"DAMAGED: {p}")
        status = "OK" if rep.ok else f"DAMAGED ({len(rep.damaged_episodes)} episode(s))"
        print(
            f"{status}: {rep.episodes} intact episodes, {rep.frames} frames, "
            f"{rep.chunks} chunks decoded"
        )
    return 0 if rep.ok else 1
