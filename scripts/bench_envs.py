"""Benchmark the dashcam simulator on one core.

Targets (issue 3, kept by issue 13): render only at 78x200 with depth >= 1,000 frames/s (the
racetrack scene of appearance draw 0, and the mean over 8 draws); a full env step on
the racetrack (physics + dashcam + depth + expert) >= 500 steps/s. Also reports the
expert's lane keeping over full episodes (mean/max |cross-track error|, off-road steps). Each measurement is
repeated for several rounds and the best round is kept (other processes on a shared
machine only ever slow a round down; short rounds, many of them, find the quiet moments); CPU time of this process is reported beside wall
time, since the targets are about one core.

    .venv/bin/python scripts/bench_envs.py --json bench_envs.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402


def _timed(fn, n: int, rounds: int) -> dict:
    best_wall, best_cpu = np.inf, np.inf
    for _ in range(rounds):
        w0, c0 = time.perf_counter(), time.process_time()
        fn(n)
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return {"n": n, "rounds": rounds, "per_s_wall": n / best_wall, "per_s_cpu": n / best_cpu,
            "ms_wall": 1e3 * best_wall / n}


def bench_render(height: int, width: int, n: int, rounds: int, seed: int = 0) -> dict:
    """The racetrack's scene of appearance draw `seed` (its camera roll included)."""
    from envs.camera import CameraSpec, DashcamRenderer
    from envs.scenery import sample_scenery
    from envs.tracks import make_racetrack

    tr = make_racetrack()
    sc = sample_scenery(tr, np.random.default_rng(seed))
    roll = sc.appearance.camera_roll_deg if getattr(sc, "appearance", None) is not None else 0.0
    r = DashcamRenderer(tr, sc, CameraSpec(height=height, width=width, roll_deg=roll))
    poses = [tr.pose_at(s, 0.3 * np.sin(s)) for s in np.linspace(0, tr.length, 997)]
    veh = [(tr.pose_at(40.0, -4.0)[0], tr.pose_at(40.0)[1], 5.0, 2.0, (200, 40, 40))]

    def run(k):
        for i in range(k):
            p, h = poses[i % len(poses)]
            r.render(p, h, veh)

    run(50)
    return _timed(run, n, rounds)


def bench_render_looks(height: int, width: int, n: int, rounds: int, looks: int = 8) -> dict:
    """`bench_render` over `looks` appearance draws (surfaces, markings, shoulders, shadows,
    clutter differ): the mean and the slowest look, frames/s."""
    per = [bench_render(height, width, n, rounds, seed) for seed in range(looks)]
    out = {k: float(np.mean([p[k] for p in per])) for k in ("per_s_wall", "per_s_cpu", "ms_wall")}
    out.update(n=n, rounds=rounds, looks=looks, min_per_s_cpu=float(min(p["per_s_cpu"] for p in per)),
               per_look_per_s_cpu=[round(p["per_s_cpu"]) for p in per])
    return out


def bench_step(env_id: str, n: int, rounds: int, **kw) -> dict:
    import gymnasium as gym

    import envs  # noqa: F401

    env = gym.make(env_id, **kw)
    state = {"info": env.reset(seed=0)[1]}

    def run(k):
        info = state["info"]
        for _ in range(k):
            _, _, term, trunc, info = env.step(np.array([info["expert_steering"]], np.float32))
            if term or trunc:
                _, info = env.reset()
        state["info"] = info

    run(20)
    out = _timed(run, n, rounds)
    env.close()
    return out


def expert_quality(env_id: str, seeds: int) -> dict:
    """The expert over full episodes (a lap budget of 1,500 steps on the loop)."""
    import gymnasium as gym

    import envs  # noqa: F401

    env = gym.make(env_id, max_steps=1500, camera={"height": 8, "width": 16})
    per = []
    for seed in range(seeds):
        _, info = env.reset(seed=seed)
        ctes, off = [], 0
        while True:
            _, _, term, trunc, info = env.step(np.array([info["expert_steering"]], np.float32))
            ctes.append(abs(info["cross_track_m"]))
            off += int(not info["on_road"])
            if term or trunc:
                break
        per.append({"seed": seed, "steps": len(ctes), "mean_abs_cte_m": float(np.mean(ctes)),
                    "max_abs_cte_m": float(np.max(ctes)), "off_road_steps": off,
                    "lap_progress": float(info["lap_progress"])})
    return {"seeds": per, "mean_abs_cte_m": float(np.mean([p["mean_abs_cte_m"] for p in per])),
            "max_abs_cte_m": float(np.max([p["max_abs_cte_m"] for p in per])),
            "off_road_steps": int(sum(p["off_road_steps"] for p in per))}


