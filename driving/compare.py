"""Compare several evaluation reports: one table and one set of robustness curves.

Intervals are recomputed from the per-episode values stored in each report.json
(``results[i]["per_episode"]``): mean and Student-t 95% interval over episodes. With the
same ``--seed`` the reports share their episodes, so differences between policies are
paired; the table says when they do not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from driving.metrics import mean_ci95
from driving.report import PLOT_METRICS, _fmt
from policies.atomicio import atomic_save_figure, atomic_write_json, atomic_write_text

#: Metrics compared (per-episode key, label, format); crashes are per episode here.
COMPARE_METRICS = (
    ("mean_abs_cross_track_m", "mean |CTE| (m)", "{:.3f}"),
    ("lane_departures_per_km", "departures /km", "{:.2f}"),
    ("crashes", "crashes /episode", "{:.2f}"),
    ("completion_pct", "completion %", "{:.1f}"),
    ("autonomy_pct", "autonomy %", "{:.1f}"),
    ("steering_jerk", "jerk (1/s²)", "{:.2f}"),
)


def load_report(path: str | Path) -> dict:
    """report.json from a directory (or the file itself); ValueError if absent or unusable."""
    p = Path(path)
    f = p / "report.json" if p.is_dir() else p
    if not f.is_file():
        raise ValueError(f"{p} has no report.json; pass directories written by `driving eval --out DIR`")
    try:
        report = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{f} is not valid JSON: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        raise ValueError(f"{f} is not a `driving eval` report (no results list)")
    for row in report["results"]:
        if "per_episode" not in row:
            raise ValueError(f"{f} has no per-episode values; re-run `driving eval` with this version")
    return report


def _stats(row: dict, key: str) -> dict[str, Any]:
    values = row["per_episode"].get(key, [])
    m, lo, hi = mean_ci95([v for v in values if v is not None])
    return {"mean": m, "ci95": None if lo is None else [lo, hi], "n": len(values)}


def _labels(reports: list[dict], dirs: list[Path]) -> list[str]:
    base = [str(r.get("policy", "policy")) for r in reports]
    return [b if base.count(b) == 1 else f"{b} ({d.name})" for b, d in zip(base, dirs)]


def _summary(row_list: list[dict], key: str) -> dict[str, Any]:
    """Mean over a corruption's severities, per episode, then mean and interval over episodes."""
    per = [r["per_episode"].get(key, []) for r in row_list]
    n = min(len(p) for p in per)
    episode_means = [float(np.nanmean([float(np.nan if p[i] is None else p[i]) for p in per])) for i in range(n)]
    m, lo, hi = mean_ci95(episode_means)
    return {"mean": m, "ci95": None if lo is None else [lo, hi], "n": n}


def compare(report_dirs: list[str | Path], out_dir: str | Path, plots: bool = True) -> dict:
    """Write OUT/compare.json, OUT/compare.md and OUT/compare_<metric>.png; return the data."""
    if len(report_dirs) < 1:
        raise ValueError("give at least one report directory")
    dirs = [Path(d) for d in report_dirs]
    reports = [load_report(d) for d in dirs]
    labels = _labels(reports, dirs)
    conds: list[tuple[str, int]] = []
    for r in reports:
        for row in r["results"]:
            c = (row["corruption"], int(row["severity"]))
            if c not in conds:
                conds.append(c)
    table = []
    for c in conds:
        for label, r in zip(labels, reports):
            row = next((x for x in r["results"] if (x["corruption"], int(x["severity"])) == c), None)
            if row is None:
                continue
            table.append({"policy": label, "corruption": c[0], "severity": c[1],
                          **{k: _stats(row, k) for k, _, _ in COMPARE_METRICS}})
    summary = []
    corr_names = [c for c in dict.fromkeys(n for n, _ in conds) if c != "none"]
    for name in corr_names:
        for label, r in zip(labels, reports):
            rows = [x for x in r["results"] if x["corruption"] == name]
            if rows:
                summary.append({"policy": label, "corruption": name, "severities": [x["severity"] for x in rows],
                                **{k: _summary(rows, k) for k, _, _ in COMPARE_METRICS}})
    seeds = {json.dumps((r.get("settings") or {}).get("episode_seeds")) for r in reports}
    envs = sorted({str(r.get("env")) for r in reports})
    data = {
        "policies": labels,
        "reports": [str(d) for d in dirs],
        "envs": envs,
        "paired_episodes": len(seeds) == 1 and "null" not in seeds,
        "table": table,
        "summary": summary,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "compare.json", data)  # NaN (no finite value) is written as null
    atomic_write_text(out / "compare.md", _markdown(data))
    if plots:
        plot_compare(labels, reports, out)
    return data


