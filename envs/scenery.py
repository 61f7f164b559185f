"""Seeded scenes: colours and lighting, markings, shoulders, surface, shadows, roadside objects.

Everything random about how the world *looks* is drawn here from one generator (seeded by
the episode's appearance seed, see envs/appearance.py), so a seed reproduces a scene
exactly. `randomize=False` gives the fixed default look (no shoulders, markings from the
track's highway-env line types, no shadows), which the geometry tests rely on. Colours are
RGB uint8 triples (the observation is RGB).

What a scene holds, all in world coordinates and built once per episode (the renderer only
projects): ground bands beside the road (shoulders) and on it (worn wheel tracks), marking
lines with their style, colour, dash pattern and worn gaps, small surface polygons
(patches, cracks), shadow polygons cast across the road by the roadside objects from the
sun's direction (clipped to the road surface), and the objects themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from highway_env.road.lane import LineType

from envs.appearance import Appearance, appearance_seed_for, sample_appearance
from envs.tracks import STRIPE_LENGTH_M, STRIPE_PERIOD_M, Track

TREE, BUSH, POLE, ROCK, POST, BUILDING = 0, 1, 2, 3, 4, 5
OBJECT_KINDS = {"tree": TREE, "bush": BUSH, "pole": POLE, "rock": ROCK, "post": POST,
                "building": BUILDING}
LINE_WIDTH_M = 0.15  # default marking width
EDGE_INSET_M = 0.25  # edge lines sit this far inside the road's edge
SHADOW_VERTS = 8  # shadow / surface polygons are padded to this many vertices


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
    centre_marking: tuple | None = None  # None = `marking`
    patch: tuple = (60, 60, 64)
    crack: tuple = (45, 45, 48)
    wheel_track: tuple = (75, 75, 80)


@dataclass
class LineSpec:
    """One painted line: lateral centre (m from the ego lane centre), width, style, colour.

    `gaps` are route intervals (s0, s1) where a solid line is worn away; dashes are kept
    with probability `dash_keep`.
    """

    lat: float
    width: float
    kind: str  # "solid" | "dashed"
    colour: tuple
    dash_len: float = STRIPE_LENGTH_M
    dash_period: float = STRIPE_PERIOD_M
    dash_keep: float = 1.0
    gaps: tuple = ()


@dataclass
class Scenery:
    """Roadside objects, shadows, markings and surface details of one scene."""

    palette: Palette
    obj_kind: np.ndarray  # (M,) int
    obj_pos: np.ndarray  # (M, 2) world
    obj_size: np.ndarray  # (M, 2): (width m, height m)
    obj_color: np.ndarray  # (M, 2, 3) uint8: (trunk/pole/wall, crown/plate/roof)
    shadows: np.ndarray  # (K, V, 2) world polygons on the road (convex)
    dash_keep_prob: float  # default look: probability that a dash is still visible
    hill_profile: np.ndarray  # (360,) horizon silhouette height in degrees, per azimuth degree
    wear_seed: int = 0  # which dashes are worn away
    lines: list[LineSpec] | None = None  # None: the track's highway-env line types
    pre_bands: list = field(default_factory=list)  # (lat_a, lat_b, rgb) under the road, outer first
    road_bands: list = field(default_factory=list)  # (lat_a, lat_b, rgb) on the road (wheel tracks)
    patches: np.ndarray = field(default_factory=lambda: np.zeros((0, 6, 2)))  # (K, 6, 2)
    cracks: np.ndarray = field(default_factory=lambda: np.zeros((0, 6, 2)))  # (K, 6, 2)
    appearance: Appearance | None = None
    shoulder_m: float = 0.0  # width of the shoulder beside each road edge


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


# time-of-day key frames: t, sky top, sky horizon, brightness, light tint (RGB gains)
_DAY = (
    (0.0, (60, 75, 135), (235, 160, 120), 0.62, (1.12, 0.92, 0.80)),
    (0.2, (85, 125, 200), (215, 205, 200), 0.86, (1.04, 0.98, 0.93)),
    (0.5, (80, 130, 215), (185, 205, 235), 1.00, (1.00, 1.00, 1.00)),
    (0.8, (95, 130, 195), (225, 200, 170), 0.88, (1.06, 0.97, 0.88)),
    (1.0, (55, 60, 115), (240, 140, 85), 0.60, (1.12, 0.88, 0.76)),
)

# asphalt grey level by surface: new = dark and even, worn = light
_ASPHALT_GREY = {"new": (42, 62), "worn": (88, 122), "patched": (68, 100), "cracked": (78, 112)}
_SHOULDER = {  # colour, width range (m) of the band beside the road edge
    "gravel": ((150, 136, 112), (0.6, 1.6)),
    "kerb": ((190, 188, 182), (0.15, 0.3)),
    "pavement": ((165, 162, 156), (1.5, 3.0)),
}
_WALLS = ((205, 195, 175), (165, 85, 62), (150, 150, 156), (222, 216, 200), (120, 110, 100))


def _daylight(t: float) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    ts = [k[0] for k in _DAY]
    i = int(np.clip(np.searchsorted(ts, t, side="right") - 1, 0, len(_DAY) - 2))
    a, b = _DAY[i], _DAY[i + 1]
    w = (t - a[0]) / (b[0] - a[0])

    def lerp(x, y):
        return (1 - w) * np.asarray(x, float) + w * np.asarray(y, float)

    return lerp(a[1], b[1]), lerp(a[2], b[2]), float(lerp(a[3], b[3])), lerp(a[4], b[4])


def palette_for(app: Appearance, rng: np.random.Generator) -> Palette:
    """Colours of an appearance: time-of-day light, surface, shoulder, paint."""
    top, hor, bright, tint = _daylight(app.time_of_day)
    if app.overcast:
        top, hor = np.array([150.0, 155, 160]), np.array([195.0, 198, 200])
        bright *= 0.82
        tint = 0.5 * tint + 0.5
    bright *= float(rng.uniform(0.9, 1.08))
    top = top * rng.uniform(0.92, 1.08, 3)
    hor = hor * rng.uniform(0.95, 1.04, 3)

    def lit(c, k=1.0):
        return _c(np.asarray(c, float) * bright * tint * k)

    dry = float(rng.uniform(0, 1))  # 0 lush green .. 1 dry yellow-brown
    grass = np.asarray(_mix((60, 120, 40), (150, 135, 70), dry), float) * rng.uniform(0.85, 1.15, 3)
    g0, g1 = _ASPHALT_GREY[app.surface]
    gray = float(rng.uniform(g0, g1))
    asphalt = np.array([gray, gray, gray * rng.uniform(0.98, 1.1)]) + rng.normal(0, 3, 3)
    white, yellow = (235, 235, 225), (232, 188, 60)
    paint = white if app.marking_colour == "white" else yellow
    fade = 0.6 * app.marking_wear
    shade = 0.5 if app.overcast else float(rng.uniform(0.42, 0.62))
    return Palette(
        sky_top=_c(top), sky_horizon=_c(hor),
        hills=_scale(_mix(grass, hor, 0.45), bright),
        grass_near=lit(grass), grass_far=lit(_mix(grass, hor, 0.3)),
        asphalt=lit(asphalt), asphalt_far=lit(_mix(asphalt, hor, 0.3)),
        marking=lit(_mix(white, asphalt, fade)),
        centre_marking=lit(_mix(paint, asphalt, fade)),
        shadow=lit(asphalt, shade),
        trunk=lit((90, 65, 40), rng.uniform(0.8, 1.2)),
        foliage=lit(_mix((40, 95, 35), (110, 100, 40), dry * 0.6), rng.uniform(0.8, 1.2)),
        pole=lit((150, 150, 150), rng.uniform(0.7, 1.2)),
        time_of_day=app.time_band, marking_wear=app.marking_wear, brightness=bright,
        patch=lit(asphalt, float(rng.choice([0.72, 0.8, 1.15]))),
        crack=lit(asphalt, 0.55),
        wheel_track=lit(asphalt, float(rng.uniform(0.84, 0.92))),
    )


def _road_clearance(track: Track, pts: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest road-centre sample, minus the road half-width."""
    mid = (track.left_edge + track.right_edge) / 2
    half = (track.right_edge - track.left_edge) / 2
    centre = track.offset_polyline(mid)
    d2 = ((pts[:, None, :] - centre[None, ::2, :]) ** 2).sum(-1)
    return np.sqrt(d2.min(1)) - half


