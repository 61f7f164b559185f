"""Closed-loop driving metrics, per episode and aggregated with 95% intervals.

Definitions (also in ``docs/evaluation.md``):

- ``mean_abs_cross_track_m``: time-weighted mean of |cross-track error| over the steps
  driven (weights = the step's elapsed seconds, so jittered steps count by duration).
- lane departure: |cross-track| exceeds ``half lane width − half car width`` (the car's
  edge crosses a lane line), counted once per excursion (rising edge);
  ``lane_departures_per_km`` = departures / km driven.
- intervention (``crashes`` in report.json, the name kept from the first schema): a
  collision, leaving the road, or (``strict`` rule, the default) a lane invasion — the
  car's edge more than ``lane_invasion_m`` past its own lane's line; see
  `driving.interventions`. The car is put back on the lane centre and the run goes on (the
  paper's manual recoveries). ``intervention_causes`` counts each cause.
- ``completion_pct``: distance driven before the first crash / distance driven in the
  episode × 100 — the share of the route that would have been completed had the first
  intervention ended the run (CARLA-style route completion). 100 without crashes.
- ``autonomy_pct``: PilotNet autonomy (1 − interventions·6 s / elapsed s)·100, clipped at 0
  (more than one intervention per 6 s).
- ``steering_rate``: mean |Δsteering|/Δt (1/s), ``steering_jerk``: mean |Δ(steering
  rate)|/Δt (1/s²) over the applied commands (normalised steering in [−1, 1]); the sequence
  restarts after each recovery.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driving.interventions import CAUSES

INTERVENTION_PENALTY_S = 6.0  # PilotNet: each intervention costs 6 s of autonomy

#: Keys of one result row in report.json (docs/evaluation.md, Outputs), in order.
SCHEMA_KEYS = (
    "corruption",
    "severity",
    "episodes",
    "distance_m",
    "mean_abs_cross_track_m",
    "lane_departures_per_km",
    "crashes",
    "completion_pct",
    "autonomy_pct",
)

#: Per-episode metrics that get a mean and a 95% interval over episodes.
EPISODE_METRICS = (
    "distance_m",
    "mean_abs_cross_track_m",
    "lane_departures_per_km",
    "crashes",
    "completion_pct",
    "autonomy_pct",
    "steering_rate",
    "steering_jerk",
)

# Two-sided 95% Student-t quantiles by degrees of freedom (scipy.stats.t.ppf(0.975, df)).
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
_T975_TAIL = ((40, 2.0211), (60, 2.0003), (120, 1.9799))


def t_quantile_975(df: int) -> float:
    """Two-sided 95% t quantile; table up to 30 df, then interpolation in 1/df toward 1.96."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= 30:
        return _T975[df - 1]
    pts = [(30, _T975[-1]), *_T975_TAIL, (math.inf, 1.959964)]
    for (d0, q0), (d1, q1) in zip(pts, pts[1:]):
        if df <= d1:
            x0, x1, x = 1 / d0, (0.0 if d1 == math.inf else 1 / d1), 1 / df
            return q0 + (q1 - q0) * (x - x0) / (x1 - x0)
    return 1.959964


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean and Student-t 95% interval of the mean (None for fewer than two values)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return float("nan"), None, None
    m = float(x.mean())
    if x.size < 2:
        return m, None, None
    half = t_quantile_975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return m, m - half, m + half


def lane_departure_threshold(lane_width_m: float, car_width_m: float) -> float:
    """|cross-track| beyond which the car's edge is over a lane line."""
    thr = lane_width_m / 2 - car_width_m / 2
    if thr <= 0:
        raise ValueError(f"car ({car_width_m} m) is not narrower than the lane ({lane_width_m} m)")
    return thr