def _cell(stat: dict, fmt: str) -> str:
    s = _fmt(stat["mean"], fmt)
    if stat["ci95"]:
        s += f" [{_fmt(stat['ci95'][0], fmt)}, {_fmt(stat['ci95'][1], fmt)}]"
    return s


def _markdown(data: dict) -> str:
    head = ["policy", "corruption", "sev", *[lab for _, lab, _ in COMPARE_METRICS]]
    lines = [
        f"# Comparison: {', '.join(data['policies'])}",
        "",
        f"Env(s): {', '.join(data['envs'])}. Mean over episodes [95% interval]. Episodes are "
        + ("the same for every policy (paired)." if data["paired_episodes"]
           else "NOT the same across reports (different seeds/episodes): compare with care.")
        + (" Reports come from different envs!" if len(data["envs"]) > 1 else ""),
        "",
        "## Mean over severities, per corruption",
        "",
        "| " + " | ".join(head[:2] + head[3:]) + " |",
        "|" + "---|" * (len(head) - 1),
    ]
    for r in data["summary"]:
        lines.append("| " + " | ".join([r["policy"], r["corruption"],
                                         *[_cell(r[k], f) for k, _, f in COMPARE_METRICS]]) + " |")
    lines += ["", "## Every condition", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in data["table"]:
        lines.append("| " + " | ".join([r["policy"], r["corruption"], str(r["severity"]),
                                         *[_cell(r[k], f) for k, _, f in COMPARE_METRICS]]) + " |")
    lines += ["", "Curves: `compare_<metric>.png` (one panel per corruption, one line per policy).", ""]
    return "\n".join(lines)


def plot_compare(labels: list[str], reports: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c for c in dict.fromkeys(row["corruption"] for r in reports for row in r["results"]) if c != "none"]
    if not names:
        names = ["none"]
    written = []
    plot_labels = {k: lab for k, lab, _, _ in PLOT_METRICS}
    for key, label, _ in COMPARE_METRICS:
        ncol = min(4, len(names))
        nrow = int(np.ceil(len(names) / ncol))
        fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.2 * nrow), squeeze=False)
        for ax, name in zip(axes.ravel(), names):
            for lab, r in zip(labels, reports):
                rows = [x for x in r["results"] if x["corruption"] == "none"] if name != "none" else []
                rows += [x for x in r["results"] if x["corruption"] == name]
                if not rows:
                    continue
                xs = [int(x["severity"]) for x in rows]
                st = [_stats(x, key) for x in rows]
                y = np.array([s["mean"] for s in st], float)
                lo = np.array([s["ci95"][0] if s["ci95"] else np.nan for s in st], float)
                hi = np.array([s["ci95"][1] if s["ci95"] else np.nan for s in st], float)
                (ln,) = ax.plot(xs, y, marker="o", ms=3, label=lab)
                ax.fill_between(xs, lo, hi, color=ln.get_color(), alpha=0.15, linewidth=0)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("severity")
            ax.set_ylabel(plot_labels.get(key, label) if key != "crashes" else "crashes per episode", fontsize=8)
            ax.grid(alpha=0.3)
        for ax in axes.ravel()[len(names):]:
            ax.axis("off")
        handles, leg = axes.ravel()[0].get_legend_handles_labels()
        fig.suptitle(f"{label}: mean and 95% interval over episodes", y=0.99, fontsize=10)
        fig.legend(handles, leg, loc="upper center", bbox_to_anchor=(0.5, 0.95),
                   ncol=min(6, len(leg)), fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 0.86))
        p = out / f"compare_{key}.png"
        try:
            atomic_save_figure(p, fig, dpi=100)
        finally:
            plt.close(fig)
        written.append(p)
    return written
