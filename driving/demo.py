"""`driving demo`: from nothing to a driving, explained agent in one command.

The agent is judged on roads it never trained on. Each stage runs through the same code
path as its own CLI verb:

1. record expert drives on `RandomRoad-v0`, **train split** (even road seeds, the training
   looks; pure pursuit with DART noise on the executed steering), one new road per episode,
   with bends of radius 10–60 m (the racetrack's tightest bend is 10 m),
2. train an NCP-CfC agent by behaviour cloning (stateful 8-frame windows, the scheme that won
   in docs/training.md; bf16 CNN where the CPU runs it natively), then DAgger rounds on new
   train-split roads,
3. evaluate it closed loop with the strict intervention rule on the **held-out test roads**
   of `RandomRoad-v0` and on `Racetrack-v0` and `LaneKeeping-v0`, which it never saw:
   clean, under fog, rain, noise, snow, night and glare at two severities, and under dropped
   frames and jitter (`driving eval --envs`, beside the expert on the same episodes),
4. render an explanatory video of the agent driving the unseen racetrack in fog, and a still.

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

TRAIN_ENV = "liquid_drive/RandomRoad-v0"
HELD_OUT_ENVS = ("liquid_drive/RandomRoad-v0", "liquid_drive/Racetrack-v0",
                 "liquid_drive/LaneKeeping-v0")
CONDITIONS = ("none",
              "fog:2", "fog:4", "rain:2", "rain:4", "noise:2", "noise:4", "snow:2", "snow:4",
              "night:2", "night:4", "glare:2", "glare:4", "dropped_frames:3", "jitter:3")


@dataclass
class DemoConfig:
    """The demo's recipe (docs/pretrained.md says how it was chosen), sized for ≤ 10 min on an
    unloaded 2-core CPU machine, setup included (by the stages' unloaded rates; the end-to-end
    run on a loaded machine is in docs/pretrained.md, "The demo")."""

    out: str = "demo_out"
    env: str = TRAIN_ENV
    env_kwargs: dict = field(default_factory=lambda: {
        "split": "train", "track_kwargs": {"length": 800.0, "radius_m": [10, 60]}})
    policy: str = "ncp-cfc"
    seed: int = 0
    episodes: int = 32  # recorded expert drives, a new train-split road each
    steps: int = 400  # frames per recorded drive (10 Hz → 40 s)
    dart_noise: float = 0.15  # std of the executed-steering noise while recording
    epochs: int = 6
    max_frames: int = 6000  # frames run per epoch (windows drawn at random; burn-in included)
    seq_len: int = 8  # training window (docs/training.md: the window schemes compared)
    burn_in: int = 0  # leading frames of a window that only warm the state up (no loss)
    stateful: bool = True  # carry the state across an episode's consecutive windows
    precision: str = "auto"  # bf16 CNN where the CPU has native bf16, else fp32
    cnn_warmup_steps: int = 100
    dagger_rounds: int = 2
    dagger_episodes: int = 8
    dagger_steps: int = 400
    eval_envs: tuple[str, ...] = HELD_OUT_ENVS
    eval_conditions: tuple[str, ...] = CONDITIONS
    eval_episodes: int = 2
    eval_steps: int = 300
    eval_batch: int = 8
    video_env: str = "liquid_drive/Racetrack-v0"  # a track it never trained on
    video_steps: int = 200
    video_corruption: str = "fog:3"
    workers: int = 2
    threads: int = 2
    train_extra: list[str] = field(default_factory=list)


def _stage(title: str) -> float:
    print(f"\n== {title}", file=sys.stderr, flush=True)
    return time.perf_counter()


def _done(times: dict[str, float], key: str, t: float) -> None:
    times[key] = time.perf_counter() - t
    print(f"   ({key[:-2]} took {times[key]:.0f} s)", file=sys.stderr, flush=True)


def _run(argv: list[str]) -> None:
    from driving.cli import main

    print("   $ driving " + " ".join(argv), file=sys.stderr, flush=True)
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"`driving {argv[0]}` failed with exit code {code}")


def _training_done(run: Path) -> bool:
    return (run / "model.safetensors").exists() and (run / "DONE").exists()


def resolve_precision(precision: str) -> str:
    """'auto' → 'bf16' where the CPU runs bf16 natively (1.5–1.8× faster training,
    results/bench), else 'fp32'; 'fp32' / 'bf16' pass through."""
    if precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"demo precision must be auto, fp32 or bf16, got {precision!r}")
    if precision != "auto":
        return precision
    from policies.policy import supports_bf16

    return "bf16" if supports_bf16("cpu") else "fp32"


def commands(cfg: DemoConfig) -> dict[str, list[list[str]]]:
    """The CLI calls of every stage (also what TRAINED_WITH.md / docs quote)."""
    out = Path(cfg.out)
    data, run, ev = out / "data", out / "run", out / "eval"
    train = ["train", "--data", str(data), "--policy", cfg.policy, "--out", str(run),
             "--epochs", str(cfg.epochs), "--seq-len", str(cfg.seq_len), "--burn-in",
             str(cfg.burn_in), "--seed", str(cfg.seed), "--threads", str(cfg.threads),
             "--cnn-warmup-steps", str(cfg.cnn_warmup_steps),
             "--dagger-rounds", str(cfg.dagger_rounds), "--dagger-episodes",
             str(cfg.dagger_episodes), "--dagger-steps", str(cfg.dagger_steps),
             "--precision", resolve_precision(cfg.precision), *cfg.train_extra]
    if cfg.stateful:
        train.append("--stateful")
    if cfg.max_frames:
        train += ["--max-frames", str(cfg.max_frames)]
    explain = ["explain", "--checkpoint", str(run), "--env", cfg.video_env, "--corruption",
               cfg.video_corruption, "--seed", str(cfg.seed + 2000), "--force"]
    return {
        "collect": [["collect", "--env", cfg.env, "--episodes", str(cfg.episodes), "--steps",
                     str(cfg.steps), "--out", str(data), "--seed", str(cfg.seed), "--workers",
                     str(cfg.workers), "--dart-noise", str(cfg.dart_noise), "--env-kwargs",
                     json.dumps(cfg.env_kwargs, separators=(",", ":")), "--quiet"]],
        "train": [train],
        "eval": [["eval", "--checkpoint", str(run), "--envs", ",".join(cfg.eval_envs),
                  "--episodes", str(cfg.eval_episodes), "--steps", str(cfg.eval_steps),
                  "--corruptions", ",".join(cfg.eval_conditions), "--out", str(ev),
                  "--seed", str(cfg.seed + 1000), "--workers", str(cfg.workers),
                  "--batch-episodes", str(cfg.eval_batch), "--intervention", "strict",
                  "--force"]],
        "explain": [[*explain, "--steps", str(cfg.video_steps), "--out",
                     str(out / "explain_fog.mp4")],
                    [*explain, "--frame", str(min(60, cfg.video_steps - 1)), "--out",
                     str(out / "explain_fog.png")]],
    }


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; return a summary (also written to OUT/demo_summary.json)."""
    if cfg.env_kwargs.get("split", "train") != "train":
        raise UserError(f"the demo records on the train split, got split {cfg.env_kwargs['split']!r}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run, ev = out / "run", out / "eval"
    cmds = commands(cfg)
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    t = _stage(f"1/4 record {cfg.episodes} expert drives on {cfg.env} (train split)")
    _run(cmds["collect"][0])
    _done(times, "collect_s", t)

    t = _stage(f"2/4 train {cfg.policy} (behaviour cloning + {cfg.dagger_rounds} DAgger rounds)")
    if _training_done(run):
        print(f"   {run} is already trained: reusing it", file=sys.stderr)
    else:
        argv = list(cmds["train"][0])
        if (run / "last").exists():
            argv.append("--resume")
        elif run.exists():
            shutil.rmtree(run)  # a run killed before its first epoch: nothing to keep
        _run(argv)
        from policies.atomicio import atomic_write_text

        atomic_write_text(run / "DONE", "trained by driving demo\n")
    _done(times, "train_s", t)

    t = _stage("3/4 closed loop on roads it never trained on: held-out test roads, "
               "Racetrack, LaneKeeping; clean and under corruptions (strict rule)")
    _run(cmds["eval"][0])
    _done(times, "eval_s", t)

    t = _stage(f"4/4 explanatory video on {cfg.video_env} ({cfg.video_corruption})")
    for argv in cmds["explain"]:
        _run(argv)
    _done(times, "explain_s", t)
    times["total_s"] = time.perf_counter() - t_all

    summary_eval = json.loads((ev / "summary.json").read_text())
    summary = {
        "config": asdict(cfg),
        "times": {k: round(v, 1) for k, v in times.items()},
        "held_out": held_out_rows(summary_eval),
        "outputs": {
            "dataset": str(out / "data"), "checkpoint": str(run),
            "summary": str(ev / "summary.md"), "summary_json": str(ev / "summary.json"),
            **{f"report_{e.rsplit('/', 1)[-1]}": str(ev / p) for e, p in
               summary_eval.get("reports", {}).items()},
            "video": str(out / "explain_fog.mp4"), "still": str(out / "explain_fog.png"),
        },
    }
    from policies.atomicio import atomic_write_json

    atomic_write_json(out / "demo_summary.json", summary)
    print_summary(summary, file=sys.stdout)
    return summary


def held_out_rows(summary_eval: dict) -> list[dict]:
    """One row per (env, condition) of `driving eval --envs`' summary.json."""
    keep = ("env", "corruption", "severity", "episodes", "distance_m", "mean_abs_cross_track_m",
            "crashes", "completion_pct", "autonomy_pct")
    return [{k: r[k] for k in keep} for r in summary_eval.get("rows", [])]


def format_table(rows: list[dict]) -> str:
    """The held-out table as text: env × condition, interventions under the strict rule."""
    lines = [f"{'env':<15}{'condition':<18}{'episodes':>9}{'|xte| m':>9}{'interventions':>15}"
             f"{'complete %':>12}{'autonomy %':>12}"]
    for r in rows:
        cond = "clean" if r["corruption"] == "none" else f"{r['corruption']}:{r['severity']}"
        env = r["env"].rsplit("/", 1)[-1]
        xte = r["mean_abs_cross_track_m"]
        lines.append(f"{env:<15}{cond:<18}{r['episodes']:>9}"
                     f"{(float('nan') if xte is None else xte):>9.3f}{r['crashes']:>15}"
                     f"{r['completion_pct']:>12.1f}{r['autonomy_pct']:>12.1f}")
    return "\n".join(lines)


def print_summary(summary: dict, file=sys.stdout) -> None:
    t = summary["times"]
    print("\n== done in {total_s:.0f} s (record {collect_s:.0f} s, train {train_s:.0f} s, "
          "eval {eval_s:.0f} s, explain {explain_s:.0f} s)".format(**t), file=file)
    print("\nheld out (never trained on: RandomRoad test roads, Racetrack, LaneKeeping; "
          "strict intervention rule)", file=file)
    print(format_table(summary["held_out"]), file=file)
    print(file=file)
    for key, path in summary["outputs"].items():
        print(f"{key:>22}: {path}", file=file)


def config_from_args(args) -> DemoConfig:
    cfg = DemoConfig(out=args.out, seed=args.seed, workers=args.workers)
    if args.quick:  # a smoke run of the whole pipeline in a minute or two
        cfg.episodes, cfg.steps, cfg.epochs, cfg.dagger_rounds = 4, 120, 1, 0
        cfg.seq_len, cfg.burn_in, cfg.max_frames, cfg.cnn_warmup_steps = 8, 4, 1000, 20
        cfg.eval_episodes, cfg.eval_steps = 1, 60
        cfg.eval_conditions = ("none", "fog:4", "dropped_frames:3")
        cfg.video_steps = 20
        cfg.stateful = False
    if cfg.workers < 1:
        raise UserError(f"--workers must be ≥ 1, got {cfg.workers}")
    return cfg
