"""Corruptions: identity at 0, effect grows with severity, deterministic, physical fog."""

import numpy as np
import pytest

from driving import corruptions as C

H, W = 78, 200
HORIZON = 30


def _scene(h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    """A flat-world dashcam stand-in: sky, grass, a textured road; analytic ground depth."""
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = int(HORIZON * h / H)
    depth = np.full((h, w), np.inf, np.float32)
    ground = yy > horizon
    focal_px = 100.0 * h / H  # camera 1.2 m above a flat road: d = 1.2 * f / (rows below horizon)
    depth[ground] = (1.2 * focal_px / (yy[ground] - horizon)).astype(np.float32)
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:horizon + 1] = (120, 160, 220)
    frame[ground] = (50, 120, 50)
    road = ground & (np.abs(xx - w / 2) < (yy - horizon) * 2.0)
    frame[road] = (70, 70, 75)
    marking = ground & (np.abs(np.abs(xx - w / 2) - (yy - horizon) * 1.8) < 1.5)
    frame[marking] = (230, 230, 230)
    rng = np.random.default_rng(123)
    frame = np.clip(frame.astype(int) + rng.integers(-10, 10, frame.shape), 0, 255).astype(np.uint8)
    return frame, depth


FRAME, DEPTH = _scene()


def _contrast(img: np.ndarray) -> float:
    return float(img.astype(np.float64).std())


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _avg_effect(name: str, severity: int, seeds=range(4)) -> float:
    return float(
        np.mean([_mad(C.apply(name, FRAME, DEPTH, severity, np.random.default_rng(s)), FRAME) for s in seeds])
    )


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_identity_at_severity_zero(name):
    out = C.apply(name, FRAME, DEPTH, 0, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == FRAME.shape
    np.testing.assert_array_equal(out, FRAME)
    assert out is not FRAME  # a pure function never hands back (or edits) its input


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_effect_grows_with_severity(name):
    effects = [_avg_effect(name, s) for s in range(6)]
    assert effects[0] == 0.0
    assert all(b > a for a, b in zip(effects, effects[1:])), effects
    assert effects[5] > 2.0, f"{name} at severity 5 barely changes the frame: {effects}"


@pytest.mark.parametrize("name", ["fog", "rain", "snow", "night", "glare"])
def test_contrast_falls_with_severity(name):
    contrasts = [_contrast(C.apply(name, FRAME, DEPTH, s, np.random.default_rng(0))) for s in range(6)]
    assert contrasts[5] < 0.7 * contrasts[0], contrasts
    assert contrasts[3] < contrasts[0]


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_deterministic_given_rng_seed_and_input_untouched(name):
    before = FRAME.copy()
    a = C.apply(name, FRAME, DEPTH, 4, np.random.default_rng(7))
    b = C.apply(name, FRAME, DEPTH, 4, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(FRAME, before)
    assert a.dtype == np.uint8 and a.shape == FRAME.shape


@pytest.mark.parametrize("name", ["rain", "noise", "snow", "motion_blur", "glare"])
def test_random_corruptions_vary_with_seed(name):
    a = C.apply(name, FRAME, DEPTH, 4, np.random.default_rng(1))
    b = C.apply(name, FRAME, DEPTH, 4, np.random.default_rng(2))
    assert not np.array_equal(a, b)


def test_fog_is_koschmieder():
    """I = J*t + A*(1-t), t = exp(-3 d / V) checked pixel by pixel."""
    out = C.fog(FRAME, DEPTH, 3, np.random.default_rng(0)).astype(np.float64)
    beta = 3.0 / C.FOG_VISIBILITY_M[2]
    t = np.exp(-beta * DEPTH.astype(np.float64))[..., None]
    expected = FRAME * t + np.array(C.FOG_AIRLIGHT) * (1 - t)
    assert np.abs(out - expected).max() <= 1.0
    sky = DEPTH == np.inf
    np.testing.assert_allclose(out[sky], np.broadcast_to(C.FOG_AIRLIGHT, out[sky].shape), atol=1)


def test_fog_whitening_grows_with_depth():
    out = C.fog(FRAME, DEPTH, 5, np.random.default_rng(0))
    change = np.abs(out.astype(float) - FRAME.astype(float)).mean(axis=2)
    road_rows = np.arange(HORIZON + 2, H)
    per_row = np.array([change[r, W // 2 - 3 : W // 2 + 3].mean() for r in road_rows])
    # Rows nearer the horizon are farther away: strictly more whitened, overall.
    assert per_row[0] > per_row[-1] + 50
    depth_rank = np.argsort(np.argsort(DEPTH[road_rows, W // 2]))
    change_rank = np.argsort(np.argsort(per_row))
    assert np.corrcoef(depth_rank, change_rank)[0, 1] > 0.95  # Spearman: monotone in depth
    # The distant road is visibly white at severity 5 (close to the airlight).
    far = out[HORIZON + 2, W // 2].astype(float)
    assert np.abs(far - np.array(C.FOG_AIRLIGHT)).max() < 40


def _clipped_normal_var(mean: float, var: float) -> float:
    """Variance of clip(mean + N(0, var), 0, 1) by numerical integration."""
    x = np.linspace(-8, 8, 200001) * np.sqrt(var)
    p = np.exp(-0.5 * x**2 / var)
    p /= p.sum()
    y = np.clip(mean + x, 0, 1)
    m = (p * y).sum()
    return float((p * (y - m) ** 2).sum())


def test_noise_variance_matches_table():
    grey = np.full((200, 200, 3), 128, np.uint8)
    depth = np.ones((200, 200), np.float32)
    for sev, var in zip(range(1, 6), C.NOISE_VARIANCE):
        out = C.noise(grey, depth, sev, np.random.default_rng(0)).astype(np.float64) / 255
        # Clipping to [0, 1] shrinks the variance of big noise: compare with the clipped law.
        assert out.var() == pytest.approx(_clipped_normal_var(128 / 255, var), rel=0.03)
    assert C.NOISE_VARIANCE[2:] == (0.1, 0.2, 0.3)  # the paper's variances


def test_corruptions_scale_with_image_size():
    frame, depth = _scene(156, 400)
    for name in C.CORRUPTIONS:
        out = C.apply(name, frame, depth, 3, np.random.default_rng(0))
        assert out.shape == frame.shape


def test_bad_input_is_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown corruption"):
        C.apply("smog", FRAME, DEPTH, 1, rng)
    for bad in (-1, 6, 2.5, True):
        with pytest.raises(ValueError, match="severity"):
            C.apply("fog", FRAME, DEPTH, bad, rng)
    with pytest.raises(ValueError, match="uint8"):
        C.apply("fog", FRAME.astype(np.float32), DEPTH, 1, rng)
    with pytest.raises(ValueError, match="depth shape"):
        C.apply("fog", FRAME, DEPTH[:10], 1, rng)
    with pytest.raises(ValueError, match="unknown corruption"):
        C.parse_names("none,smog")
    assert C.parse_names("none, fog,fog") == ["none", "fog"]
    assert C.parse_names("all") == C.all_names()


def test_timing_faults():
    n = 4000
    for name in C.TIMING_FAULTS:
        # Frames are untouched by a timing fault.
        assert C.apply(name, FRAME, DEPTH, 5, np.random.default_rng(0)) is FRAME
        clean = [C.timing_step(name, 0, np.random.default_rng(0), 0.1) for _ in range(10)]
        assert all(t.delivered and t.dt_s == 0.1 for t in clean)
    drop_rates, jitter_sd = [], []
    for sev in range(1, 6):
        rng = np.random.default_rng(sev)
        steps = [C.timing_step("dropped_frames", sev, rng, 0.1) for _ in range(n)]
        assert all(t.dt_s == 0.1 for t in steps)
        drop_rates.append(1 - np.mean([t.delivered for t in steps]))
        assert drop_rates[-1] == pytest.approx(C.DROP_PROBABILITY[sev - 1], abs=0.03)
        rng = np.random.default_rng(sev)
        dts = np.array([C.timing_step("jitter", sev, rng, 0.1).dt_s for _ in range(n)])
        assert dts.mean() == pytest.approx(0.1, rel=0.03) and dts.min() > 0
        jitter_sd.append(dts.std())
    assert all(b > a for a, b in zip(drop_rates, drop_rates[1:]))
    assert all(b > a for a, b in zip(jitter_sd, jitter_sd[1:]))
    # Same seed, same schedule.
    ra, rb = np.random.default_rng(5), np.random.default_rng(5)
    a = [C.timing_step("jitter", 3, ra, 0.1) for _ in range(5)]
    b = [C.timing_step("jitter", 3, rb, 0.1) for _ in range(5)]
    assert a == b and len({t.dt_s for t in a}) == 5