def bench_physics(n: int, rounds: int) -> dict:
    """One racetrack step without the camera: 3 physics sub-steps, lane tracking, expert."""
    import gymnasium as gym

    import envs  # noqa: F401

    env = gym.make("liquid_drive/Racetrack-v0").unwrapped
    env.reset(seed=0)
    sub = int(round(env.config["simulation_frequency"] / env.config["policy_frequency"]))
    h = 1.0 / env.config["simulation_frequency"]

    def run(k):
        for _ in range(k):
            a = env.expert_action()
            for _ in range(sub):
                env.ego.action = {"steering": a * np.pi / 4, "acceleration": env.target_speed - env.ego.speed}
                env.road.step(h)
            env._update_lane_state()

    run(20)
    return _timed(run, n, rounds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    ap.add_argument("--frames", type=int, default=1000, help="frames/steps per round")
    ap.add_argument("--rounds", type=int, default=7, help="rounds; the best is kept")
    ap.add_argument("--expert-seeds", type=int, default=3,
                    help="full expert episodes per env for the quality numbers (0 = skip)")
    ap.add_argument("--only", metavar="PREFIX", default="",
                    help="run only the measurements whose name starts with PREFIX (e.g. render)")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    jobs = [
        ("render_78x200_depth", lambda: bench_render(78, 200, args.frames, args.rounds)),
        ("render_78x200_depth_8_looks", lambda: bench_render_looks(78, 200, args.frames // 4, args.rounds)),
        ("render_156x400_depth", lambda: bench_render(156, 400, args.frames // 2, args.rounds)),
        ("step_racetrack", lambda: bench_step("liquid_drive/Racetrack-v0", args.frames, args.rounds)),
        ("step_lanekeeping", lambda: bench_step("liquid_drive/LaneKeeping-v0", args.frames, args.rounds)),
        ("step_randomroad", lambda: bench_step("liquid_drive/RandomRoad-v0", args.frames, args.rounds)),
        ("racetrack_physics_expert_no_camera", lambda: bench_physics(args.frames, args.rounds)),
    ]
    jobs = [(n, j) for n, j in jobs if n.startswith(args.only)]
    results = {}
    for name, job in tqdm(jobs, desc="bench_envs", file=sys.stderr):
        results[name] = job()
        r = results[name]
        tqdm.write(f"{name:38s} {r['per_s_wall']:8.0f}/s wall  {r['per_s_cpu']:8.0f}/s cpu  "
                   f"({r['ms_wall']:.3f} ms)", file=sys.stderr)
    expert = {}
    if args.expert_seeds > 0:
        import envs

        for eid in tqdm(envs.ENV_IDS, desc="expert", file=sys.stderr):
            expert[eid] = q = expert_quality(eid, args.expert_seeds)
            tqdm.write(f"expert {eid:30s} mean|cte| {q['mean_abs_cte_m']:.3f} m  max {q['max_abs_cte_m']:.3f} m  "
                       f"off-road steps {q['off_road_steps']}", file=sys.stderr)
    targets = {
        "render_78x200_depth_per_s": 1000,
        "step_racetrack_per_s": 500,
    }
    report = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpu_count": os.cpu_count(), "opencv": cv2.__version__},
        "targets": targets,
        "met": {k: results[r]["per_s_cpu"] >= v for k, r, v in (
            ("render_78x200_depth", "render_78x200_depth", 1000),
            ("render_78x200_depth_8_looks", "render_78x200_depth_8_looks", 1000),
            ("step_racetrack", "step_racetrack", 500)) if r in results},
        "results": results,
        "expert": expert,
    }
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(report, f, indent=2)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
