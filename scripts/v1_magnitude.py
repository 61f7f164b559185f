"""Why v1's noise magnitudes do not replicate under protocol v2 (issue 16).

v1 scored NCP-LTC at 100 / 88 / 64 % route completion under noise σ² 0.1 / 0.2 / 0.3; v2
scores it 12–28 %. The two protocols differ in the evaluation as well as the training:
v1 used the lenient intervention rule (collision or off-road only), 3 episodes of 200 steps
(20 s) from eval seed 1000; v2 uses the strict rule (a lane invasion counts too), 45 s roads
from seed 5000. This script drives the *same* checkpoint under each combination of those
three choices, so what each choice does to the numbers is measured, not argued:

    python scripts/v1_magnitude.py --checkpoint ncp-ltc=runs/v2/runs/ncp-ltc-s1 \\
        --checkpoint lstm=runs/v2/runs/lstm-s1 --out results/v1-magnitude

Each grid point is one `driving eval` (10 test-split episodes, clean and noise 3-5); a point
with a report is skipped, so an interrupted run resumes. Writes OUT/table.md and
OUT/summary.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from policies.atomicio import atomic_write_json, atomic_write_text  # noqa: E402

RULES = ("lenient", "strict")  # v1, v2
STEPS = (200, 450)  # v1: 20 s, v2: 45 s at 10 Hz
SEEDS = (1000, 5000)  # v1's eval seed, v2's first road seed
CONDITIONS = (("none", 0), ("noise", 3), ("noise", 4), ("noise", 5))
KEYS = tuple(f"{c}:{s}" if s else c for c, s in CONDITIONS)  # "none", "noise:3", ...


def point_dir(out: Path, policy: str, rule: str, steps: int, seed: int) -> Path:
    return out / f"{policy}-{rule}-{steps}-{seed}"


def run_point(ckpt: str, d: Path, rule: str, steps: int, seed: int, episodes: int, env: str) -> None:
    if (d / "report.json").is_file():
        return
    cmd = [sys.executable, "-m", "driving", "eval", "--checkpoint", ckpt, "--env", env,
           "--env-config", json.dumps({"split": "test"}), "--episodes", str(episodes),
           "--steps", str(steps), "--seed", str(seed), "--corruptions", "none,noise:3-5",
           "--intervention", rule, "--no-plots", "--no-expert-reference", "--out", str(d), "--force"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={"OMP_NUM_THREADS": "1", **os.environ})


def read_point(d: Path) -> dict:
    rows = {(r["corruption"], r["severity"]): r for r in json.loads((d / "report.json").read_text())["results"]}
    return {k: {"completion_pct": rows[cs]["completion_pct"],
                "interventions_per_episode": rows[cs]["crashes_per_episode"],
                "causes": rows[cs]["intervention_causes"]}
            for k, cs in zip(KEYS, CONDITIONS, strict=True)}


def table(summary: list[dict]) -> str:
    head = ("| policy | rule | steps | eval seed | clean | σ² 0.1 | σ² 0.2 | σ² 0.3 "
            "| interventions / episode at σ² 0.1 / 0.2 / 0.3 |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for p in summary:
        r = p["results"]
        comp = " | ".join(f"{r[c]['completion_pct']:.0f} %" for c in KEYS)
        ints = " / ".join(f"{r[c]['interventions_per_episode']:.1f}" for c in KEYS[1:])
        lines.append(f"| {p['policy']} | {p['rule']} | {p['steps']} | {p['seed']} | {comp} | {ints} |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", action="append", required=True, metavar="NAME=RUN",
                    help="a policy name and its run folder (repeat)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--env", default="liquid_drive/RandomRoad-v0")
    a = ap.parse_args(argv)
    pairs = []
    for item in a.checkpoint:
        name, sep, path = item.partition("=")
        if not sep or not Path(path, "model.safetensors").is_file():
            ap.error(f"--checkpoint {item!r}: give NAME=RUN where RUN holds model.safetensors")
        pairs.append((name, path))
    a.out.mkdir(parents=True, exist_ok=True)
    summary = []
    for (name, ckpt), rule, steps, seed in itertools.product(pairs, RULES, STEPS, SEEDS):
        d = point_dir(a.out, name, rule, steps, seed)
        run_point(ckpt, d, rule, steps, seed, a.episodes, a.env)
        summary.append({"policy": name, "checkpoint": ckpt, "rule": rule, "steps": steps, "seed": seed,
                        "episodes": a.episodes, "results": read_point(d)})
    atomic_write_json(a.out / "summary.json", summary, indent=1)
    atomic_write_text(a.out / "table.md", table(summary))
    print(table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
