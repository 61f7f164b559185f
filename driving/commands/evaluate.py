"""`driving eval`: closed-loop evaluation of a checkpoint under corruptions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from driving import corruptions as C
from driving.errors import UserError


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, e.g. 1,2,3,4,5; got {text!r}") from None
    if not vals:
        raise UserError(f"{what} is empty; e.g. 1,2,3,4,5")
    return tuple(dict.fromkeys(vals))  # drop repeats, keep order


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="closed-loop evaluation under corruptions → report.json, report.md, plots",
        description=(
            "Drive a trained checkpoint closed loop (state carried between frames) on an env, "
            "with each camera frame corrupted before the policy sees it. Leaving the road counts "
            "a crash; the car is put back on the lane and the run goes on. Writes OUT/report.json, "
            "OUT/report.md, OUT/robustness.png, OUT/plots/*.png and OUT/contact_sheet.png. "
            f"Corruptions: {', '.join(C.all_names())} (or all). Definitions: docs/evaluation.md."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="checkpoint directory (driving train --out)")
    p.add_argument("--env", default=None, metavar="ID", help="env id, e.g. liquid_drive/LaneKeeping-v0")
    p.add_argument("--envs", default=None, metavar="A,B,C",
                   help="several env ids (comma list): one report per env in OUT/<env>/ plus a combined "
                        "table OUT/summary.md and OUT/summary.json (held-out roads and unseen tracks in one command)")
    p.add_argument("--episodes", type=int, default=5, help="episodes per corruption and severity (default 5)")
    p.add_argument("--corruptions", default="none,fog,rain,noise",
                   help="comma list of names (each at every --severities) or conditions such as fog:3, "
                        "noise:3-5 (default none,fog,rain,noise)")
    p.add_argument("--severities", default="1,2,3,4,5", help="comma list of 0..5 (default 1,2,3,4,5)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="base seed of episodes and corruptions (default 0)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--steps", type=int, default=300, help="control steps per episode (default 300)")
    p.add_argument("--env-config", default=None, metavar="JSON",
                   help="env config overrides as JSON (or @file.json), e.g. '{\"split\": \"test\"}'")
    p.add_argument("--expert-reference", action=argparse.BooleanOptionalAction, default=True,
                   help="also drive the expert on the same episodes as a reference (default on)")
    p.add_argument("--no-plots", action="store_true", help="skip plots and the contact sheet")
    p.add_argument("--intervention", choices=("strict", "lenient"), default="strict",
                   help="strict (default): collision, off-road or lane invasion (the car's edge more than "
                        "--lane-invasion-m past its lane's line); lenient: collision or off-road only, the rule "
                        "of reports made before strict existed")
    p.add_argument("--lane-invasion-m", type=float, default=0.5, metavar="M",
                   help="strict rule: how far past its lane's line the car's edge may go (default 0.5 m)")
    p.add_argument("--batch-episodes", type=int, default=None, metavar="K",
                   help="episodes each worker drives side by side in lock step, one batched policy step for "
                        "all (default 8; 1 = one at a time)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                   help="where the policy runs (default cpu; auto = cuda when available)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16 autocast for the CNN where the hardware has it (cores stay fp32; default fp32)")
    g = p.add_argument_group("passive test (recorded drives, nothing driven; docs/evaluation.md)")
    g.add_argument("--data", default=None, metavar="DIR",
                   help="run the policy over the recorded episodes of this dataset instead of driving an env "
                        "(steering MSE/MAE/correlation vs the label, attention SSIM)")
    g.add_argument("--split", choices=("val", "test", "all"), default=None,
                   help="with --data: the checkpoint's validation episodes, episodes it never trained on, "
                        "or all (default: test when there are unseen episodes, else val)")
    g.add_argument("--ssim-frames", type=int, default=200, metavar="N",
                   help="with --data: frames per condition for attention SSIM (default 200, as the paper)")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier report in --out (refused without it, before any episode)")
    p.set_defaults(func=run)


def parse_env_config(text: str | None) -> dict:
    if not text:
        return {}
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise UserError(f"cannot read --env-config file: {exc}") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--env-config is not valid JSON ({exc}); e.g. '{{\"split\": \"test\"}}'") from None
    if not isinstance(cfg, dict):
        raise UserError("--env-config must be a JSON object, e.g. '{\"split\": \"test\"}'")
    return cfg


def _env_list(args: argparse.Namespace) -> list[str]:
    ids = [e.strip() for e in (args.envs or "").split(",") if e.strip()]
    if args.env:
        ids.insert(0, args.env)
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise UserError("no env given; pass --env ID or --envs A,B,C (e.g. --env liquid_drive/RandomRoad-v0)")
    return ids


def run(args: argparse.Namespace) -> int:
    if args.data is not None:
        from driving.passive import run_cli

        return run_cli(args)
    from driving.evaluate import DEFAULT_BATCH_EPISODES, EvalSpec, evaluate, evaluate_envs

    corruptions = tuple(t.strip() for t in args.corruptions.split(",") if t.strip())
    severities = _int_list(args.severities, "--severities")
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    env_ids = _env_list(args)
    from driving.outputs import check_out_dir, writing

    # Before any episode: --out under a file, onto a file, holding another kind of output
    # (a run, a dataset), or an earlier report without --force.
    check_out_dir(args.out, "report", force=args.force)
    if len(env_ids) > 1:  # --envs: one report per env in OUT/<env>/, each checked the same way
        from driving.evaluate import env_slug

        for e in env_ids:
            check_out_dir(Path(args.out) / env_slug(e), "report", force=args.force)
    spec = EvalSpec(
        checkpoint=args.checkpoint, env_id=env_ids[0], env_kwargs=parse_env_config(args.env_config),
        episodes=args.episodes, corruptions=corruptions, severities=severities, steps=args.steps,
        seed=args.seed, expert_reference=args.expert_reference, intervention=args.intervention,
        lane_invasion_m=args.lane_invasion_m,
        batch_episodes=DEFAULT_BATCH_EPISODES if args.batch_episodes is None else args.batch_episodes,
        device=args.device, precision=args.precision,
    )
    try:
        spec.validate()  # every check of the settings lives in the spec
        from policies.policy import resolve_device

        resolve_device(spec.device)  # --device cuda without CUDA: before any work
    except ValueError as exc:
        raise UserError(str(exc)) from None
    from policies.checkpoint import read_config, resolve_run_dir

    try:
        run_dir = resolve_run_dir(args.checkpoint)
        read_config(run_dir)  # validates the checkpoint before any env or worker starts
    except ValueError as exc:
        raise UserError(f"--checkpoint: {exc}") from None
    spec = replace(spec, checkpoint=os.fspath(run_dir))
    if len(env_ids) > 1:
        with writing(args.out, rerun="rerun with --force"):
            summary = evaluate_envs(spec, env_ids, args.out, workers=args.workers, plots=not args.no_plots)
        print(f"wrote {Path(args.out) / 'summary.md'} ({len(env_ids)} envs)", file=sys.stderr)
        print(summary["markdown"], file=sys.stderr)
        return 0
    # a full disk while writing the report: one line, exit 2; the files written before it
    # filled up make the folder an earlier report, hence --force in the advice
    with writing(args.out, rerun="rerun with --force"):
        report = evaluate(spec, args.out, workers=args.workers, plots=not args.no_plots)
    clean = next((r for r in report["results"] if r["corruption"] == "none"), report["results"][0])
    print(
        f"wrote {Path(args.out) / 'report.json'}: {len(report['results'])} conditions; "
        f"{clean['corruption']}: mean |CTE| {clean['mean_abs_cross_track_m']:.3f} m, "
        f"crashes {clean['crashes']}, autonomy {clean['autonomy_pct']:.1f}%",
        file=sys.stderr,
    )
    return 0
