"""Human-readable outputs of an evaluation: report.md, robustness plots, contact sheet.

Everything here reads the report.json structure only (so `driving compare` and users can
regenerate it); plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from driving import corruptions as C
from policies.atomicio import atomic_save_figure, atomic_write_png, atomic_write_text

#: (key in a result row, axis label, short column title, format) for tables and plots.
PLOT_METRICS = (
    ("mean_abs_cross_track_m", "mean |cross-track error| (m)", "mean abs CTE (m)", "{:.3f}"),
    ("lane_departures_per_km", "lane departures per km", "departures /km", "{:.2f}"),
    ("crashes_per_episode", "crashes per episode", "crashes /ep", "{:.2f}"),
    ("completion_pct", "route completion (%)", "completion %", "{:.1f}"),
    ("autonomy_pct", "autonomy (%)", "autonomy %", "{:.1f}"),
    ("steering_jerk", "steering jerk (1/s²)", "jerk (1/s²)", "{:.2f}"),
)


def _fmt(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return fmt.format(v)


def _ci_half(row: dict, key: str) -> float | None:
    ci = (row.get("ci95") or {}).get(key)
    if not ci or ci[0] is None:
        return None
    return (ci[1] - ci[0]) / 2


def _cell(row: dict, key: str, fmt: str) -> str:
    v = row.get(key)
    half = _ci_half(row, key)
    return _fmt(v, fmt) + ("" if half is None else " ± " + _fmt(half, fmt))


def results_table(rows: Sequence[dict], label: str | None = None) -> list[str]:
    head = ["corruption", "sev", "episodes", "distance (m)", "mean abs CTE (m)", "departures /km",
            "crashes", "completion %", "autonomy %", "jerk (1/s²)"]
    if label:
        head = ["policy", *head]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            str(r["corruption"]), str(r["severity"]), str(r["episodes"]), _fmt(r["distance_m"], "{:.0f}"),
            _cell(r, "mean_abs_cross_track_m", "{:.3f}"), _cell(r, "lane_departures_per_km", "{:.2f}"),
            str(r["crashes"]), _cell(r, "completion_pct", "{:.1f}"), _cell(r, "autonomy_pct", "{:.1f}"),
            _cell(r, "steering_jerk", "{:.2f}"),
        ]
        if label:
            cells = [label, *cells]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_markdown(report: dict, path: Path) -> None:
    s = report.get("settings", {})
    lines = [
        f"# Closed-loop evaluation: {report['policy']} on {report['env']}",
        "",
        f"Checkpoint `{report.get('checkpoint')}`; {s.get('episodes', '?')} episodes of "
        f"{s.get('steps', '?')} control steps per condition, seed {s.get('seed', '?')} "
        f"(episodes are the same for every condition). Lane departure when |cross-track| > "
        f"{_fmt(s.get('lane_departure_threshold_m'), '{:.2f}')} m. Values are means over "
        "episodes ± half the 95% interval; distance and crashes are totals. Definitions: "
        "docs/evaluation.md.",
        "",
        *results_table(report["results"]),
        "",
    ]
    ref = report.get("reference")
    if ref:
        lines += [
            f"## Reference: {ref['policy']} on the same episodes",
            "",
            "The expert steers from privileged lane state, so image corruptions do not reach it; "
            "it is shown clean and under the timing faults (it holds its action on dropped frames).",
            "",
            *results_table(ref["results"]),
            "",
        ]
    lines += ["Plots: `robustness.png` (all metrics), `plots/*.png`; frames: `contact_sheet.png`.", ""]
    atomic_write_text(Path(path), "\n".join(lines))


def _curves(rows: Sequence[dict], key: str) -> dict[str, tuple[list[int], list[float], list[float | None]]]:
    """corruption → (severities, values, CI half-widths); the clean row is each curve's 0."""
    clean = next((r for r in rows if r["corruption"] == "none"), None)
    out: dict[str, tuple[list[int], list[float], list[float | None]]] = {}
    for r in rows:
        if r["corruption"] == "none":
            continue
        xs, ys, es = out.setdefault(r["corruption"], ([], [], []))
        if not xs and clean is not None:
            xs.append(0)
            ys.append(clean.get(key))
            es.append(_ci_half(clean, key))
        xs.append(r["severity"])
        ys.append(r.get(key))
        es.append(_ci_half(r, key))
    if not out and clean is not None:
        out["none"] = ([0], [clean.get(key)], [_ci_half(clean, key)])
    return out


