"""Camera corruptions and sensor timing faults, graded by severity 0 (clean) to 5.

Every image corruption is a pure function
``(frame uint8 HxWx3, depth float32 HxW metres, severity int 0..5, rng) -> uint8 HxWx3``:
the output depends only on its arguments (randomness comes from ``rng`` alone), severity 0
returns an unchanged copy, and the effect grows with severity. The parameters per severity
live in the tables below (``*_PARAMS``) and are documented in ``docs/evaluation.md``.
Sizes (streak length, blur length, flake radius) scale with the image so that a 78x200
camera and a 156x400 one see the same corruption.

Sensor timing faults (``dropped_frames``, ``jitter``) do not change pixels; they change
*when* frames arrive, which only a continuous-time policy can account for. They are kept in
``TIMING_FAULTS`` and drawn per control step with :func:`timing_step`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

MAX_SEVERITY = 5
REFERENCE_HW = (78, 200)  # the paper's camera; sizes below are in pixels at this size

# ---------------------------------------------------------------------------------------
# Parameter tables, index = severity - 1.

#: Fog: visibility V (m) per severity; extinction beta = 3 / V (Koschmieder).
FOG_VISIBILITY_M = (150.0, 80.0, 45.0, 25.0, 14.0)
FOG_AIRLIGHT = (205.0, 208.0, 212.0)  # bright grey-blue sky light

#: Rain: streak count (per 78x200 frame), streak length (px), lens drops, brightness factor,
#: contrast factor (pixels pulled toward the frame mean).
RAIN_PARAMS = (
    # streaks, length_px, drops, brightness, contrast
    (40, 5, 0, 0.92, 0.90),
    (80, 7, 2, 0.85, 0.80),
    (140, 9, 4, 0.78, 0.70),
    (220, 11, 6, 0.70, 0.60),
    (320, 13, 9, 0.62, 0.50),
)

#: Gaussian pixel noise: variance sigma^2 on images scaled to [0, 1]. Severities 3, 4, 5 are
#: the paper's variances 0.1, 0.2, 0.3 (Lechner et al. 2020).
NOISE_VARIANCE = (0.02, 0.05, 0.1, 0.2, 0.3)

#: Snow: flakes (per 78x200 frame), max flake radius (px), whitening weight, contrast factor.
SNOW_PARAMS = (
    (60, 1.0, 0.10, 0.92),
    (120, 1.3, 0.18, 0.84),
    (200, 1.6, 0.26, 0.76),
    (300, 1.9, 0.34, 0.68),
    (420, 2.2, 0.42, 0.60),
)
SNOW_COLOUR = (235.0, 238.0, 242.0)

#: Motion blur: kernel length (px at width 200); direction within +-15 deg of horizontal.
MOTION_BLUR_LENGTH = (3, 5, 7, 10, 14)

#: Night: brightness factor and gamma (>1 crushes shadows first).
NIGHT_PARAMS = ((0.65, 1.1), (0.45, 1.2), (0.32, 1.35), (0.22, 1.5), (0.15, 1.7))

#: Overexposure: gain and gamma (<1 lifts shadows); values clip at 255.
BRIGHTNESS_PARAMS = ((1.3, 0.95), (1.6, 0.92), (1.9, 0.88), (2.3, 0.84), (2.8, 0.80))

#: Sun glare: peak strength, glow radius (fraction of width), veiling-glare weight.
GLARE_PARAMS = (
    (0.35, 0.20, 0.04),
    (0.55, 0.28, 0.08),
    (0.75, 0.36, 0.13),
    (0.90, 0.46, 0.19),
    (1.00, 0.58, 0.26),
)
GLARE_COLOUR = (255.0, 250.0, 235.0)

#: Dropped frames: probability that a frame never reaches the policy (independent per step).
DROP_PROBABILITY = (0.1, 0.2, 0.3, 0.45, 0.6)
#: Jitter: frame interval drawn uniformly from nominal * [1 - a, 1 + a].
JITTER_AMPLITUDE = (0.1, 0.25, 0.4, 0.55, 0.7)


# ---------------------------------------------------------------------------------------
# Helpers


def _check(frame: np.ndarray, depth: np.ndarray | None, severity: int) -> int:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(
            f"frame must be a uint8 HxWx3 array, got {getattr(frame, 'dtype', type(frame))} "
            f"shape {getattr(frame, 'shape', None)}"
        )
    if depth is not None and tuple(depth.shape) != frame.shape[:2]:
        raise ValueError(f"depth shape {tuple(depth.shape)} does not match frame {frame.shape[:2]}")
    return check_severity(severity)


def check_severity(severity: int) -> int:
    """Return ``severity`` as int or raise ValueError naming the allowed range."""
    if isinstance(severity, bool) or int(severity) != severity or not 0 <= int(severity) <= MAX_SEVERITY:
        raise ValueError(f"severity must be an integer 0..{MAX_SEVERITY} (0 = clean), got {severity!r}")
    return int(severity)


def _scale(frame: np.ndarray) -> float:
    """Linear size of this frame relative to the 78x200 reference camera."""
    return float(np.sqrt(frame.shape[0] * frame.shape[1] / (REFERENCE_HW[0] * REFERENCE_HW[1])))


def _split(frame: np.ndarray) -> list[np.ndarray]:
    """Frame as three contiguous float32 planes.

    Working per plane keeps NumPy's inner loops long; broadcasting a length-3 colour over
    HxWx3 is ~5x slower at these image sizes.
    """
    return [c.astype(np.float32) for c in cv2.split(frame)]


def _merge(planes: list[np.ndarray]) -> np.ndarray:
    out = cv2.merge(planes)
    out += 0.5
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _blend(planes: list[np.ndarray], colour, alpha) -> list[np.ndarray]:
    """Per plane: p*(1-alpha) + colour*alpha; alpha is a scalar or an HxW map in [0,1]."""
    return [p + (np.float32(c) - p) * alpha for p, c in zip(planes, np.broadcast_to(colour, (3,)))]


def _contrast(planes: list[np.ndarray], factor: float) -> list[np.ndarray]:
    mean = np.float32(np.mean([p.mean() for p in planes]))
    f = np.float32(factor)
    return [mean + (p - mean) * f for p in planes]


# ---------------------------------------------------------------------------------------
# Image corruptions


def fog(frame: np.ndarray, depth: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Koschmieder fog: I = J*t + A*(1-t), t = exp(-beta*d), beta = 3/visibility.

    Whitening grows with depth, so the distant road fades first; the sky (infinite depth)
    becomes pure airlight. NaN or negative depth counts as infinitely far / zero.
    Deterministic (``rng`` unused).
    """
    severity = _check(frame, depth, severity)
    if severity == 0:
        return frame.copy()
    if depth is None:
        raise ValueError("fog needs the depth map (info['depth'])")
    beta = np.float32(3.0 / FOG_VISIBILITY_M[severity - 1])
    t = np.exp(np.asarray(depth, dtype=np.float32) * -beta)
    np.clip(t, 0.0, 1.0, out=t)  # negative depth -> t=1
    t[np.isnan(t)] = 0.0
    return _merge(_blend(_split(frame), FOG_AIRLIGHT, 1.0 - t))


