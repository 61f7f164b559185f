"""Seeded domain randomisation: colours, time of day, marking wear, shadows, roadside objects.

Everything random about how the world *looks* is drawn here from one generator, so a
seed reproduces a scene exactly and a policy never sees the same colours twice in
training. Colours are RGB uint8 triples (the observation is RGB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.tracks import Track

TIMES_OF_DAY = ("noon", "afternoon", "overcast", "dusk")

TREE, BUSH, POLE = 0, 1, 2


@dataclass
class Palette:
    """Colours and appearance knobs of one scene (RGB)."""

    sky_top: tuple
    sky_horizon: tuple
    hills: tuple
    grass_near: tuple
    grass_far: tuple
    asphalt: tuple
    asphalt_far: tuple
    marking: tuple
    shadow: tuple
    trunk: tuple
    foliage: tuple
    pole: tuple
    time_of_day: str = "noon"
    marking_wear: float = 0.0  # 0 = fresh paint, 1 = gone
    brightness: float = 1.0


def _c(rgb) -> tuple:
    return tuple(int(np.clip(round(v), 0, 255)) for v in rgb)


def _mix(a, b, t: float) -> tuple:
    return _c((1 - t) * np.asarray(a, float) + t * np.asarray(b, float))


def _scale(c, k: float) -> tuple:
    return _c(np.asarray(c, float) * k)


def default_palette() -> Palette:
    """A clear midday scene (no randomisation)."""
    return Palette(
        sky_top=(90, 140, 215), sky_horizon=(190, 210, 235), hills=(110, 135, 120),
        grass_near=(70, 120, 45), grass_far=(105, 140, 80), asphalt=(85, 85, 90),
        asphalt_far=(120, 120, 128), marking=(235, 235, 225), shadow=(50, 52, 58),
        trunk=(90, 65, 40), foliage=(40, 95, 35), pole=(150, 150, 150),
    )


def sample_palette(rng: np.random.Generator) -> Palette:
    """Random asphalt/grass colours, time of day, marking wear and brightness."""
    tod = TIMES_OF_DAY[int(rng.integers(len(TIMES_OF_DAY)))]
    bright = {"noon": 1.0, "afternoon": 0.9, "overcast": 0.78, "dusk": 0.65}[tod]
    bright *= float(rng.uniform(0.85, 1.1))
    sky = {
        "noon": ((80, 130, 210), (185, 205, 235)),
        "afternoon": ((100, 140, 200), (215, 205, 180)),
        "overcast": ((150, 155, 160), (195, 198, 200)),
        "dusk": ((60, 70, 120), (235, 150, 90)),
    }[tod]
    dry = float(rng.uniform(0, 1))  # 0 lush green .. 1 dry yellow-brown
    grass = _mix((60, 120, 40), (150, 135, 70), dry)
    grass = _c(np.asarray(grass) * rng.uniform(0.85, 1.15, 3))
    gray = float(rng.uniform(55, 120))
    asphalt = _c(np.array([gray, gray, gray * rng.uniform(1.0, 1.1)]) + rng.normal(0, 4, 3))
    tint = np.array({"noon": (1, 1, 1), "afternoon": (1.05, 1.0, 0.9), "overcast": (0.95, 0.97, 1.0),
                     "dusk": (1.1, 0.9, 0.8)}[tod])
    paint = (235, 235, 225) if rng.random() < 0.8 else (230, 200, 90)  # white or yellow
    p = Palette(
        sky_top=_c(np.asarray(sky[0]) * rng.uniform(0.9, 1.1, 3)),
        sky_horizon=_c(np.asarray(sky[1]) * rng.uniform(0.93, 1.05, 3)),
        hills=_scale(_mix(grass, sky[1], 0.45), bright),
        grass_near=_c(np.asarray(grass) * bright * tint),
        grass_far=_c(np.asarray(_mix(grass, sky[1], 0.3)) * bright * tint),
        asphalt=_c(np.asarray(asphalt) * bright * tint),
        asphalt_far=_c(np.asarray(_mix(asphalt, sky[1], 0.3)) * bright * tint),
        marking=_scale(paint, bright),
        shadow=_c(np.asarray(asphalt) * bright * tint * rng.uniform(0.45, 0.7)),
        trunk=_scale((90, 65, 40), bright * rng.uniform(0.8, 1.2)),
        foliage=_c(np.asarray(_mix((40, 95, 35), (110, 100, 40), dry * 0.6)) * bright
                   * rng.uniform(0.8, 1.2, 3)),
        pole=_scale((150, 150, 150), bright * rng.uniform(0.7, 1.2)),
        time_of_day=tod,
        marking_wear=float(rng.uniform(0.0, 0.6)),
        brightness=bright,
    )
    return p


@dataclass
class Scenery:
    """Roadside objects, shadow bands across the road, and worn dashes of one scene."""

    palette: Palette
    obj_kind: np.ndarray  # (M,) int
    obj_pos: np.ndarray  # (M, 2) world
    obj_size: np.ndarray  # (M, 2): (width m, height m)
    obj_color: np.ndarray  # (M, 2, 3) uint8: (trunk/pole, crown/plate)
    shadows: np.ndarray  # (K, 4, 2) world quads on the road
    dash_keep_prob: float  # worn markings: probability that a dash is still visible
    hill_profile: np.ndarray  # (360,) horizon silhouette height in degrees, per azimuth degree
    wear_seed: int = 0  # which dashes are worn away


def _road_clearance(track: Track, pts: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest road-centre sample, minus the road half-width."""
    mid = (track.left_edge + track.right_edge) / 2
    half = (track.right_edge - track.left_edge) / 2
    centre = track.offset_polyline(mid)
    d2 = ((pts[:, None, :] - centre[None, ::2, :]) ** 2).sum(-1)
    return np.sqrt(d2.min(1)) - half


