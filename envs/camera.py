"""First-person pinhole dashcam over a flat highway-env world, with per-pixel depth.

Why our own renderer: highway-env only draws top-down (pygame), and no PyPI simulator
gives a CPU first-person camera without a server. The world is flat, so:

* the ground is a plane and world -> image is a homography: lane surfaces and markings
  are world polygons, clipped against the near plane and projected in one numpy pass;
* the depth of a ground pixel depends only on the pixel (the camera is rigid on a flat
  world), so the ground depth image is precomputed; objects overwrite their pixels;
* roll (a camera mount turned about its optical axis) rotates every projected point about
  the principal point; the background and its depth are precomputed rotated.

Depth is planar (distance along the optical axis, metres), the convention of CARLA's
depth camera, so both backends agree; the sky (and the distant hills) get `sky_depth_m`.

Drawing rules: a road surface of a closed loop is drawn as two contours (outer and inner
edge) in one `cv2.fillPoly` call, whose even-odd rule makes the annulus; disjoint pieces
(dashes, patches, cracks, parallel lines of one colour) share one call; touching or
overlapping pieces are never batched together (even-odd would hollow their shared parts):
shoulder bands, each drawn before the road that covers their inner part, get one call each,
and shadows, which overlap one another, one `fillConvexPoly` each. All colour drawing is
anti-aliased with 4 bits of sub-pixel precision. Images are RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import cv2
import numpy as np

from envs.scenery import (
    BUILDING,
    BUSH,
    POLE,
    POST,
    ROCK,
    SHADOW_VERTS,
    TREE,
    LineSpec,
    Scenery,
    default_lines,
)
from envs.tracks import Track

SHIFT = 4
ONE = 1 << SHIFT
VEHICLE_HEIGHT_M = 1.5
MAX_ROLL_DEG = 10.0


@dataclass(frozen=True)
class CameraSpec:
    """Pinhole camera rigidly mounted on the ego car (horizontal FOV, pitch down > 0)."""

    height: int = 78
    width: int = 200
    fov_deg: float = 60.0
    height_m: float = 1.3
    pitch_deg: float = 4.0
    roll_deg: float = 0.0  # about the optical axis, + = clockwise seen from behind the camera
    forward_m: float = 0.8
    near_m: float = 0.8
    sky_depth_m: float = 1000.0
    object_range_m: float = 90.0

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(
                    f"camera {name} must be a positive integer number of pixels, got {v!r}"
                )
        if not (0.0 < float(self.fov_deg) < 180.0):
            raise ValueError(
                f"camera fov_deg must lie strictly between 0 and 180 degrees, got {self.fov_deg!r}"
            )
        if not float(self.height_m) > 0:
            raise ValueError(f"camera height_m must be > 0 (above the ground), got {self.height_m!r}")
        if not (-45.0 < float(self.pitch_deg) < 60.0):
            raise ValueError(f"camera pitch_deg must lie in (-45, 60) degrees, got {self.pitch_deg!r}")
        if not (-MAX_ROLL_DEG <= float(self.roll_deg) <= MAX_ROLL_DEG):
            raise ValueError(f"camera roll_deg must lie in [-{MAX_ROLL_DEG:g}, {MAX_ROLL_DEG:g}] degrees, "
                             f"got {self.roll_deg!r}")
        if not float(self.near_m) > 0:
            raise ValueError(f"camera near_m must be > 0, got {self.near_m!r}")

    @classmethod
    def from_config(cls, cfg: dict | None) -> CameraSpec:
        """Build from `config["camera"]`; unknown keys are an error (typos must not pass)."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(
                f"unknown camera key(s) {sorted(unknown)}; known keys: {sorted(known)}"
            )
        return cls(**cfg)

    @property
    def focal_px(self) -> float:
        return (self.width / 2) / np.tan(np.deg2rad(self.fov_deg) / 2)