# ----------------------------------------------------------------------------- markings


def _gaps(rng: np.random.Generator, length: float, wear: float) -> tuple:
    """Worn-away stretches of a solid line: about 3 per 100 m at full wear, 3-15 m each."""
    n = int(rng.poisson(length / 100.0 * 3.0 * wear))
    out = []
    for s0 in np.sort(rng.uniform(0, length, n)):
        out.append((float(s0), float(s0 + rng.uniform(3.0, 15.0))))
    return tuple(out)


def marking_lines(track: Track, app: Appearance, pal: Palette, rng: np.random.Generator) -> list[LineSpec]:
    """Edge lines (white, sometimes absent) and the centre line in the appearance's style."""
    width = float(rng.uniform(0.10, 0.18))
    dash_len = float(rng.uniform(2.0, 4.5))
    period = dash_len * float(rng.uniform(1.6, 3.5))
    keep = 1.0 - 0.5 * app.marking_wear
    centre_col = pal.centre_marking or pal.marking
    lines: list[LineSpec] = []
    edges = (track.left_edge, track.right_edge)
    has_edges = app.shoulder in ("kerb", "pavement") or rng.random() < 0.85
    for lat, _ in track.lane_lines:
        if any(abs(lat - e) < 1e-6 for e in edges):
            if has_edges:
                inset = EDGE_INSET_M if lat <= track.left_edge + 1e-6 else -EDGE_INSET_M
                lines.append(LineSpec(lat + inset, width, "solid", pal.marking,
                                      gaps=_gaps(rng, track.length, app.marking_wear)))
            continue
        if app.marking_style == "dashed":
            lines.append(LineSpec(lat, width, "dashed", centre_col, dash_len, period, keep))
        elif app.marking_style == "solid":
            lines.append(LineSpec(lat, width, "solid", centre_col,
                                  gaps=_gaps(rng, track.length, app.marking_wear)))
        else:  # double solid: two lines, a line width apart
            w2 = max(0.1, 0.8 * width)
            for side in (-1.0, 1.0):
                lines.append(LineSpec(lat + side * w2, w2, "solid", centre_col,
                                      gaps=_gaps(rng, track.length, app.marking_wear)))
    return lines