def sample_scenery(track: Track, rng: np.random.Generator, randomize: bool = True,
                   object_density: float = 1.0, shadows: bool = True) -> Scenery:
    """Place trees, bushes and poles beside the road (never on it), and shadow bands."""
    pal = sample_palette(rng) if randomize else default_palette()
    # roadside objects: on average one every 12 m per side at density 1
    n = int(rng.poisson(track.length / 12.0 * 2 * object_density)) if object_density > 0 else 0
    kinds, pos, size, colors = [], [], [], []
    if n:
        s = rng.uniform(0, track.length, n)
        side = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        kind = rng.choice([TREE, BUSH, POLE], size=n, p=[0.5, 0.3, 0.2])
        gap = np.where(kind == POLE, rng.uniform(0.8, 2.0, n), rng.uniform(2.0, 14.0, n))
        lat = np.where(side > 0, track.right_edge + gap, track.left_edge - gap)
        idx = np.clip(np.searchsorted(track.s, s), 0, len(track.s) - 1)
        p = track.points[idx] + lat[:, None] * track.lateral_u[idx]
        ok = _road_clearance(track, p) > 0.6
        for k in np.flatnonzero(ok):
            kd = int(kind[k])
            if kd == TREE:
                w, h = rng.uniform(2.5, 5.0), rng.uniform(5.0, 11.0)
                c1 = _scale(pal.trunk, rng.uniform(0.8, 1.2))
                c2 = _scale(pal.foliage, rng.uniform(0.75, 1.25))
            elif kd == BUSH:
                w, h = rng.uniform(1.0, 2.5), rng.uniform(0.6, 1.6)
                c1 = c2 = _scale(pal.foliage, rng.uniform(0.7, 1.3))
            else:
                w, h = rng.uniform(0.08, 0.2), rng.uniform(2.0, 5.0)
                c1 = pal.pole
                c2 = _scale([(200, 40, 40), (240, 240, 240), (40, 80, 200), (230, 200, 40)][
                    int(rng.integers(4))], pal.brightness)
            kinds.append(kd)
            pos.append(p[k])
            size.append((w, h))
            colors.append((c1, c2))
    # shadow bands across the road (trees/bridges out of view), 0-3 per 100 m
    quads = []
    if shadows and randomize:
        m = int(rng.poisson(track.length / 100.0 * rng.uniform(0.0, 3.0)))
        for s0 in rng.uniform(0, track.length, m):
            s1 = s0 + rng.uniform(1.0, 6.0)
            i0, i1 = np.clip(np.searchsorted(track.s, [s0, s1]), 0, len(track.s) - 1)
            if i1 <= i0:
                continue
            lo, hi = track.left_edge - 0.2, track.right_edge + 0.2
            a, b = track.points[i0], track.points[i1]
            ua, ub = track.lateral_u[i0], track.lateral_u[i1]
            quads.append([a + lo * ua, b + lo * ub, b + hi * ub, a + hi * ua])
    az = np.arange(360)
    hills = np.zeros(360)
    for _ in range(4):  # smooth periodic silhouette
        k = int(rng.integers(1, 7))
        hills += rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * k * az / 360 + rng.uniform(0, 2 * np.pi))
    hills = 1.2 + 0.9 * (hills - hills.min()) / max(np.ptp(hills), 1e-6) * rng.uniform(0.5, 2.0)
    return Scenery(
        palette=pal,
        obj_kind=np.asarray(kinds, dtype=np.int64),
        obj_pos=np.asarray(pos, dtype=np.float64).reshape(-1, 2),
        obj_size=np.asarray(size, dtype=np.float64).reshape(-1, 2),
        obj_color=np.asarray(colors, dtype=np.uint8).reshape(-1, 2, 3),
        shadows=np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2),
        dash_keep_prob=1.0 - 0.5 * pal.marking_wear,
        hill_profile=hills,
        wear_seed=int(rng.integers(2**31)),
    )