def clip_near(poly: np.ndarray, z: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a world polygon (N,2) to the half-plane z >= near.

    `z` is the camera depth of each vertex, linear in world coordinates for ground
    points, so the intersection found in world space is exact.
    """
    inside = z >= near
    if inside.all():
        return poly
    if not inside.any():
        return poly[:0]
    zn = np.roll(z, -1)
    pn = np.roll(poly, -1, axis=0)
    cross = inside != (zn >= near)
    t = np.where(cross, (near - z) / np.where(cross, zn - z, 1.0), 0.0)
    inter = poly + t[:, None] * (pn - poly)
    both = np.stack([poly, inter], axis=1).reshape(-1, 2)
    keep = np.stack([inside, cross], axis=1).reshape(-1)
    return both[keep]


def _clip_fr(f: np.ndarray, r: np.ndarray, fmin: float) -> tuple[np.ndarray, np.ndarray]:
    """`clip_near` for a contour given as forward/right arrays, clipping at forward >= fmin."""
    inside = f >= fmin
    if inside.all():
        return f, r
    if not inside.any():
        return f[:0], r[:0]
    fn = np.concatenate((f[1:], f[:1]))
    rn = np.concatenate((r[1:], r[:1]))
    cross = inside != np.concatenate((inside[1:], inside[:1]))
    df = np.where(cross, fn - f, 1.0)
    t = np.where(cross, (fmin - f) / df, 0.0)
    n = len(f)
    fo = np.empty(2 * n)
    ro = np.empty(2 * n)
    fo[0::2] = f
    fo[1::2] = fmin
    ro[0::2] = r
    ro[1::2] = r + t * (rn - r)
    keep = np.empty(2 * n, bool)
    keep[0::2] = inside
    keep[1::2] = cross
    return fo[keep], ro[keep]


class DashcamRenderer:
    """Renders (RGB uint8 (H,W,3), depth float32 (H,W)) for an ego pose on one track."""

    # groups of the small ground polygons (`_small`), drawn in this order after the road
    G_SHADOW, G_PATCH, G_CRACK, G_DASH = 0, 1, 2, 3  # dashes: G_DASH + colour index

    def __init__(self, track: Track, scenery: Scenery, spec: CameraSpec) -> None:
        self.track, self.scenery, self.spec = track, scenery, spec
        H, W = spec.height, spec.width
        self.F = spec.focal_px
        self.cx, self.cy = W / 2, H / 2
        th = np.deg2rad(spec.pitch_deg)
        self.ct, self.st = float(np.cos(th)), float(np.sin(th))
        self.h = float(spec.height_m)
        roll = np.deg2rad(float(spec.roll_deg))
        self._roll = roll != 0.0
        self._rc, self._rs = float(np.cos(roll)), float(np.sin(roll))
        self._pu, self._pv = self.cx - 0.5, self.cy - 0.5  # principal point, cv2 pixel coords
        pal = scenery.palette
        # --- ground depth per pixel and the static background (sky, grass). Pixel (i, j)
        # seen through the unrolled camera: dv = its row offset from the principal point
        ii, jj = np.mgrid[0:H, 0:W].astype(np.float64)
        dv = self._rs * (jj - self._pu) + self._rc * (ii - self._pv)
        t2 = dv / self.F
        denom2 = self.ct * t2 + self.st
        ground2 = denom2 > 1e-9
        depth2 = np.where(ground2, self.h / np.where(ground2, denom2, 1.0), spec.sky_depth_m)
        depth2 = np.minimum(depth2, spec.sky_depth_m)
        t = (np.arange(H) + 0.5 - self.cy) / self.F
        denom = self.ct * t + self.st
        row_depth = np.where(denom > 1e-9, self.h / np.where(denom > 1e-9, denom, 1.0), spec.sky_depth_m)
        # per-row ground depth of the unrolled camera (= every column's when roll is 0)
        self.row_depth = np.minimum(row_depth, spec.sky_depth_m).astype(np.float32)
        self.horizon_v = self.cy - self.F * np.tan(th)  # continuous row of the (unrolled) horizon
        rows = dv + self.cy  # continuous row coordinate (= i + 0.5 without roll)
        k = np.clip((rows - min(0.0, self.horizon_v - H)) / max(self.horizon_v, 1.0), 0, 1)[..., None]
        sky = (1 - k) * np.array(pal.sky_top) + k * np.array(pal.sky_horizon)
        far = (np.clip(depth2 / 120.0, 0, 1) ** 0.7)[..., None]
        grass = (1 - far) * np.array(pal.grass_near) + far * np.array(pal.grass_far)
        cover = np.clip(rows + 0.5 - self.horizon_v, 0, 1)[..., None]  # anti-aliased horizon
        self._bg = np.clip((1 - cover) * sky + cover * grass, 0, 255).astype(np.uint8)
        # aerial perspective: distant ground fades towards the horizon colour (ground only;
        # applied before objects, which carry their own depth)
        alpha = np.where(ground2, 0.7 * (1 - np.exp(-depth2 / 250.0)), 0.0)
        rows_h = np.flatnonzero((alpha > 0.06).any(1))
        self._haze = None
        if rows_h.size:
            r0, r1 = int(rows_h.min()), int(rows_h.max()) + 1
            a = alpha[r0:r1, :1, None] if not self._roll else alpha[r0:r1, :, None]
            a = a.astype(np.float32)
            self._haze = (r0, r1, 1 - a, a * np.array(pal.sky_horizon, np.float32))
        self._bg_depth = depth2.astype(np.float32)
        # hills: silhouette sampled every 4 columns, closed along the horizon (+1 row); a
        # rolled camera samples beyond the image so the rotated polygon still covers it
        self._hill_cols = None
        if self.horizon_v > 0:
            m = 0.0 if not self._roll else 4.0 * np.ceil((H * abs(self._rs) + 2) / 4.0)
            cols = np.concatenate([np.arange(-0.5 - m, W + m, 4.0), [W - 0.5 + m]])
            self._hill_cols = cols
            self._hill_az = np.arctan((cols + 0.5 - self.cx) / self.F)
            self._hill_base = min(self.horizon_v, H) + 0.5
        # --- ground geometry, precomputed once per track in world coordinates
        lines = scenery.lines if scenery.lines is not None else default_lines(
            track, pal, scenery.dash_keep_prob)
        self.lines = lines
        self.c_asphalt = pal.asphalt
        self.c_shadow = pal.shadow
        self.c_hills = pal.hills
        self.c_asphalt_far = pal.asphalt_far
        self.c_patch, self.c_crack = pal.patch, pal.crack
        colours: list[tuple] = []  # marking colours, in first-use order
        for ln in lines:
            if tuple(ln.colour) not in colours:
                colours.append(tuple(ln.colour))
        self.c_markings = colours
        self.c_marking = colours[0] if colours else pal.marking
        # bands: (lat_a, lat_b, sample mask or None, marking range?) drawn as long contours
        bands: list[tuple[float, float, np.ndarray | None, bool]] = []
        self._pre = []  # (band index, colour): shoulders, outermost first, each its own fill
        for a, b, col in scenery.pre_bands:
            self._pre.append((len(bands), tuple(col)))
            bands.append((a, b, None, False))
        self._road_band = len(bands)
        bands.append((track.left_edge, track.right_edge, None, False))
        self._post = []  # wheel tracks on the road (disjoint, one fill)
        for a, b, col in scenery.road_bands:
            self._post.append(len(bands))
            self.c_post = tuple(col)
            bands.append((a, b, None, "wheel"))
        self._line_bands: dict[tuple, list[int]] = {c: [] for c in colours}
        line_pairs = []
        dashes, dash_group = [], []
        wear_rng = np.random.default_rng(scenery.wear_seed)
        for ln in lines:
            if ln.kind == "solid":
                self._line_bands[tuple(ln.colour)].append(len(bands))
                line_pairs.append((ln.lat - ln.width / 2, ln.lat + ln.width / 2))
                bands.append((ln.lat - ln.width / 2, ln.lat + ln.width / 2, self._gap_mask(ln), True))
            else:
                d = self._dashes(ln)
                d = d[wear_rng.random(len(d)) < ln.dash_keep]
                dashes.append(d)
                dash_group.append(np.full(len(d), self.G_DASH + colours.index(tuple(ln.colour))))
        self._bands = bands
        self._sample_ids = np.arange(len(track.points))
        self._sample_even = self._sample_ids % 2 == 0
        self._sample_mod4 = self._sample_ids % 4 == 0
        # route samples this far behind the camera never matter (the widest band's reach)
        self._band_margin = 3.0 + max(max(abs(a), abs(b)) for a, b, _, _ in bands)
        self._line_pairs = np.asarray(line_pairs, np.float64).reshape(-1, 2)
        self._road_pair = (track.left_edge, track.right_edge)
        self._n_lines = len(line_pairs)
        # small polygons (all padded to SHADOW_VERTS vertices) and their groups
        V = SHADOW_VERTS
        parts = [(scenery.shadows, self.G_SHADOW), (scenery.patches, self.G_PATCH),
                 (scenery.cracks, self.G_CRACK)]
        parts += list(zip(dashes, [g[0] if len(g) else self.G_DASH for g in dash_group]))
        polys, groups = [], []
        for arr, g in parts:
            arr = np.asarray(arr, np.float64).reshape(-1, arr.shape[1] if arr.ndim == 3 else V, 2)
            if len(arr) == 0:
                continue
            if arr.shape[1] < V:
                arr = np.concatenate([arr, np.repeat(arr[:, -1:], V - arr.shape[1], axis=1)], axis=1)
            polys.append(arr)
            groups.append(np.full(len(arr), g))
        self._small = np.concatenate(polys) if polys else np.zeros((0, V, 2))
        self._small_group = np.concatenate(groups) if groups else np.zeros(0, np.int64)
        self._small_is_shadow = self._small_group == self.G_SHADOW
        self._small_centre = self._small.mean(1)
        # shadows are drawn as far as the road, the rest as far as the markings
        self._small_reach = np.where(self._small_is_shadow, self.ROAD_RANGE_M, self.MARKING_RANGE_M)
        self._small_radius = float(np.sqrt(((self._small - self._small_centre[:, None]) ** 2).sum(-1)).max()) \
            if len(self._small) else 0.0
        self._n_groups = self.G_DASH + max(len(colours), 1)
        self._object_statics()

    # ------------------------------------------------------------ precompute
    def _gap_mask(self, ln: LineSpec) -> np.ndarray | None:
        """Route samples where a solid line's paint is present (None = everywhere)."""
        if not ln.gaps:
            return None
        s = self.track.s
        keep = np.ones(len(s), bool)
        L = self.track.length
        for s0, s1 in ln.gaps:
            if self.track.closed:
                keep &= ~(((s - s0) % L) < (s1 - s0))
            else:
                keep &= ~((s >= s0) & (s < s1))
        return keep

    def _dashes(self, ln: LineSpec) -> np.ndarray:
        """Hexagonal dashes (3 points per side follow curves) along a dashed line."""
        tr = self.track
        starts = np.arange(0.0, tr.length - ln.dash_len, ln.dash_period)
        ss = starts[:, None] + np.array([0.0, 0.5, 1.0]) * ln.dash_len  # (K,3)
        px = np.interp(ss, tr.s, tr.points[:, 0])
        py = np.interp(ss, tr.s, tr.points[:, 1])
        ux = np.interp(ss, tr.s, tr.lateral_u[:, 0])
        uy = np.interp(ss, tr.s, tr.lateral_u[:, 1])
        p = np.stack([px, py], -1)
        u = np.stack([ux, uy], -1)
        left = p + (ln.lat - ln.width / 2) * u
        right = p + (ln.lat + ln.width / 2) * u
        return np.concatenate([left, right[:, ::-1]], axis=1)  # (K,6,2)

    def _rotate(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unrolled pixel coordinates -> the rolled camera's (rotation about the principal point)."""
        du, dv = u - self._pu, v - self._pv
        return self._pu + self._rc * du + self._rs * dv, self._pv - self._rs * du + self._rc * dv


    # ------------------------------------------------------------- projection
    def _frame(self, position: np.ndarray, heading: float) -> None:
        d = np.array([np.cos(heading), np.sin(heading)])
        self._d = d
        self._n = np.array([-d[1], d[0]])
        self._C = np.asarray(position, np.float64) + self.spec.forward_m * d
        # route samples and their lateral unit vectors in camera-aligned ground coordinates
        R = np.stack([self._d, self._n], axis=1)  # world -> (forward, right)
        self._fr_p = (self.track.points - self._C) @ R
        self._fr_u = self.track.lateral_u @ R
        self._f_near = (self.spec.near_m - self.h * self.st) / self.ct

    def _project_fr(self, f: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Ground points in (forward, right) metres -> cv2 fixed-point pixel coords (N,2)."""
        Z = np.maximum(f * self.ct + self.h * self.st, 1e-6)
        k = self.F / Z
        du = r * k
        dv = (self.h * self.ct - f * self.st) * k
        out = np.empty((len(f), 2), np.float64)
        if self._roll:
            out[:, 0] = self._pu + self._rc * du + self._rs * dv
            out[:, 1] = self._pv - self._rs * du + self._rc * dv
        else:
            out[:, 0] = self._pu + du
            out[:, 1] = self._pv + dv
        np.minimum(out, 1e5, out=out)
        np.maximum(out, -1e5, out=out)
        out *= ONE
        return np.rint(out).astype(np.int32)

    def _zc(self, pts: np.ndarray) -> np.ndarray:
        """Camera depth of ground points (any leading shape)."""
        fwd = (pts - self._C) @ self._d
        return fwd * self.ct + self.h * self.st

    def _project(self, pts: np.ndarray, z_up: float | np.ndarray = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 2) at height z_up -> (pixel coords (..., 2) for cv2, Zc)."""
        rel = pts - self._C
        fwd = rel @ self._d
        rgt = rel @ self._n
        dn = self.h - z_up
        Z = fwd * self.ct + dn * self.st
        Y = dn * self.ct - fwd * self.st
        Zs = np.maximum(Z, 1e-6)
        u = self.cx + self.F * rgt / Zs - 0.5
        v = self.cy + self.F * Y / Zs - 0.5
        return np.stack([u, v], -1), Z  # unrolled: `_to_cv` applies the roll

    def _to_cv(self, uv: np.ndarray) -> np.ndarray:
        """Unrolled float pixel coords (..., 2) -> the rolled camera's cv2 fixed-point coords."""
        uv = np.asarray(uv, np.float64)
        if self._roll:
            u, v = self._rotate(uv[..., 0], uv[..., 1])
            uv = np.stack([u, v], -1)
        out = np.minimum(np.maximum(uv, -1e5), 1e5)
        out *= ONE
        return np.rint(out).astype(np.int32)

    ROAD_RANGE_M = 400.0  # open roads: only road within this distance of the camera is drawn
    WHEEL_RANGE_M = 70.0  # worn wheel tracks: low contrast, drawn near the car only
    MARKING_RANGE_M = 150.0  # markings: within this distance (sub-pixel far lines would be
    # drawn a full pixel wide by anti-aliasing, a bright streak along the horizon)

    def _runs(self, near: np.ndarray) -> list[np.ndarray] | None:
        """Index runs of consecutive route samples flagged `near`; None = the whole loop."""
        if self.track.closed and near.all():
            return None
        x = near.view(np.int8)
        edges = (np.flatnonzero(x[1:] != x[:-1]) + 1).tolist()
        if near[0]:
            edges.insert(0, 0)
        if near[-1]:
            edges.append(len(x))
        ar = self._sample_ids
        runs = [ar[s:e] for s, e in zip(edges[0::2], edges[1::2])]
        if self.track.closed and len(runs) > 1 and near[0] and near[-1]:
            runs[0] = np.concatenate([runs.pop(), runs[0]])  # a run across the loop's seam
        return runs

    def _ground_rows(self, fp: np.ndarray) -> tuple[list[np.ndarray], list[tuple], list[int]]:
        """Sample indices and (lateral offset, count) of this frame's long contours, by halves.

        A band between two lateral offsets is either a ring pair (a whole closed loop: two
        rows, filled even-odd) or one strip row per run of usable samples (forward along
        one offset, back along the other; a worn line's gaps split its runs). Samples
        well behind the camera are not used: a strip's end there is clipped away by the
        near plane anyway. Each contour is two halves (index array, (lateral, length));
        returns also the band index of each contour.
        """
        d2 = fp[:, 0] ** 2 + fp[:, 1] ** 2
        front = fp[:, 0] > -self._band_margin
        ids_rows: list[np.ndarray] = []
        lat_rows: list[np.ndarray] = []
        owner: list[int] = []
        road_near = front if self.track.closed else front & (d2 < self.ROAD_RANGE_M ** 2)
        near_mark = front & (d2 < self.MARKING_RANGE_M ** 2)
        near_wheel = front & (d2 < self.WHEEL_RANGE_M ** 2)
        cache: dict[int, list | None] = {}
        # level of detail: every route sample (1 m) within 40 m, every 2nd to 100 m, then every
        # 4th (a 4 m chord of the tightest 10 m curve is < 0.5 px off beyond 100 m); the kept
        # samples are fixed in the world, so far contours do not shimmer as the car moves
        lod = (d2 < 1600.0) | (self._sample_even & (d2 < 1e4)) | self._sample_mod4

        def runs_of(key: int, near: np.ndarray):
            if key not in cache:
                runs = self._runs(near)
                if runs is not None:
                    thin = []
                    for r in runs:
                        sel = lod[r]
                        sel[0] = sel[-1] = True
                        thin.append(r[sel])
                    runs = thin
                cache[key] = runs
            return cache[key]

        for i, (a, b, mask, marking) in enumerate(self._bands):
            if not marking:
                runs = runs_of(-1, road_near)
            elif marking == "wheel":
                runs = runs_of(-3, near_wheel)
            elif mask is None:
                runs = runs_of(-2, near_mark)
            else:
                runs = runs_of(i, near_mark & mask)
            if runs is None:
                ring = self._sample_ids
                ids_rows += [ring, ring]
                lat_rows += [(a, len(ring)), (b, len(ring))]
                owner += [i, i]
                continue
            for r in runs:
                if len(r) >= 2:
                    ids_rows += [r, r[::-1]]
                    lat_rows += [(a, len(r)), (b, len(r))]
                    owner.append(i)
        return ids_rows, lat_rows, owner

    def _ground_contours(self) -> list[list[np.ndarray]]:
        """Contours of every band (`_bands`), near-clipped and projected in one vectorised pass."""
        out: list[list[np.ndarray]] = [[] for _ in self._bands]
        fp, fu = self._fr_p, self._fr_u
        ids_rows, lat_rows, owner = self._ground_rows(fp)
        if not ids_rows:
            return out
        half = np.array(lat_rows)  # (2 * rows, 2): (lateral, count) of each half contour
        reps = half[:, 1].astype(np.int64)
        lens = reps[0::2] + reps[1::2]
        starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
        idx = np.concatenate(ids_rows)
        lat = np.repeat(half[:, 0], reps)
        Fm = fp[idx, 0] + lat * fu[idx, 0]  # forward metres
        Rm = fp[idx, 1] + lat * fu[idx, 1]  # right metres
        fmin = self._f_near
        inside = Fm >= fmin
        if inside.all():
            counts = lens
            pf, pr = Fm, Rm
        else:  # Sutherland-Hodgman against the near plane, all contours at once
            nxt = np.arange(1, len(idx) + 1)
            nxt[starts + lens - 1] = starts  # each contour is closed
            Fn, Rn = Fm[nxt], Rm[nxt]
            cross = inside != inside[nxt]
            t = np.divide(fmin - Fm, Fn - Fm, out=np.zeros_like(Fm), where=cross)
            n = len(idx)
            FO = np.empty(2 * n)
            RO = np.empty(2 * n)
            keep = np.empty(2 * n, bool)
            FO[0::2] = Fm
            FO[1::2] = fmin
            RO[0::2] = Rm
            RO[1::2] = Rm + t * (Rn - Rm)
            keep[0::2] = inside
            keep[1::2] = cross
            counts = np.add.reduceat(inside.astype(np.int64) + cross, starts)
            pf, pr = FO[keep], RO[keep]
        uv = self._project_fr(pf, pr)
        ends = np.cumsum(counts).tolist()
        for i, a, b in zip(owner, [0] + ends[:-1], ends):
            if b - a >= 3:
                out[i].append(uv[a:b])
        return out

    def _polys(self) -> list[list[np.ndarray]]:
        """Project the small ground polygons (`_small`, (K,V,2)); returns their contours per group.

        Polygons wholly behind the near plane or outside the image are culled, and all but
        shadows beyond the marking range; the few that cross the near plane are clipped
        one by one.
        """
        out: list[list[np.ndarray]] = [[] for _ in range(self._n_groups)]
        polys, group = self._small, self._small_group
        if len(polys) == 0:
            return out
        # cull by centroid first: most polygons are far away or behind
        cf = (self._small_centre - self._C) @ self._d
        cand = (cf > -self._small_radius) & (cf < self._small_reach + self._small_radius)
        if not cand.all():
            polys, group = polys[cand], group[cand]
            if len(polys) == 0:
                return out
        rel = polys - self._C
        f = rel @ self._d
        r = rel @ self._n
        fmin = self._f_near
        inside = f >= fmin
        far = (group != self.G_SHADOW) & (f.min(1) > self.MARKING_RANGE_M)
        inside &= ~far[:, None]  # far dashes, patches, cracks: not drawn
        full = inside.all(1)
        V = polys.shape[1]
        W, H = self.spec.width * ONE, self.spec.height * ONE
        if full.any():
            uv = self._project_fr(f[full].reshape(-1), r[full].reshape(-1)).reshape(-1, V, 2)
            u, v = uv[..., 0], uv[..., 1]
            vis = ~((u < -ONE).all(1) | (u > W + ONE).all(1) | (v > H + ONE).all(1) | (v < -ONE).all(1))
            g = group[full]
            for k in np.flatnonzero(vis).tolist():
                out[g[k]].append(uv[k])
        part = inside.any(1) & ~full
        if part.any():  # Sutherland-Hodgman against the near plane, these polygons at once
            fp, rp, ins = f[part], r[part], inside[part]
            fn, rn = np.roll(fp, -1, 1), np.roll(rp, -1, 1)
            cross = ins != np.roll(ins, -1, 1)
            t = np.divide(fmin - fp, fn - fp, out=np.zeros_like(fp), where=cross)
            K = len(fp)
            FO = np.empty((K, 2 * V))
            RO = np.empty((K, 2 * V))
            keep = np.empty((K, 2 * V), bool)
            FO[:, 0::2] = fp
            FO[:, 1::2] = fmin
            RO[:, 0::2] = rp
            RO[:, 1::2] = rp + t * (rn - rp)
            keep[:, 0::2] = ins
            keep[:, 1::2] = cross
            counts = keep.sum(1)
            uv = self._project_fr(FO[keep], RO[keep])
            ends = np.cumsum(counts).tolist()
            for g, a, b in zip(group[part].tolist(), [0] + ends[:-1], ends):
                if b - a >= 3:
                    out[g].append(uv[a:b])
        return out

    # ---------------------------------------------------------------- render
    def render(self, position: np.ndarray, heading: float,
               vehicles: list[tuple] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Frame for the ego at `position`/`heading`; `vehicles`: (pos, heading, L, W, rgb)."""
        self._frame(position, heading)
        img = self._bg.copy()
        depth = self._bg_depth.copy()
        self._draw_hills(img, heading)
        aa = cv2.LINE_AA
        bands = self._ground_contours()
        for i, col in self._pre:  # shoulders: each band under the next (they touch)
            if bands[i]:
                cv2.fillPoly(img, bands[i], col, aa, SHIFT)
        if bands[self._road_band]:
            cv2.fillPoly(img, bands[self._road_band], self.c_asphalt, aa, SHIFT)
        small = self._polys()
        if small[self.G_PATCH]:
            cv2.fillPoly(img, small[self.G_PATCH], self.c_patch, aa, SHIFT)
        if self._post:
            post = [c for i in self._post for c in bands[i]]
            if post:
                cv2.fillPoly(img, post, self.c_post, aa, SHIFT)
        if small[self.G_CRACK]:
            cv2.fillPoly(img, small[self.G_CRACK], self.c_crack, aa, SHIFT)
        for poly in small[self.G_SHADOW]:  # shadows overlap: one convex fill each
            cv2.fillConvexPoly(img, poly, self.c_shadow, aa, SHIFT)
        for j, col in enumerate(self.c_markings):
            lines = [c for i in self._line_bands[col] for c in bands[i]]
            if lines:
                cv2.fillPoly(img, lines, col, aa, SHIFT)
            if small[self.G_DASH + j]:
                cv2.fillPoly(img, small[self.G_DASH + j], col, aa, SHIFT)
        if self._haze is not None:
            r0, r1, keep, add = self._haze
            img[r0:r1] = (img[r0:r1] * keep + add).astype(np.uint8)
        self._draw_objects(img, depth, vehicles)
        return img, depth

    def _draw_hills(self, img: np.ndarray, heading: float) -> None:
        """Distant hills: a silhouette fixed to the world azimuth, one anti-aliased polygon."""
        if self._hill_cols is None:
            return
        prof = self.scenery.hill_profile
        az = np.rad2deg(heading + self._hill_az) % 360.0
        i0 = az.astype(np.int64) % 360
        frac = az - np.floor(az)
        elev = np.deg2rad(prof[i0] * (1 - frac) + prof[(i0 + 1) % 360] * frac)
        se, ce = np.sin(elev), np.cos(elev)
        v_top = self.cy - 0.5 + self.F * (-se * self.ct - ce * self.st) / (ce * self.ct - se * self.st)
        cols = self._hill_cols
        u = np.concatenate([[cols[0]], cols, [cols[-1]]])
        v = np.concatenate([[self._hill_base], v_top, [self._hill_base]])
        pts = self._to_cv(np.stack([u, v], -1))
        cv2.fillPoly(img, [pts], self.c_hills, cv2.LINE_AA, SHIFT)

    def _draw_objects(self, img: np.ndarray, depth: np.ndarray, vehicles) -> None:
        """Billboard objects and box vehicles, far to near (painter's order)."""
        sc = self.scenery
        items = []
        rng_m = self.spec.object_range_m
        tan_half = self.spec.width / 2 / self.F
        near = self.spec.near_m + 0.3
        obj = None
        if len(sc.obj_pos):
            rel = sc.obj_pos - self._C
            fwd = rel @ self._d
            rgt = rel @ self._n
            vis = (fwd > near) & (fwd < rng_m) & (np.abs(rgt) < fwd * tan_half + sc.obj_size[:, 0] + 1)
            vis &= sc.obj_size[:, 1] * self.F > 0.5 * fwd  # at least half a pixel tall
            ks = np.flatnonzero(vis)
            if len(ks):
                obj = self._object_shapes(ks, fwd[ks], rgt[ks])
                items.extend((float(fwd[k]), 0, j) for j, k in enumerate(ks.tolist()))
        for j, veh in enumerate(vehicles):
            f = float((np.asarray(veh[0]) - self._C) @ self._d)
            if near + veh[2] / 2 < f < rng_m * 1.5:
                items.append((f, 1, j))
        items.sort(key=lambda it: -it[0])
        aa, l8 = cv2.LINE_AA, cv2.LINE_8
        ang = -float(self.spec.roll_deg)
        for _, kind, j in items:
            if kind == 1:
                self._draw_vehicle(img, depth, vehicles[j])
                continue
            z0, qa, qb, ell, half, c1, c2, b_depth = obj[j]
            if qa is not None:
                cv2.fillConvexPoly(img, qa, c1, aa, SHIFT)
                cv2.fillConvexPoly(depth, qa, z0, l8, SHIFT)
            if qb is not None:
                cv2.fillConvexPoly(img, qb, c2, aa, SHIFT)
                if b_depth:  # a sign plate; a post's band or a roof lies inside quad A
                    cv2.fillConvexPoly(depth, qb, z0, l8, SHIFT)
            if ell is not None:
                a0 = 180 if half else 0
                cv2.ellipse(img, ell[:2], ell[2:], ang, a0, 360, c2, -1, aa, SHIFT)
                cv2.ellipse(depth, ell[:2], ell[2:], ang, a0, 360, z0, -1, l8, SHIFT)

    def _object_statics(self) -> None:
        """Per-object shape parameters that do not depend on the pose (see `_object_shapes`)."""
        sc = self.scenery
        kind = sc.obj_kind
        w, hgt = sc.obj_size[:, 0], sc.obj_size[:, 1]
        tree, pole, post, bld = kind == TREE, kind == POLE, kind == POST, kind == BUILDING
        bush = (kind == BUSH) | (kind == ROCK)
        zs = np.zeros((len(kind), 5))  # heights (m): ground, A top, B bottom, B top, ellipse centre
        zs[:, 1] = np.where(tree, 0.45 * hgt, hgt)
        zs[:, 2] = np.where(pole, hgt - 0.7, np.where(post, 0.75 * hgt, 0.85 * hgt))
        zs[:, 3] = np.where(post, 0.9 * hgt, hgt)
        zs[:, 4] = np.where(tree, 0.62 * hgt, 0.0)
        half_w = np.stack([  # half widths (m) of quad A and quad B, minimum pixels of each
            np.where(tree, 0.175, w / 2), np.where(pole, 0.35, w / 2),
            np.where(tree, 0.25, np.where(bld, 0.0, 1 / 3)), np.where(post, 1 / 3, 0.0)], 1)
        axes = np.stack([w / 2, np.where(tree, 0.42, 0.6) * hgt], 1)
        colours = [(tuple(a), tuple(b)) for a, b in sc.obj_color.tolist()]
        self._obj = (zs, half_w, axes, (~bush).tolist(), (pole | post | bld), (tree | bush).tolist(),
                     bush.tolist(), pole.tolist(), colours)

    def _object_shapes(self, ks: np.ndarray, fwd: np.ndarray, rgt: np.ndarray) -> list[tuple]:
        """Fixed-point screen shapes of the visible objects, computed in one vectorised pass.

        Per object: (depth, quad A or None, quad B or None, ellipse (u, v, ax, ay) or None,
        half ellipse?, colour 1, colour 2, does quad B need its own depth?). Trees: trunk (A)
        and crown (ellipse); bushes and rocks: a half ellipse on the ground; signs: pole (A)
        and plate (B); delineator posts: post (A) and reflector band (B); buildings: wall (A)
        and roof band (B). A quad B under a fifth of a pixel tall is left out.
        """
        zs, half_w, axes, has_a, has_b, has_e, half, is_pole, colours = self._obj
        ct, st, h, F = self.ct, self.st, self.h, self.F
        z0 = fwd * ct + h * st
        s = F / z0
        dn = h - zs[ks]
        f = fwd[:, None]
        vs = self.cy - 0.5 + F * (dn * ct - f * st) / (f * ct + dn * st)  # (n, 5) rows
        u0 = self.cx - 0.5 + rgt * s
        hw = half_w[ks]
        a_hw = np.maximum(hw[:, 0] * s, hw[:, 2])
        b_hw = np.maximum(hw[:, 1] * s, hw[:, 3])
        # corners (n, 9, 2): quad A (4), quad B (4), ellipse centre (1), unrolled pixels
        n = len(ks)
        pts = np.empty((n, 9, 2))
        U, V = pts[..., 0], pts[..., 1]
        U[:, 0] = U[:, 3] = u0 - a_hw
        U[:, 1] = U[:, 2] = u0 + a_hw
        V[:, 0] = V[:, 1] = vs[:, 0]
        V[:, 2] = V[:, 3] = vs[:, 1]
        U[:, 4] = U[:, 7] = u0 - b_hw
        U[:, 5] = U[:, 6] = u0 + b_hw
        V[:, 4] = V[:, 5] = vs[:, 2]
        V[:, 6] = V[:, 7] = vs[:, 3]
        U[:, 8] = u0
        V[:, 8] = vs[:, 4]
        ip = self._to_cv(pts)
        qa_i, qb_i, ec = ip[:, :4], ip[:, 4:8], ip[:, 8].tolist()
        eax = np.rint(np.minimum(np.maximum(axes[ks] * s[:, None], 0.5), 1e5) * ONE).astype(np.int64).tolist()
        show_b = (has_b[ks] & ((vs[:, 2] - vs[:, 3]) > 0.2)).tolist()
        z0l = z0.tolist()
        out = []
        for j, k in enumerate(ks.tolist()):
            c1, c2 = colours[k]
            e = ec[j]
            out.append((z0l[j], qa_i[j] if has_a[k] else None, qb_i[j] if show_b[j] else None,
                        (e[0], e[1], eax[j][0], eax[j][1]) if has_e[k] else None, half[k],
                        c1, c2, is_pole[k]))
        return out

    def _draw_vehicle(self, img: np.ndarray, depth: np.ndarray, veh: tuple) -> None:
        """A box (visible side faces only, each with a dark window band); plain Python, 8 points."""
        pos, heading, length, width, color = veh
        c, s = math.cos(heading), math.sin(heading)
        px, py = float(pos[0]), float(pos[1])
        hl, hw = length / 2, width / 2
        cx0, cy0 = self._C.tolist()
        dx, dy = self._d.tolist()
        ct, st, h, F = self.ct, self.st, self.h, self.F
        near = self.spec.near_m
        # ground corners: front-right, rear-right, rear-left, front-left (right = heading + 90 deg)
        g = [(px + a * c - b * s, py + a * s + b * c) for a, b in ((hl, hw), (-hl, hw), (-hl, -hw), (hl, -hw))]
        fr = [((x - cx0) * dx + (y - cy0) * dy, -(x - cx0) * dy + (y - cy0) * dx) for x, y in g]
        uv0, uv1, z0 = [], [], []
        for f, r in fr:
            z = f * ct + h * st
            if z < near:
                return
            z0.append(z)
            uv0.append((self.cx - 0.5 + F * r / z, self.cy - 0.5 + F * (h * ct - f * st) / z))
            dn = h - VEHICLE_HEIGHT_M
            zt = f * ct + dn * st
            uv1.append((self.cx - 0.5 + F * r / zt, self.cy - 0.5 + F * (dn * ct - f * st) / zt))
        # outward normals of faces (k, k+1): right side, rear, left side, front
        normals = ((-s, c), (-c, -s), (s, -c), (c, s))
        col = [float(x) for x in color]
        for k in range(4):
            a, b = k, (k + 1) % 4
            mx, my = (g[a][0] + g[b][0]) / 2 - cx0, (g[a][1] + g[b][1]) / 2 - cy0
            if mx * normals[k][0] + my * normals[k][1] >= 0:
                continue  # back face
            face = np.array([uv0[a], uv0[b], uv1[b], uv1[a]])
            ua, ub, tb, ta = face  # face = (ground a, ground b, roof b, roof a)
            pa, pb = ua + 0.12 * (ub - ua), ub + 0.12 * (ua - ub)
            ha, hb = ta - ua, tb - ub
            win = np.array([pa + 0.62 * ha, pb + 0.62 * hb, pb + 0.92 * hb, pa + 0.92 * ha])
            shade = 0.75 if k in (0, 2) else 0.9
            fi = self._to_cv(face)
            cv2.fillConvexPoly(img, fi, tuple(int(x * shade) for x in col), cv2.LINE_AA, SHIFT)
            cv2.fillConvexPoly(depth, fi, (z0[a] + z0[b]) / 2, cv2.LINE_8, SHIFT)
            cv2.fillConvexPoly(img, self._to_cv(win), (40, 45, 55), cv2.LINE_AA, SHIFT)