# ----------------------------------------------------------------------------- road frame


def _road_frame(track: Track, s: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """World points of route arc lengths `s` and lateral offsets `lat` (any equal shapes)."""
    ss = s % track.length if track.closed else np.clip(s, 0.0, track.length)
    px = np.interp(ss, track.s, track.points[:, 0])
    py = np.interp(ss, track.s, track.points[:, 1])
    ux = np.interp(ss, track.s, track.lateral_u[:, 0])
    uy = np.interp(ss, track.s, track.lateral_u[:, 1])
    return np.stack([px + lat * ux, py + lat * uy], -1)


def _hexes(track: Track, s0: np.ndarray, s1: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K, 6, 2) polygons over route [s0, s1] x lateral [a, b], 3 points per side (follow curves)."""
    ss = s0[:, None] + np.array([0.0, 0.5, 1.0]) * (s1 - s0)[:, None]
    left = _road_frame(track, ss, np.repeat(a[:, None], 3, 1))
    right = _road_frame(track, ss, np.repeat(b[:, None], 3, 1))
    return np.concatenate([left, right[:, ::-1]], axis=1)


def _surface(track: Track, app: Appearance, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list]:
    """Patches, cracks (disjoint along the route, so one batched fill each) and wheel tracks."""
    lo, hi = track.left_edge + 0.2, track.right_edge - 0.2
    end = track.length if track.closed else track.length - 10.0
    patches = np.zeros((0, 6, 2))
    cracks = np.zeros((0, 6, 2))
    bands = []
    if app.surface == "patched":
        s, rows = float(rng.uniform(0, 20)), []
        while True:
            s += float(rng.exponential(22.0)) + 1.0
            ln = float(rng.uniform(1.5, 8.0))
            if s + ln > end:
                break
            w = float(rng.uniform(1.0, min(3.5, hi - lo)))
            a = float(rng.uniform(lo, hi - w))
            rows.append((s, s + ln, a, a + w))
            s += ln
        if rows:
            r = np.array(rows)
            patches = _hexes(track, r[:, 0], r[:, 1], r[:, 2], r[:, 3])
    if app.surface in ("cracked", "worn"):
        rate = 4.0 if app.surface == "cracked" else 18.0  # mean metres between cracks
        s, rows = float(rng.uniform(0, 5)), []
        while True:
            s += float(rng.exponential(rate)) + 0.3
            if rng.random() < 0.5:  # transverse crack across part of the road
                ln, w = float(rng.uniform(0.04, 0.1)), float(rng.uniform(1.0, hi - lo))
            else:  # longitudinal crack
                ln, w = float(rng.uniform(1.0, 5.0)), float(rng.uniform(0.04, 0.09))
            if s + ln > end:
                break
            a = float(rng.uniform(lo, hi - w))
            rows.append((s, s + ln, a, a + w))
            s += ln
        if rows:
            r = np.array(rows)
            cracks = _hexes(track, r[:, 0], r[:, 1], r[:, 2], r[:, 3])
    if app.surface == "worn":  # darker, polished wheel paths in the ego lane
        off, w = float(rng.uniform(0.75, 0.95)), float(rng.uniform(0.35, 0.6))
        bands = [(side * off - w / 2, side * off + w / 2) for side in (-1.0, 1.0)]
    return patches, cracks, bands


# ----------------------------------------------------------------------------- shadows


def _clip_lat(poly: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip a convex polygon in (s, lat) to lo <= lat <= hi (Sutherland-Hodgman, twice)."""
    for bound, keep_above in ((lo, True), (hi, False)):
        if len(poly) == 0:
            return poly
        d = poly[:, 1] - bound if keep_above else bound - poly[:, 1]
        inside = d >= 0
        if inside.all():
            continue
        out = []
        n = len(poly)
        for i in range(n):
            j = (i + 1) % n
            if inside[i]:
                out.append(poly[i])
            if inside[i] != inside[j]:
                t = d[i] / (d[i] - d[j])
                out.append(poly[i] + t * (poly[j] - poly[i]))
        poly = np.asarray(out).reshape(-1, 2)
    return poly


def _hull(pts: np.ndarray) -> np.ndarray:
    """Convex hull (monotone chain), counter-clockwise."""
    p = sorted(map(tuple, pts.tolist()))
    if len(p) <= 2:
        return np.asarray(p)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for q in p:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], q) <= 0:
            lower.pop()
        lower.append(q)
    for q in reversed(p):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], q) <= 0:
            upper.pop()
        upper.append(q)
    return np.asarray(lower[:-1] + upper[:-1])


