"""Tables of docs/pretrained.md, generated from `driving eval --envs` outputs (never typed).

    python scripts/pretrained_tables.py --agent ncp-cfc=DIR[,DIR...] --agent ncp-ltc=DIR \
        --doc docs/pretrained.md

Each DIR is an `eval --envs` output (DIR/summary.json + DIR/<env>/report.json). The tables
replace the text between `<!-- tables:begin -->` and `<!-- tables:end -->` in --doc, and
every cell is checked against the issue-13 targets (clean: ≥ 98 % completion and ≤ 1
intervention per env; fog, rain, snow, night, motion blur, glare at severity 3: ≥ 90 %).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"
TARGET_90 = {"fog", "rain", "snow", "night", "motion_blur", "glare"}


def verdict(row: dict) -> str:
    """'pass' / 'MISS' against the target of the row's condition, '' where only reported."""
    if row["corruption"] == "none":
        ok = row["completion_pct"] >= 98.0 and row["crashes"] <= 1
    elif row["corruption"] in TARGET_90 and row["severity"] == 3:
        ok = row["completion_pct"] >= 90.0
    else:
        return ""
    return "pass" if ok else "**MISS**"


def load_rows(dirs: list[Path]) -> tuple[list[dict], list[dict]]:
    rows, settings = [], []
    for d in dirs:
        summary = json.loads((d / "summary.json").read_text())
        for env, rel in summary["reports"].items():
            rep = json.loads((d / rel).read_text())
            settings.append({"env": env, "checkpoint": rep["checkpoint"], **rep["settings"]})
            for r in rep["results"]:
                rows.append({"env": env, **r})
    return rows, settings


def agent_table(name: str, dirs: list[Path]) -> tuple[str, int]:
    rows, settings = load_rows(dirs)
    envs = list(dict.fromkeys(r["env"] for r in rows))
    conds = list(dict.fromkeys((r["corruption"], r["severity"]) for r in rows))
    by = {(r["env"], r["corruption"], r["severity"]): r for r in rows}
    head = "| condition | " + " | ".join(
        f"{e.rsplit('/', 1)[-1]}{' (test roads)' if 'RandomRoad' in e else ''}" for e in envs) + " |"
    lines = [f"### {name}", "", "Each cell: route completion % / interventions (episodes × steps); "
             "target verdict where the issue sets one.", "", head,
             "|---|" + "---|" * len(envs)]
    misses = 0
    for c, s in conds:
        label = "clean" if c == "none" else f"{c} {s}"
        cells = []
        for e in envs:
            r = by.get((e, c, s))
            if r is None:
                cells.append("not run")
                continue
            steps = next(x["steps"] for x in settings if x["env"] == e and
                         any(cond == (c if c == "none" else f"{c}:{s}") or cond == c
                             for cond in x["conditions"]))
            v = verdict(r)
            misses += v == "**MISS**"
            cells.append(f"{r['completion_pct']:.1f} % / {r['crashes']} ({r['episodes']} × {steps})"
                         + (f" {v}" if v else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    seeds = sorted({x["seed"] for x in settings})
    split = {x["env"]: x["env_kwargs"].get("split") for x in settings}
    lines += ["", f"Seed {', '.join(map(str, seeds))}; rule {settings[0]['intervention']} "
              f"(lane invasion > {settings[0]['lane_invasion_m']} m); RandomRoad split "
              f"{split.get('liquid_drive/RandomRoad-v0')}; {misses} target(s) missed.", ""]
    return "\n".join(lines), misses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", action="append", required=True, help="NAME=DIR[,DIR...]")
    p.add_argument("--doc", type=Path, required=True)
    args = p.parse_args(argv)
    parts = []
    for spec in args.agent:
        name, _, dirs = spec.partition("=")
        text, _ = agent_table(name, [Path(d) for d in dirs.split(",") if d])
        parts.append(text)
    doc = args.doc.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{args.doc} has no {BEGIN} ... {END} block")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    from policies.atomicio import atomic_write_text

    atomic_write_text(args.doc, head + BEGIN + "\n" + "\n".join(parts) + END + tail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
