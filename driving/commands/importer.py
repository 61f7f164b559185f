"""`driving import`: real drives (donkeycar tub, Udacity log, video + CSV) into a dataset."""

from __future__ import annotations

import argparse
import sys

from driving.errors import UserError


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: give HEIGHTxWIDTH, e.g. 78x200") from None
    return h, w


def _crop(text: str) -> tuple[float, float]:
    try:
        top, bottom = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--crop {text!r}: give TOP,BOTTOM in pixels (40,0) or fractions of the height (0.35,0.1)") from None
    return top, bottom


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import",
        help="import real drives (donkeycar tub, Udacity log, video + CSV) into a dataset",
        description=(
            "Convert recorded drives into a liquid-drive dataset (same schema and crash safety as "
            "`driving collect`): frames cropped and resized to --size, steering divided by "
            "--steering-scale into [-1, 1] (+ = right), real timestamps kept as dt_s, episodes cut "
            "at gaps longer than --max-gap and at session changes. Prints what was skipped and why, "
            "and writes OUT/imports/FORMAT-HASH.json. Rerunning the same import resumes. "
            "Formats and a worked example: docs/real_drives.md."
        ),
    )
    p.add_argument("--format", required=True, choices=("donkeycar", "udacity", "video"),
                   help="donkeycar: a tub v2 folder (or a folder of tubs); udacity: driving_log.csv "
                        "(or its folder); video: a video file, with --labels")
    p.add_argument("src", metavar="SRC", help="tub folder, driving_log.csv, or video file")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory (created, or appended to)")
    g = p.add_argument_group("frames")
    g.add_argument("--size", type=_size, default=(78, 200), metavar="HxW",
                   help="stored frame size (default 78x200, the paper's camera)")
    g.add_argument("--crop", type=_crop, default=(0.0, 0.0), metavar="TOP,BOTTOM",
                   help="rows cut off before resizing: pixels (40,0) or fractions (0.35,0.1); default none")
    g.add_argument("--fps", type=float, default=None, help="subsample to at most this frame rate (default: keep all)")
    g = p.add_argument_group("labels")
    g.add_argument("--steering-scale", type=float, default=1.0, metavar="S",
                   help="raw steering / S = [-1, 1] (e.g. 25 for degrees of ±25); default 1")
    g.add_argument("--invert-steering", action="store_true", help="flip the sign (if + means left in the source)")
    g.add_argument("--clip-steering", action="store_true",
                   help="clip labels beyond the scale to ±1 instead of refusing the import")
    g.add_argument("--speed-scale", type=float, default=None, metavar="K",
                   help="raw speed × K = m/s (default: 0.44704 for udacity's mph, else 1)")
    g = p.add_argument_group("episodes")
    g.add_argument("--max-gap", type=float, default=1.0, metavar="SEC",
                   help="a longer interval between records starts a new episode (default 1.0 s)")
    g.add_argument("--min-episode-frames", type=int, default=16, metavar="N",
                   help="drop shorter episodes (default 16, one training window)")
    g.add_argument("--max-episode-frames", type=int, default=2000, metavar="N",
                   help="cut longer continuous drives into episodes of N frames (default 2000)")
    g = p.add_argument_group("camera (for fog in the passive test: flat-ground depth)")
    g.add_argument("--camera-fov-deg", type=float, default=None, help="horizontal field of view of the source camera")
    g.add_argument("--camera-height-m", type=float, default=None, help="camera height above the road (m)")
    g.add_argument("--camera-pitch-deg", type=float, default=None, help="camera pitch, down > 0 (degrees)")
    g = p.add_argument_group("donkeycar")
    g.add_argument("--modes", default="user", metavar="LIST",
                   help="user/mode values to keep, comma list, or all (default user: human driving only)")
    g = p.add_argument_group("udacity")
    g.add_argument("--side-cameras", type=float, default=None, metavar="OFFSET",
                   help="also import the left/right images with steering ± OFFSET (e.g. 0.2)")
    g.add_argument("--rate", type=float, default=None, metavar="HZ",
                   help="row rate when the image names carry no timestamps")
    g = p.add_argument_group("video")
    g.add_argument("--labels", default=None, metavar="CSV", help="CSV with a header: time and steering columns")
    g.add_argument("--time-column", default=None, help="name of the time column (default: time_s, time, timestamp, t)")
    g.add_argument("--steering-column", default=None, help="name of the steering column (default: steering, angle)")
    g.add_argument("--time-unit", default="s", choices=("s", "ms", "us", "ns"), help="unit of the time column")
    g.add_argument("--video-start", type=float, default=None, metavar="T",
                   help="label-clock time of the first frame (default: the first label's time)")
    g.add_argument("--max-label-gap", type=float, default=0.25, metavar="SEC",
                   help="frames farther than this from any label are skipped (default 0.25 s)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from driving.importers import ImportOptions, format_summary, run_import
    from driving.outputs import check_out_dir

    # before the source is read: --out under a file, onto a file, or holding a run/report;
    # an existing dataset is appended to (or resumed)
    check_out_dir(args.out, "dataset", existing="append")
    from driving.outputs import check_out_dir, writing

    check_out_dir(args.out, "dataset", existing="append")  # a run or report folder: refused here
    if args.format != "video" and args.labels is not None:
        raise UserError(f"--labels is for --format video; a {args.format} source carries its own labels")
    speed_scale = args.speed_scale
    if speed_scale is None:
        speed_scale = 0.44704 if args.format == "udacity" else 1.0
    opts = ImportOptions(
        size=args.size, crop=args.crop, steering_scale=args.steering_scale,
        invert_steering=args.invert_steering, clip_steering=args.clip_steering, max_gap_s=args.max_gap,
        min_episode_frames=args.min_episode_frames, max_episode_frames=args.max_episode_frames, fps=args.fps,
        camera_fov_deg=args.camera_fov_deg, camera_height_m=args.camera_height_m,
        camera_pitch_deg=args.camera_pitch_deg, speed_scale=speed_scale,
    )
    kw: dict = {}
    if args.format == "donkeycar":
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        if not modes:
            raise UserError("--modes is empty; give e.g. user, or user,local_angle, or all")
        kw["modes"] = None if modes == ["all"] else set(modes)
    elif args.format == "udacity":
        kw.update(side_cameras=args.side_cameras, rate_hz=args.rate)
    else:
        kw.update(labels=args.labels, time_column=args.time_column, steering_column=args.steering_column,
                  time_unit=args.time_unit, video_start=args.video_start, max_label_gap=args.max_label_gap)
    with writing(args.out):  # a full disk: one line, committed episodes intact
        summary = run_import(args.format, args.src, args.out, opts, progress=not args.quiet, **kw)
    print(format_summary(summary), file=sys.stderr)
    if summary["episodes_written"] == 0 and not summary["skipped"].get("already_imported"):
        print("warning: no episode was written; see the skip summary above", file=sys.stderr)
    return 0