def cast_shadows(track: Track, kinds: np.ndarray, pos: np.ndarray, size: np.ndarray,
                 app: Appearance) -> list[np.ndarray]:
    """Road-frame shadow polygons of the objects for the appearance's sun, clipped to the road.

    Shadows point away from the sun (`sun_azimuth_rad`) and are `height / tan(elevation)`
    long. Each object is taken in the road frame at its nearest route sample, so a shadow
    bends with the road like the surface it falls on. Returns world polygons (V, 2).
    """
    elev = math.radians(max(app.sun_elevation_deg, 3.0))
    L = min(1.0 / math.tan(elev), 12.0)  # shadow length per metre of height
    sx, sy = -math.cos(app.sun_azimuth_rad), -math.sin(app.sun_azimuth_rad)
    lo, hi = track.left_edge, track.right_edge
    out = []
    if len(pos) == 0:
        return out
    d2 = ((pos[:, None, :] - track.points[None, ::2, :]) ** 2).sum(-1)
    ks = 2 * np.argmin(d2, axis=1)
    for kind, p, (w, h), k in zip(kinds.tolist(), pos, size, ks.tolist()):
        if kind in (BUSH, ROCK):
            continue
        dvec = np.array([math.cos(track.headings[k]), math.sin(track.headings[k])])
        u = track.lateral_u[k]
        rel = p - track.points[k]
        s_o, lat_o = track.s[k] + float(rel @ dvec), float(rel @ u)
        ds, dl = sx * dvec[0] + sy * dvec[1], sx * u[0] + sy * u[1]  # shadow direction, road frame
        reach = h * L + w
        if (lat_o < lo and lat_o + dl * reach < lo) or (lat_o > hi and lat_o + dl * reach > hi):
            continue  # the shadow never reaches the road
        along = np.array([ds, dl])
        across = np.array([-dl, ds])
        base = np.array([s_o, lat_o])
        polys = []
        if kind == TREE:
            hc, r, av = 0.62 * h, w / 2, 0.42 * h
            c = base + hc * L * along
            a_long = min(math.hypot(r, av * L), 25.0)
            ang = np.linspace(0, 2 * np.pi, SHADOW_VERTS, endpoint=False)
            polys.append(c + np.outer(np.cos(ang) * a_long, along) + np.outer(np.sin(ang) * r, across))
            trunk_end = max(hc - av, 0.3) * L
            polys.append(np.array([base - 0.17 * across, base + 0.17 * across,
                                   base + 0.17 * across + trunk_end * along,
                                   base - 0.17 * across + trunk_end * along]))
        elif kind in (POLE, POST):
            pw = max(w, 0.1) / 2
            polys.append(np.array([base - pw * across, base + pw * across,
                                   base + pw * across + h * L * along, base - pw * across + h * L * along]))
        else:  # building: a box w long (along the road) and w/2 deep, extruded along the shadow
            hw = np.array([w / 2, 0.0])
            hd = np.array([0.0, w / 4])
            rect = np.array([base - hw - hd, base + hw - hd, base + hw + hd, base - hw + hd])
            polys.append(_hull(np.concatenate([rect, rect + h * L * along])))
        for poly in polys:
            q = _clip_lat(np.asarray(poly, float), lo, hi)
            if len(q) < 3:
                continue
            if not track.closed and (q[:, 0].max() < 0 or q[:, 0].min() > track.length):
                continue
            out.append(_road_frame(track, q[:, 0], q[:, 1]))
    return out


