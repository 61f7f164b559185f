"""`driving demo`: from nothing to a driving, explained agent in one command.

The whole pipeline, each stage through the same code path as its own CLI verb:

1. record expert drives on the racetrack (pure pursuit, DART noise on the executed steering),
2. train an NCP-CfC agent by behaviour cloning (optionally followed by DAgger rounds),
3. evaluate it closed loop, clean and under fog, rain and noise at two severities, beside the
   expert on the same episodes (report.json / report.md / robustness plots / contact sheet),
4. render an explanatory video of the agent driving in fog, and a still of it.

Every stage resumes: rerunning the demo with the same `--out` reuses completed stages
(the dataset skips recorded seeds, training continues from `RUN/last/`).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from driving.errors import UserError


@dataclass
class DemoConfig:
    """The demo's recipe; the defaults finish in ≤ 15 min on a 2-core CPU machine."""

    out: str = "demo_out"
    env: str = "liquid_drive/Racetrack-v0"
    policy: str = "ncp-cfc"
    seed: int = 0
    episodes: int = 12  # recorded expert drives
    steps: int = 300  # frames per recorded drive (10 Hz → 30 s, most of a lap)
    dart_noise: float = 0.1  # std of the executed-steering noise while recording
    epochs: int = 8
    max_frames: int = 3000  # training frames per epoch (windows drawn at random)
    dagger_rounds: int = 1
    dagger_episodes: int = 4
    eval_episodes: int = 4
    eval_steps: int = 500
    corruptions: tuple[str, ...] = ("none", "fog", "rain", "noise")
    severities: tuple[int, ...] = (2, 4)
    video_steps: int = 200
    video_corruption: str = "fog:3"
    workers: int = 2
    threads: int = 2
    train_extra: list[str] = field(default_factory=list)


def _stage(title: str) -> float:
    print(f"\n== {title}", file=sys.stderr, flush=True)
    return time.perf_counter()


def _run(argv: list[str]) -> None:
    from driving.cli import main

    print("   $ driving " + " ".join(argv), file=sys.stderr, flush=True)
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"`driving {argv[0]}` failed with exit code {code}")


def _training_done(run: Path) -> bool:
    return (run / "model.safetensors").exists() and (run / "DONE").exists()


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; return a summary (also written to OUT/demo_summary.json)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data, run, ev = out / "data", out / "run", out / "eval"
    video, still = out / "explain_fog.mp4", out / "explain_fog.png"
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    t = _stage("1/4 record expert drives")
    _run(["collect", "--env", cfg.env, "--episodes", str(cfg.episodes), "--steps",
          str(cfg.steps), "--out", str(data), "--seed", str(cfg.seed), "--workers",
          str(cfg.workers), "--dart-noise", str(cfg.dart_noise)])
    times["collect_s"] = time.perf_counter() - t

    t = _stage(f"2/4 train {cfg.policy} (behaviour cloning + {cfg.dagger_rounds} DAgger rounds)")
    if _training_done(run):
        print(f"   {run} is already trained: reusing it", file=sys.stderr)
    else:
        argv = ["train", "--data", str(data), "--policy", cfg.policy, "--out", str(run),
                "--epochs", str(cfg.epochs), "--seed", str(cfg.seed), "--threads",
                str(cfg.threads), "--dagger-rounds", str(cfg.dagger_rounds),
                "--dagger-episodes", str(cfg.dagger_episodes), *cfg.train_extra]
        if cfg.max_frames:
            argv += ["--max-frames", str(cfg.max_frames)]
        if (run / "last").exists():
            argv.append("--resume")
        elif run.exists():
            shutil.rmtree(run)  # a run killed before its first epoch: nothing to keep
        _run(argv)
        (run / "DONE").write_text("trained by driving demo\n")
    times["train_s"] = time.perf_counter() - t

    t = _stage("3/4 closed-loop evaluation: clean, fog, rain, noise")
    _run(["eval", "--checkpoint", str(run), "--env", cfg.env, "--episodes",
          str(cfg.eval_episodes), "--corruptions", ",".join(cfg.corruptions), "--severities",
          ",".join(map(str, cfg.severities)), "--out", str(ev), "--seed", str(cfg.seed + 1000),
          "--workers", str(cfg.workers), "--steps", str(cfg.eval_steps), "--force"])
    times["eval_s"] = time.perf_counter() - t

    t = _stage(f"4/4 explanatory video ({cfg.video_corruption})")
    _run(["explain", "--checkpoint", str(run), "--env", cfg.env, "--steps",
          str(cfg.video_steps), "--corruption", cfg.video_corruption, "--out", str(video),
          "--seed", str(cfg.seed + 2000), "--force"])
    _run(["explain", "--checkpoint", str(run), "--env", cfg.env, "--frame",
          str(min(60, cfg.video_steps - 1)), "--corruption", cfg.video_corruption, "--out",
          str(still), "--seed", str(cfg.seed + 2000), "--force"])
    times["explain_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t_all

    report = json.loads((ev / "report.json").read_text())
    summary = {
        "config": asdict(cfg),
        "times": {k: round(v, 1) for k, v in times.items()},
        "clean": _clean_row(report),
        "outputs": {
            "dataset": str(data), "checkpoint": str(run), "report": str(ev / "report.md"),
            "report_json": str(ev / "report.json"), "robustness_plot": str(ev / "robustness.png"),
            "contact_sheet": str(ev / "contact_sheet.png"), "video": str(video),
            "still": str(still),
        },
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, report)
    return summary


def _clean_row(report: dict) -> dict | None:
    for row in report.get("results", []):
        if row.get("corruption") == "none" and row.get("policy", report.get("policy")) != "expert":
            return row
    return None


def _print_summary(summary: dict, report: dict) -> None:
    print("\n== done in {total_s:.0f} s (record {collect_s:.0f} s, train {train_s:.0f} s, "
          "eval {eval_s:.0f} s, explain {explain_s:.0f} s)".format(**summary["times"]))
    print(f"\n{'condition':<14}{'|xte| m':>9}{'crashes':>9}{'complete %':>12}{'autonomy %':>12}")
    for row in report.get("results", []):
        name = f"{row['corruption']}:{row['severity']}" if row["corruption"] != "none" else "clean"
        print(f"{name:<14}{row['mean_abs_cross_track_m']:>9.3f}{row['crashes']:>9}"
              f"{row['completion_pct']:>12.1f}{row['autonomy_pct']:>12.1f}")
    print()
    for key, path in summary["outputs"].items():
        print(f"{key:>16}: {path}")


def config_from_args(args) -> DemoConfig:
    cfg = DemoConfig(out=args.out, seed=args.seed, workers=args.workers)
    if args.quick:  # a smoke run of the whole pipeline in a minute or two
        cfg.episodes, cfg.steps, cfg.epochs, cfg.dagger_rounds = 4, 120, 1, 0
        cfg.eval_episodes, cfg.eval_steps, cfg.severities = 1, 60, (4,)
        cfg.video_steps, cfg.max_frames = 20, 2000
    if cfg.workers < 1:
        raise UserError("--workers must be ≥ 1")
    return cfg