def _scatter(h: int, w: int, xs: np.ndarray, ys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Point splats into an HxW float mask (max where points share a pixel)."""
    mask = np.zeros((h, w), np.float32)
    xi = xs.astype(np.int64)
    yi = ys.astype(np.int64)
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    np.maximum.at(mask, (yi[ok], xi[ok]), values[ok].astype(np.float32))
    return mask


def rain(frame: np.ndarray, depth: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Rain: darker, lower-contrast scene; slanted bright streaks; blurry drops on the lens."""
    severity = _check(frame, depth, severity)
    if severity == 0:
        return frame.copy()
    n_streaks, length, n_drops, brightness, contrast = RAIN_PARAMS[severity - 1]
    h, w = frame.shape[:2]
    s = _scale(frame)
    img = _contrast([p * np.float32(brightness) for p in _split(frame)], contrast)

    # Streaks: one slant per frame (wind); lines drawn in three strength groups, softened.
    n = int(round(n_streaks * (h * w) / (REFERENCE_HW[0] * REFERENCE_HW[1])))
    angle = np.deg2rad(rng.uniform(-25.0, 25.0))
    lengths = rng.uniform(0.6, 1.4, n) * length * s
    x0 = rng.uniform(0, w, n)
    y0 = rng.uniform(-0.2 * h, h, n)
    x1 = x0 + np.sin(angle) * lengths
    y1 = y0 + np.cos(angle) * lengths
    group = rng.integers(0, 3, n)
    pts = np.stack([x0, y0, x1, y1], axis=1).reshape(n, 2, 2).round().astype(np.int32)
    mask = np.zeros((h, w), np.float32)
    for g, value in enumerate((0.4, 0.6, 0.8)):
        sel = pts[group == g]
        if len(sel):
            cv2.polylines(mask, list(sel), False, value, 1, cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (3, 3), 0)
    np.clip(mask, 0, 1, out=mask)
    img = _blend(img, 210.0, mask)

    # Drops: discs showing a blurred, brighter view (water lens), soft edges.
    if n_drops:
        dmask = np.zeros((h, w), np.float32)
        cx = rng.uniform(0, w, n_drops)
        cy = rng.uniform(0, h, n_drops)
        radii = rng.uniform(3.0, 8.0, n_drops) * s
        for x, y, r in zip(cx, cy, radii):
            cv2.circle(dmask, (int(x), int(y)), max(1, int(r)), 1.0, -1, cv2.LINE_AA)
        dmask = cv2.GaussianBlur(dmask, (0, 0), sigmaX=max(0.8, s))
        np.clip(dmask, 0, 1, out=dmask)
        sigma = 3.0 * s
        img = [p + (cv2.GaussianBlur(p, (0, 0), sigmaX=sigma) * np.float32(1.1) + 12.0 - p) * dmask for p in img]
    return _merge(img)


def noise(frame: np.ndarray, depth: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian pixel noise on the [0,1] image, variance ``NOISE_VARIANCE``, clipped."""
    severity = _check(frame, depth, severity)
    if severity == 0:
        return frame.copy()
    sigma = np.float32(np.sqrt(NOISE_VARIANCE[severity - 1]) * 255.0)
    out = rng.standard_normal(frame.shape, dtype=np.float32)
    out *= sigma
    out += frame
    out += 0.5
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def snow(frame: np.ndarray, depth: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Snow: white haze with lower contrast, plus falling flakes of two sizes (soft splats)."""
    severity = _check(frame, depth, severity)
    if severity == 0:
        return frame.copy()
    n_flakes, r_max, whiten, contrast = SNOW_PARAMS[severity - 1]
    h, w = frame.shape[:2]
    s = _scale(frame)
    img = _blend(_contrast(_split(frame), contrast), SNOW_COLOUR, np.float32(whiten))
    n = int(round(n_flakes * (h * w) / (REFERENCE_HW[0] * REFERENCE_HW[1])))
    xs = rng.uniform(0, w, n)
    ys = rng.uniform(0, h, n)
    big = rng.random(n) < 0.3
    vs = rng.uniform(0.6, 1.0, n)
    small_mask = cv2.GaussianBlur(_scatter(h, w, xs[~big], ys[~big], vs[~big]), (0, 0), 0.5 * s)
    big_mask = cv2.GaussianBlur(_scatter(h, w, xs[big], ys[big], vs[big]), (0, 0), 0.5 * r_max * s)
    # A Gaussian splat's peak falls as 1/(2*pi*sigma^2); restore it so flakes stay white.
    small_mask *= np.float32(2 * np.pi * (0.5 * s) ** 2)
    big_mask *= np.float32(2 * np.pi * (0.5 * r_max * s) ** 2)
    mask = np.clip(small_mask + big_mask, 0, 1)
    return _merge(_blend(img, SNOW_COLOUR, mask))


def motion_blur(frame: np.ndarray, depth: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Linear motion blur (camera shake / yaw), length ``MOTION_BLUR_LENGTH`` px at width 200."""
    severity = _check(frame, depth, severity)
    if severity == 0:
        return frame.copy()
    length = max(2, int(round(MOTION_BLUR_LENGTH[severity - 1] * frame.shape[1] / REFERENCE_HW[1])))
    k = length if length % 2 else length + 1
    angle = np.deg2rad(rng.uniform(-15.0, 15.0))
    c = (k - 1) / 2.0
    dx, dy = np.cos(angle) * (length - 1) / 2.0, np.sin(angle) * (length - 1) / 2.0
    kernel = np.zeros((k, k), np.float32)
    p0 = (int(round((c - dx) * 16)), int(round((c - dy) * 16)))
    p1 = (int(round((c + dx) * 16)), int(round((c + dy) * 16)))
    cv2.line(kernel, p0, p1, 1.0, 1, cv2.LINE_AA, shift=4)
    kernel /= kernel.sum()
    # Drop empty rows symmetrically (the anchor stays centred): a 15x5 kernel convolves
    # directly, a 15x15 one goes through the DFT path at ~10x the cost.
    rows = np.flatnonzero(kernel.any(axis=1))
    m = min(int(rows[0]), k - 1 - int(rows[-1]))
    kernel = kernel[m : k - m]
    return cv2.filter2D(frame, -1, kernel, borderType=cv2.BORDER_REFLECT)


def _lut(fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    x = np.arange(256, dtype=np.float64) / 255.0
    return np.clip(fn(x) * 255.0 + 0.5, 0, 255).astype(np.uint8)


_NIGHT_LUTS = [_lut(lambda x, b=b, g=g: b * x**g) for b, g in NIGHT_PARAMS]
_BRIGHT_LUTS = [_lut(lambda x, k=k, g=g: k * x**g) for k, g in BRIGHTNESS_PARAMS]


def night(frame: np.ndarray, depth: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Low light: out = 255 * b * (in/255)^gamma (``NIGHT_PARAMS``). Deterministic."""
    severity = _check(frame, depth, severity)
    if severity == 0:
        return frame.copy()
    return cv2.LUT(frame, _NIGHT_LUTS[severity - 1])


def brightness(frame: np.ndarray, depth: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Overexposure: out = 255 * min(1, k * (in/255)^gamma) (``BRIGHTNESS_PARAMS``). Deterministic."""
    severity = _check(frame, depth, severity)
    if severity == 0:
        return frame.copy()
    return cv2.LUT(frame, _BRIGHT_LUTS[severity - 1])


def glare(frame: np.ndarray, depth: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Low sun in view: a glow around the sun, veiling glare over the frame, two flare ghosts."""
    severity = _check(frame, depth, severity)
    if severity == 0:
        return frame.copy()
    strength, radius, veil = GLARE_PARAMS[severity - 1]
    h, w = frame.shape[:2]
    sx = rng.uniform(0.15, 0.85) * w
    sy = rng.uniform(0.0, 0.35) * h
    r = radius * w
    gx = np.exp(-(((np.arange(w, dtype=np.float32) - sx) / r) ** 2))
    gy = np.exp(-(((np.arange(h, dtype=np.float32) - sy) / r) ** 2))
    glow = np.outer(gy, gx).astype(np.float32) * np.float32(strength)
    # Flare ghosts mirrored through the image centre.
    s = _scale(frame)
    ghosts = np.zeros((h, w), np.float32)
    for frac, rad in ((0.6, 5.0), (1.4, 9.0)):
        gx = w / 2 + (w / 2 - sx) * frac
        gy = h / 2 + (h / 2 - sy) * frac
        cv2.circle(ghosts, (int(gx), int(gy)), int(rad * s), 0.25 * strength, -1, cv2.LINE_AA)
    ghosts = cv2.GaussianBlur(ghosts, (0, 0), sigmaX=1.5 * s)
    alpha = np.clip(glow + ghosts + np.float32(veil), 0, 1)
    return _merge(_blend(_split(frame), GLARE_COLOUR, alpha))


CorruptionFn = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], np.ndarray]

#: Image corruptions by name (the order used in reports and contact sheets).
CORRUPTIONS: dict[str, CorruptionFn] = {
    "fog": fog,
    "rain": rain,
    "noise": noise,
    "snow": snow,
    "motion_blur": motion_blur,
    "night": night,
    "brightness": brightness,
    "glare": glare,
}


def apply(
    name: str, frame: np.ndarray, depth: np.ndarray, severity: int, rng: np.random.Generator
) -> np.ndarray:
    """Apply image corruption ``name`` (``"none"`` or a timing fault returns the frame as is)."""
    if name == "none" or name in TIMING_FAULTS:
        _check(frame, depth, severity)
        return frame
    try:
        fn = CORRUPTIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown corruption {name!r}; choose from {', '.join(all_names())}"
        ) from None
    return fn(frame, depth, severity, rng)


# ---------------------------------------------------------------------------------------
# Timing faults


@dataclass(frozen=True)
class FrameTiming:
    """What happens at one control step: how long the world advances, and whether the
    policy receives the new frame (if not, it holds its last action)."""

    dt_s: float
    delivered: bool


def _dropped(severity: int, rng: np.random.Generator, nominal_dt: float) -> FrameTiming:
    p = DROP_PROBABILITY[severity - 1] if severity else 0.0
    return FrameTiming(nominal_dt, bool(rng.random() >= p))


def _jitter(severity: int, rng: np.random.Generator, nominal_dt: float) -> FrameTiming:
    a = JITTER_AMPLITUDE[severity - 1] if severity else 0.0
    return FrameTiming(float(nominal_dt * rng.uniform(1.0 - a, 1.0 + a)), True)


TIMING_FAULTS: dict[str, Callable[[int, np.random.Generator, float], FrameTiming]] = {
    "dropped_frames": _dropped,
    "jitter": _jitter,
}


def timing_step(name: str, severity: int, rng: np.random.Generator, nominal_dt: float) -> FrameTiming:
    """Draw the timing of one control step under fault ``name`` (any other name: nominal)."""
    severity = check_severity(severity)
    fn = TIMING_FAULTS.get(name)
    if fn is None or severity == 0:
        return FrameTiming(float(nominal_dt), True)
    return fn(severity, rng, float(nominal_dt))


def all_names() -> list[str]:
    """Every accepted corruption name: ``none``, image corruptions, timing faults."""
    return ["none", *CORRUPTIONS, *TIMING_FAULTS]


def parse_names(text: str) -> list[str]:
    """Parse a comma list like ``none,fog,rain`` (``all`` = every name); unknown → ValueError."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError("no corruption given; e.g. --corruptions none,fog,rain,noise")
    out: list[str] = []
    for n in names:
        if n == "all":
            out.extend(x for x in all_names() if x not in out)
            continue
        if n not in all_names():
            raise ValueError(f"unknown corruption {n!r}; choose from {', '.join(all_names())} or all")
        if n not in out:
            out.append(n)
    return out