def _pad(polys: list[np.ndarray], v: int = SHADOW_VERTS) -> np.ndarray:
    """(K, v, 2): each polygon padded by repeating its last vertex (a zero-length edge)."""
    out = np.zeros((len(polys), v, 2))
    for i, p in enumerate(polys):
        p = p[:v] if len(p) > v else p
        out[i, : len(p)] = p
        out[i, len(p):] = p[-1]
    return out


# ----------------------------------------------------------------------------- objects


def _place(track: Track, rng: np.random.Generator, n: int, gap: np.ndarray, kinds: np.ndarray,
           side: np.ndarray | None = None, s: np.ndarray | None = None) -> tuple:
    s = rng.uniform(0, track.length, n) if s is None else s
    if side is None:
        side = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    lat = np.where(side > 0, track.right_edge + gap, track.left_edge - gap)
    idx = np.clip(np.searchsorted(track.s, s), 0, len(track.s) - 1)
    p = track.points[idx] + lat[:, None] * track.lateral_u[idx]
    return p, kinds


def _objects(track: Track, rng: np.random.Generator, pal: Palette, density: float,
             clutter: float, shoulder: float) -> tuple[list, list, list, list]:
    """Trees, bushes and signs (one per 14 m per side at density 1) and, scaled by
    `clutter`: rocks (one per 60 m per side), delineator posts along both edges every 25-60 m
    (on 40 % of roads), buildings set back 12-35 m (one per 60 m per side, on half the roads)."""
    kinds, pos, size, colors = [], [], [], []
    if density <= 0:
        return kinds, pos, size, colors
    groups = []
    n = int(rng.poisson(track.length / 14.0 * 2 * density))
    if n:
        kind = rng.choice([TREE, BUSH, POLE], size=n, p=[0.5, 0.3, 0.2])
        gap = np.where(kind == POLE, rng.uniform(0.8, 2.0, n), rng.uniform(2.0, 14.0, n))
        groups.append(_place(track, rng, n, gap + shoulder, kind))
    if clutter > 0:
        n = int(rng.poisson(track.length / 60.0 * 2 * density * clutter))
        if n:
            groups.append(_place(track, rng, n, rng.uniform(1.0, 10.0, n) + shoulder, np.full(n, ROCK)))
        if rng.random() < min(1.0, 0.4 * clutter):  # delineator posts, both sides, regular spacing
            step = float(rng.uniform(25.0, 60.0))
            s = np.arange(float(rng.uniform(0, step)), track.length, step)
            for sd in (-1.0, 1.0):
                groups.append(_place(track, rng, len(s), np.full(len(s), 0.6 + shoulder),
                                     np.full(len(s), POST), np.full(len(s), sd), s))
        if rng.random() < min(1.0, 0.5 * clutter):  # a settled stretch: buildings
            n = int(rng.poisson(track.length / 60.0 * 2 * clutter))
            if n:
                groups.append(_place(track, rng, n, rng.uniform(12.0, 35.0, n) + shoulder,
                                     np.full(n, BUILDING)))
    for p, kind in groups:
        ok = _road_clearance(track, p) > 0.6 + shoulder
        for k in np.flatnonzero(ok):
            kd = int(kind[k])
            if kd == TREE:
                w, h = rng.uniform(2.5, 5.0), rng.uniform(5.0, 11.0)
                c1, c2 = _scale(pal.trunk, rng.uniform(0.8, 1.2)), _scale(pal.foliage, rng.uniform(0.75, 1.25))
            elif kd == BUSH:
                w, h = rng.uniform(1.0, 2.5), rng.uniform(0.6, 1.6)
                c1 = c2 = _scale(pal.foliage, rng.uniform(0.7, 1.3))
            elif kd == POLE:
                w, h = rng.uniform(0.08, 0.2), rng.uniform(2.0, 5.0)
                c1 = pal.pole
                c2 = _scale([(200, 40, 40), (240, 240, 240), (40, 80, 200), (230, 200, 40)][
                    int(rng.integers(4))], pal.brightness)
            elif kd == ROCK:
                w, h = rng.uniform(0.4, 1.4), rng.uniform(0.3, 0.9)
                c1 = c2 = _scale((128, 122, 112), pal.brightness * rng.uniform(0.7, 1.2))
            elif kd == POST:
                w, h = 0.1, 1.0
                c1 = _scale((232, 232, 228), pal.brightness)
                c2 = _scale((20, 20, 20) if rng.random() < 0.5 else (230, 120, 30), pal.brightness)
            else:
                w, h = rng.uniform(6.0, 16.0), rng.uniform(3.0, 9.0)
                wall = _WALLS[int(rng.integers(len(_WALLS)))]
                c1 = _scale(wall, pal.brightness * rng.uniform(0.85, 1.1))
                c2 = _scale((85, 60, 55) if rng.random() < 0.6 else (70, 72, 80), pal.brightness)
            kinds.append(kd)
            pos.append(p[k])
            size.append((w, h))
            colors.append((c1, c2))
    return kinds, pos, size, colors