def _draw_metric(ax: Any, series: dict[str, dict], key: str, label: str, reference: float | None) -> None:
    """series: line label → rows. One line per label with a shaded 95% interval."""
    for name, rows in series.items():
        for corr, (xs, ys, es) in _curves(rows, key).items():
            y = np.array([np.nan if v is None else v for v in ys], dtype=float)
            e = np.array([np.nan if v is None else v for v in es], dtype=float)
            line_label = corr if len(series) == 1 else f"{name}: {corr}"
            (ln,) = ax.plot(xs, y, marker="o", ms=3, label=line_label)
            if np.isfinite(e).any():
                ax.fill_between(xs, y - e, y + e, color=ln.get_color(), alpha=0.15, linewidth=0)
    if reference is not None and np.isfinite(reference):
        ax.axhline(reference, color="k", ls="--", lw=1, label="expert (clean)")
    ax.set_xlabel("severity")
    ax.set_ylabel(label)
    ax.set_xticks(range(0, C.MAX_SEVERITY + 1))
    ax.grid(alpha=0.3)


def _reference_value(report: dict, key: str) -> float | None:
    ref = report.get("reference") or {}
    for r in ref.get("results", []):
        if r["corruption"] == "none":
            return r.get(key)
    return None


def plot_report(report: dict, out_dir: Path) -> list[Path]:
    """Each metric against severity, one line per corruption: plots/<metric>.png + robustness.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    written = []
    series = {report["policy"]: report["results"]}
    for key, label, _, _ in PLOT_METRICS:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        _draw_metric(ax, series, key, label, _reference_value(report, key))
        ax.set_title(f"{report['policy']} on {report['env']}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / "plots" / f"{key}.png"
        try:
            atomic_save_figure(p, fig, dpi=110)
        finally:
            plt.close(fig)
        written.append(p)
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (key, label, _, _) in zip(axes.ravel(), PLOT_METRICS):
        _draw_metric(ax, series, key, label, _reference_value(report, key))
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.suptitle(f"{report['policy']} on {report['env']}: robustness (shaded: 95% interval)",
                 y=0.99, fontsize=10)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.955),
               ncol=min(8, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.91))
    p = out_dir / "robustness.png"
    try:
        atomic_save_figure(p, fig, dpi=100)
    finally:
        plt.close(fig)
    written.append(p)
    return written


def contact_sheet(frame: np.ndarray, depth: np.ndarray, names: Sequence[str], seed: int = 0,
                  scale: int = 2) -> np.ndarray:
    """RGB grid: one row per corruption, one column per severity 0..5, labelled."""
    h, w = frame.shape[:2]
    ch, cw = h * scale, w * scale
    label_w, head_h, pad = 110, 22, 4
    rows = len(names)
    cols = C.MAX_SEVERITY + 1
    sheet = np.full((head_h + rows * (ch + pad), label_w + cols * (cw + pad), 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for s in range(cols):
        x = label_w + s * (cw + pad)
        cv2.putText(sheet, f"severity {s}", (x + 4, 16), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for i, name in enumerate(names):
        y = head_h + i * (ch + pad)
        cv2.putText(sheet, name, (4, y + ch // 2 + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for s in range(cols):
            img = C.apply(name, frame, depth, s, np.random.default_rng([seed, i, s]))
            big = cv2.resize(img, (cw, ch), interpolation=cv2.INTER_NEAREST)
            x = label_w + s * (cw + pad)
            sheet[y : y + ch, x : x + cw] = big
    return sheet


def save_contact_sheet(path: Path, frame: np.ndarray, depth: np.ndarray, names: Sequence[str],
                       seed: int = 0) -> Path:
    return atomic_write_png(Path(path), contact_sheet(frame, depth, names, seed=seed))
