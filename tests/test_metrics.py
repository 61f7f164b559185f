"""Metric arithmetic on hand-made step sequences."""

import math

import numpy as np
import pytest

from driving.metrics import (
    SCHEMA_KEYS,
    EpisodeRecorder,
    aggregate,
    autonomy_pct,
    lane_departure_threshold,
    mean_ci95,
    t_quantile_975,
)


def test_threshold_is_half_lane_minus_half_car():
    assert lane_departure_threshold(4.0, 2.0) == 1.0
    assert lane_departure_threshold(3.5, 1.8) == pytest.approx(0.85)
    with pytest.raises(ValueError):
        lane_departure_threshold(2.0, 2.0)


def test_episode_recorder_by_hand():
    r = EpisodeRecorder(departure_threshold_m=1.0)
    # 10 m per 0.5 s step; cross-track 0, 0.5, 1.5 (out), 1.2 (still out), 0.2, 1.1 (out again)
    ctes = [0.0, 0.5, 1.5, 1.2, 0.2, 1.1]
    steer = [0.0, 0.1, 0.3, 0.3, 0.0, -0.2]
    for c, s in zip(ctes, steer):
        r.step(c, 10.0, 0.5, s)
    out = r.summary()
    assert out["distance_m"] == 60.0 and out["elapsed_s"] == 3.0 and out["steps"] == 6
    assert out["mean_abs_cross_track_m"] == pytest.approx(np.mean(np.abs(ctes)))
    assert out["lane_departures"] == 2  # two excursions, not three out-of-lane steps
    assert out["lane_departures_per_km"] == pytest.approx(2 / 0.06)
    assert out["crashes"] == 0 and out["completion_pct"] == 100.0 and out["autonomy_pct"] == 100.0
    rates = np.diff(steer) / 0.5
    assert out["steering_rate"] == pytest.approx(np.abs(rates).mean())
    assert out["steering_jerk"] == pytest.approx(np.abs(np.diff(rates) / 0.5).mean())


def test_crash_counts_intervention_and_completion():
    r = EpisodeRecorder(departure_threshold_m=1.0)
    for _ in range(30):  # 30 s, 300 m
        r.step(0.1, 10.0, 1.0, 0.0)
    r.step(3.0, 10.0, 1.0, 1.0)  # leaves the road: departure + crash
    r.crash()
    for _ in range(29):
        r.step(0.1, 10.0, 1.0, 0.0)
    r.crash()  # a second crash later does not move the completion point
    out = r.summary()
    assert out["crashes"] == 2 and out["lane_departures"] == 1
    assert out["completion_pct"] == pytest.approx(100 * 310 / 600)
    assert out["autonomy_pct"] == pytest.approx((1 - 2 * 6 / 60) * 100)
    # Time-weighted: a long step weighs more.
    r2 = EpisodeRecorder(departure_threshold_m=1.0)
    r2.step(1.0, 1.0, 3.0, 0.0)
    r2.step(0.0, 1.0, 1.0, 0.0)
    assert r2.summary()["mean_abs_cross_track_m"] == pytest.approx(0.75)


def test_autonomy_formula_and_clip():
    assert autonomy_pct(0, 100.0) == 100.0
    assert autonomy_pct(1, 60.0) == pytest.approx(90.0)
    assert autonomy_pct(20, 60.0) == 0.0


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 10, 29, 30, 35, 50, 100, 500):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), rel=2e-3)


def test_mean_ci95():
    m, lo, hi = mean_ci95([1.0, 2.0, 3.0, 4.0])
    half = 3.1824 * np.std([1, 2, 3, 4], ddof=1) / 2
    assert m == 2.5 and lo == pytest.approx(2.5 - half) and hi == pytest.approx(2.5 + half)
    assert mean_ci95([5.0]) == (5.0, None, None)
    assert math.isnan(mean_ci95([])[0])


def test_aggregate_schema_and_totals():
    eps = []
    for i in range(3):
        r = EpisodeRecorder(departure_threshold_m=1.0)
        for _ in range(10):
            r.step(0.2 * (i + 1), 5.0, 0.1, 0.0)
        if i == 2:
            r.crash()
        eps.append({**r.summary(), "seed": i})
    row = aggregate("fog", 3, eps)
    assert list(row)[: len(SCHEMA_KEYS)] == list(SCHEMA_KEYS)
    assert row["episodes"] == 3 and row["distance_m"] == pytest.approx(150.0) and row["crashes"] == 1
    assert row["mean_abs_cross_track_m"] == pytest.approx(0.4)
    assert row["per_episode"]["mean_abs_cross_track_m"] == pytest.approx([0.2, 0.4, 0.6])
    lo, hi = row["ci95"]["mean_abs_cross_track_m"]
    assert lo < 0.4 < hi
    assert row["per_episode"]["seed"] == [0, 1, 2]
    with pytest.raises(ValueError):
        aggregate("fog", 1, [])