def _hills(rng: np.random.Generator) -> np.ndarray:
    az = np.arange(360)
    hills = np.zeros(360)
    for _ in range(4):  # smooth periodic silhouette
        k = int(rng.integers(1, 7))
        hills += rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * k * az / 360 + rng.uniform(0, 2 * np.pi))
    return 1.2 + 0.9 * (hills - hills.min()) / max(np.ptp(hills), 1e-6) * rng.uniform(0.5, 2.0)


def sample_scenery(track: Track, rng: np.random.Generator, randomize: bool = True,
                   object_density: float = 1.0, shadows: bool = True,
                   appearance: Appearance | None = None) -> Scenery:
    """A scene for `track`: the appearance's look (drawn from `rng` if not given), objects
    beside the road (never on it or on its shoulder), markings, surface and shadows."""
    if not randomize:
        return _default_scenery(track, rng, object_density)
    app = appearance if appearance is not None else sample_appearance(appearance_seed_for(rng, None))
    pal = palette_for(app, rng)
    shoulder_m, pre = 0.0, []
    if app.shoulder in _SHOULDER:
        col, (w0, w1) = _SHOULDER[app.shoulder]
        w = float(rng.uniform(w0, w1))
        col = _c(np.asarray(col) * rng.uniform(0.9, 1.08, 3) * pal.brightness)
        if app.shoulder == "pavement":  # kerb, then the pavement behind it
            kerb = _c(np.asarray(_SHOULDER["kerb"][0]) * pal.brightness)
            k = float(rng.uniform(0.15, 0.25))
            pre = [(track.left_edge - k - w, track.right_edge + k + w, col),
                   (track.left_edge - k, track.right_edge + k, kerb)]
            w += k
        else:
            pre = [(track.left_edge - w, track.right_edge + w, col)]
        shoulder_m = w
    lines = marking_lines(track, app, pal, rng)
    patches, cracks, wheel = _surface(track, app, rng)
    kinds, pos, size, colors = _objects(track, rng, pal, float(object_density), app.clutter, shoulder_m)
    kinds_a = np.asarray(kinds, dtype=np.int64)
    pos_a = np.asarray(pos, dtype=np.float64).reshape(-1, 2)
    size_a = np.asarray(size, dtype=np.float64).reshape(-1, 2)
    polys: list[np.ndarray] = []
    if shadows and not app.overcast:
        polys = cast_shadows(track, kinds_a, pos_a, size_a, app)
        # shadow bands of things out of view (bridges, trees far from the road), 0-1 per 100 m
        m = int(rng.poisson(track.length / 100.0 * rng.uniform(0.0, 1.0)))
        s0 = rng.uniform(0, track.length, m)
        s1 = s0 + rng.uniform(1.0, 6.0, m)
        if m:
            hexes = _hexes(track, s0, s1, np.full(m, track.left_edge), np.full(m, track.right_edge))
            polys.extend(list(hexes))
    return Scenery(
        palette=pal, obj_kind=kinds_a, obj_pos=pos_a, obj_size=size_a,
        obj_color=np.asarray(colors, dtype=np.uint8).reshape(-1, 2, 3),
        shadows=_pad(polys), dash_keep_prob=1.0, hill_profile=_hills(rng),
        wear_seed=int(rng.integers(2**31)), lines=lines, pre_bands=pre,
        road_bands=[(a, b, pal.wheel_track) for a, b in wheel], patches=patches, cracks=cracks,
        appearance=app, shoulder_m=shoulder_m,
    )