@dataclass
class EpisodeRecorder:
    """Accumulates one closed-loop episode, step by step.

    Call ``step(cross_track_m, distance_increment_m, dt_s, steering)`` after every world
    step, ``crash()`` when the car left the road (before it is recovered), then
    ``summary()``.
    """

    departure_threshold_m: float
    elapsed_s: float = 0.0
    distance_m: float = 0.0
    abs_cte_time: float = 0.0
    departures: int = 0
    crashes: int = 0
    distance_before_first_crash_m: float | None = None
    steps: int = 0
    causes: dict[str, int] = field(default_factory=dict)
    _outside: bool = False
    _prev_steer: float | None = None
    _prev_rate: float | None = None
    _rates: list[float] = field(default_factory=list)
    _jerks: list[float] = field(default_factory=list)

    def step(self, cross_track_m: float, distance_increment_m: float, dt_s: float, steering: float) -> None:
        if not dt_s > 0:
            raise ValueError(f"step duration must be > 0 s, got {dt_s}")
        cte = abs(float(cross_track_m))
        self.steps += 1
        self.elapsed_s += dt_s
        self.distance_m += max(0.0, float(distance_increment_m))
        self.abs_cte_time += cte * dt_s
        outside = cte > self.departure_threshold_m
        if outside and not self._outside:
            self.departures += 1
        self._outside = outside
        steering = float(steering)
        if self._prev_steer is not None:
            rate = (steering - self._prev_steer) / dt_s
            self._rates.append(abs(rate))
            if self._prev_rate is not None:
                self._jerks.append(abs(rate - self._prev_rate) / dt_s)
            self._prev_rate = rate
        self._prev_steer = steering

    def crash(self, cause: str = "off_road") -> None:
        """An intervention: count it (by cause); the recovery restarts departure and steering
        tracking."""
        self.crashes += 1
        self.causes[cause] = self.causes.get(cause, 0) + 1
        if self.distance_before_first_crash_m is None:
            self.distance_before_first_crash_m = self.distance_m
        self._outside = False
        self._prev_steer = None
        self._prev_rate = None

    def summary(self) -> dict[str, float | int]:
        km = self.distance_m / 1000.0
        before = self.distance_m if self.distance_before_first_crash_m is None else self.distance_before_first_crash_m
        return {
            "steps": self.steps,
            "elapsed_s": self.elapsed_s,
            "distance_m": self.distance_m,
            "mean_abs_cross_track_m": self.abs_cte_time / self.elapsed_s if self.elapsed_s else float("nan"),
            "lane_departures": self.departures,
            "lane_departures_per_km": self.departures / km if km > 0 else float("nan"),
            "crashes": self.crashes,
            "completion_pct": 100.0 * before / self.distance_m if self.distance_m > 0 else 0.0,
            "autonomy_pct": autonomy_pct(self.crashes, self.elapsed_s),
            "steering_rate": float(np.mean(self._rates)) if self._rates else 0.0,
            "steering_jerk": float(np.mean(self._jerks)) if self._jerks else 0.0,
            "intervention_causes": {c: int(self.causes.get(c, 0)) for c in CAUSES},
        }


def fold_steps(steps: Iterable[Any],
               departure_threshold_m: float | Callable[[Mapping[str, Any]], float]) -> dict[str, Any]:
    """Per-episode metrics of a drive (`driving.rollout.Step` records, in order).

    ``departure_threshold_m`` may be a function of the episode's first ``info`` (the env's
    lane and car widths are known only once it has been reset).
    """
    rec: EpisodeRecorder | None = None
    held = 0
    for st in steps:
        if rec is None:
            thr = departure_threshold_m(st.info) if callable(departure_threshold_m) else departure_threshold_m
            rec = EpisodeRecorder(float(thr))
        rec.step(st.next_info["cross_track_m"], st.distance_m, st.dt_s, st.commanded)
        held += 0 if st.delivered else 1
        if st.intervention is not None:
            rec.crash(st.intervention)
    if rec is None:
        raise ValueError("a drive without steps has no metrics")
    out = rec.summary()
    out["held_frames"] = held
    return out


def autonomy_pct(interventions: int, elapsed_s: float) -> float:
    """PilotNet autonomy: (1 − interventions·6 s / elapsed s)·100, clipped to [0, 100]."""
    if elapsed_s <= 0:
        return float("nan")
    return float(max(0.0, (1.0 - interventions * INTERVENTION_PENALTY_S / elapsed_s) * 100.0))


def aggregate(corruption: str, severity: int, episodes: list[dict]) -> dict:
    """One report.json result row from per-episode summaries.

    ``distance_m`` and ``crashes`` are totals over the episodes; every other schema metric
    is the mean over episodes (each episode weighs the same). Added keys: ``steering_rate``,
    ``steering_jerk``, ``crashes_per_episode``, ``ci95`` (metric → [low, high] of the mean
    over episodes, null with one episode) and ``per_episode`` (metric → list) for
    `driving compare`.
    """
    if not episodes:
        raise ValueError("no episodes to aggregate")
    per = {k: [float(e[k]) for e in episodes] for k in EPISODE_METRICS}
    per["seed"] = [e.get("seed") for e in episodes]
    row: dict = {"corruption": corruption, "severity": int(severity), "episodes": len(episodes)}
    ci: dict[str, list[float] | None] = {}
    for k in EPISODE_METRICS:
        m, lo, hi = mean_ci95(per[k])
        ci[k] = None if lo is None else [lo, hi]
        row[k] = m
    row["distance_m"] = float(sum(per["distance_m"]))
    row["crashes"] = int(sum(e["crashes"] for e in episodes))
    row["crashes_per_episode"] = row["crashes"] / len(episodes)
    if all("intervention_causes" in e for e in episodes):
        row["intervention_causes"] = {c: int(sum(e["intervention_causes"].get(c, 0) for e in episodes))
                                      for c in CAUSES}
    row["ci95"] = ci
    row["per_episode"] = per
    ordered = {k: row[k] for k in SCHEMA_KEYS}
    ordered.update({k: v for k, v in row.items() if k not in ordered})
    return ordered