def _default_scenery(track: Track, rng: np.random.Generator, object_density: float) -> Scenery:
    """The fixed look: default palette, trees/bushes/signs only, no shadows or shoulders."""
    pal = default_palette()
    kinds, pos, size, colors = _objects(track, rng, pal, float(object_density), 0.0, 0.0)
    return Scenery(
        palette=pal,
        obj_kind=np.asarray(kinds, dtype=np.int64),
        obj_pos=np.asarray(pos, dtype=np.float64).reshape(-1, 2),
        obj_size=np.asarray(size, dtype=np.float64).reshape(-1, 2),
        obj_color=np.asarray(colors, dtype=np.uint8).reshape(-1, 2, 3),
        shadows=np.zeros((0, SHADOW_VERTS, 2)),
        dash_keep_prob=1.0,
        hill_profile=_hills(rng),
        wear_seed=int(rng.integers(2**31)),
    )


def default_lines(track: Track, pal: Palette, dash_keep: float = 1.0) -> list[LineSpec]:
    """The default look's lines: the track's highway-env line types, edge lines inset."""
    out = []
    for lat, kind in track.lane_lines:
        if kind == LineType.CONTINUOUS:
            inset = EDGE_INSET_M if lat <= track.left_edge + 1e-6 else -EDGE_INSET_M \
                if lat >= track.right_edge - 1e-6 else 0.0
            out.append(LineSpec(lat + inset, LINE_WIDTH_M, "solid", pal.marking))
        elif kind == LineType.STRIPED:
            out.append(LineSpec(lat, LINE_WIDTH_M, "dashed", pal.marking, dash_keep=dash_keep))
    return out
