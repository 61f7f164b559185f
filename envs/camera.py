"""First-person pinhole dashcam over a flat highway-env world, with per-pixel depth.

Why our own renderer: highway-env only draws top-down (pygame), and no PyPI simulator
gives a CPU first-person camera without a server. The world is flat, so:

* the ground is a plane and world -> image is a homography: lane surfaces and markings
  are world polygons, clipped against the near plane and projected in one numpy pass;
* the depth of a ground pixel depends only on its row (the camera has pitch but no roll),
  so the ground depth image is precomputed; objects overwrite their pixels.

Depth is planar (distance along the optical axis, metres), the convention of CARLA's
depth camera, so both backends agree; the sky (and the distant hills) get `sky_depth_m`.

Drawing rules: a road surface of a closed loop is drawn as two contours (outer and inner
edge) in one `cv2.fillPoly` call, whose even-odd rule makes the annulus; disjoint pieces
(dashes, shadow bands) share one call; touching pieces are never batched together (even-odd
would hollow their shared edges), and single convex shapes use `fillConvexPoly`. All colour
drawing is anti-aliased with 4 bits of sub-pixel precision. Images are RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import cv2
import numpy as np
from highway_env.road.lane import LineType

from envs.scenery import BUSH, TREE, Scenery, _mix
from envs.tracks import STRIPE_LENGTH_M, STRIPE_PERIOD_M, Track

SHIFT = 4
ONE = 1 << SHIFT
LINE_WIDTH_M = 0.15
VEHICLE_HEIGHT_M = 1.5


@dataclass(frozen=True)
class CameraSpec:
    """Pinhole camera rigidly mounted on the ego car (horizontal FOV, pitch down > 0)."""

    height: int = 78
    width: int = 200
    fov_deg: float = 60.0
    height_m: float = 1.3
    pitch_deg: float = 4.0
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

    def __init__(self, track: Track, scenery: Scenery, spec: CameraSpec) -> None:
        self.track, self.scenery, self.spec = track, scenery, spec
        H, W = spec.height, spec.width
        self.F = spec.focal_px
        self.cx, self.cy = W / 2, H / 2
        th = np.deg2rad(spec.pitch_deg)
        self.ct, self.st = float(np.cos(th)), float(np.sin(th))
        self.h = float(spec.height_m)
        pal = scenery.palette
        # --- per-row ground depth and the static background (sky, grass)
        t = (np.arange(H) + 0.5 - self.cy) / self.F
        denom = self.ct * t + self.st
        ground = denom > 1e-9
        row_depth = np.where(ground, self.h / np.where(ground, denom, 1.0), spec.sky_depth_m)
        self.row_depth = np.minimum(row_depth, spec.sky_depth_m).astype(np.float32)
        self.horizon_v = self.cy - self.F * np.tan(th)  # continuous row of the horizon
        bg = np.zeros((H, W, 3), np.float32)
        rows = np.arange(H) + 0.5
        # sky: top colour to horizon colour
        k = np.clip((rows - min(0.0, self.horizon_v - H)) / max(self.horizon_v, 1.0), 0, 1)
        sky = (1 - k)[:, None] * np.array(pal.sky_top) + k[:, None] * np.array(pal.sky_horizon)
        far = np.clip(self.row_depth / 120.0, 0, 1) ** 0.7
        grass = (1 - far)[:, None] * np.array(pal.grass_near) + far[:, None] * np.array(pal.grass_far)
        cover = np.clip(rows + 0.5 - self.horizon_v, 0, 1)  # anti-aliased horizon
        bg[:] = ((1 - cover)[:, None] * sky + cover[:, None] * grass)[:, None, :]
        self._bg = np.clip(bg, 0, 255).astype(np.uint8)
        # aerial perspective: distant ground rows fade towards the horizon colour (ground only;
        # applied before objects, which carry their own depth)
        alpha = np.where(ground, 0.7 * (1 - np.exp(-self.row_depth / 250.0)), 0.0)
        rows_h = np.flatnonzero(alpha > 0.06)
        self._haze = None
        if rows_h.size:
            r0, r1 = int(rows_h.min()), int(rows_h.max()) + 1
            a = alpha[r0:r1, None, None].astype(np.float32)
            self._haze = (r0, r1, 1 - a, a * np.array(pal.sky_horizon, np.float32))
        self._bg_depth = np.repeat(self.row_depth[:, None], W, axis=1)
        # hills: silhouette sampled every 4 columns, closed along the horizon (+1 row)
        self._hill_cols = None
        if self.horizon_v > 0:
            cols = np.concatenate([np.arange(-0.5, W, 4.0), [W - 0.5]])
            self._hill_cols = cols
            self._hill_az = np.arctan((cols + 0.5 - self.cx) / self.F)
            base = int(np.rint((min(self.horizon_v, H) + 0.5) * ONE))
            poly = np.zeros((len(cols) + 2, 2), np.int32)
            poly[1:-1, 0] = np.rint(cols * ONE)
            poly[0] = (int(cols[0] * ONE), base)
            poly[-1] = (int(cols[-1] * ONE), base)
            self._hill_poly = poly
        # --- ground geometry, precomputed once per track in world coordinates
        line_pairs = []
        dashes = []
        for lat, kind in track.lane_lines:
            if kind == LineType.CONTINUOUS:
                inset = 0.25 if lat <= track.left_edge + 1e-6 else -0.25 if lat >= track.right_edge - 1e-6 else 0
                c = lat + inset
                line_pairs.append((c - LINE_WIDTH_M / 2, c + LINE_WIDTH_M / 2))
            elif kind == LineType.STRIPED:
                dashes.append(self._dashes(lat))
        self._line_pairs = np.asarray(line_pairs, np.float64).reshape(-1, 2)
        self._road_pair = (track.left_edge, track.right_edge)
        self._n_lines = len(line_pairs)
        dash = np.concatenate(dashes) if dashes else np.zeros((0, 6, 2))
        wear_rng = np.random.default_rng(scenery.wear_seed)
        dash = dash[wear_rng.random(len(dash)) < scenery.dash_keep_prob]
        # shadow quads padded to hexagons (repeat the last vertex) to share the dashes' pass
        sh = scenery.shadows
        sh6 = np.concatenate([sh, sh[:, -1:], sh[:, -1:]], axis=1) if len(sh) else np.zeros((0, 6, 2))
        self._small = np.concatenate([sh6, dash])
        self._small_is_shadow = np.arange(len(self._small)) < len(sh6)
        wear = pal.marking_wear
        self.c_asphalt = pal.asphalt
        self.c_marking = _mix(pal.marking, pal.asphalt, 0.6 * wear)
        self.c_shadow = pal.shadow
        self.c_hills = pal.hills
        self.c_asphalt_far = pal.asphalt_far

    # ------------------------------------------------------------ precompute
    def _dashes(self, lat: float) -> np.ndarray:
        """Hexagonal dashes (3 points per side follow curves) along a striped line."""
        tr = self.track
        starts = np.arange(0.0, tr.length - STRIPE_LENGTH_M, STRIPE_PERIOD_M)
        ss = starts[:, None] + np.array([0.0, 0.5, 1.0]) * STRIPE_LENGTH_M  # (K,3)
        px = np.interp(ss, tr.s, tr.points[:, 0])
        py = np.interp(ss, tr.s, tr.points[:, 1])
        ux = np.interp(ss, tr.s, tr.lateral_u[:, 0])
        uy = np.interp(ss, tr.s, tr.lateral_u[:, 1])
        p = np.stack([px, py], -1)
        u = np.stack([ux, uy], -1)
        left = p + (lat - LINE_WIDTH_M / 2) * u
        right = p + (lat + LINE_WIDTH_M / 2) * u
        return np.concatenate([left, right[:, ::-1]], axis=1)  # (K,6,2)

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
        u = self.cx - 0.5 + r * k
        v = self.cy - 0.5 + (self.h * self.ct - f * self.st) * k
        out = np.empty((len(f), 2), np.float64)
        out[:, 0] = u
        out[:, 1] = v
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
        return np.stack([u, v], -1), Z

    def _to_cv(self, uv: np.ndarray) -> np.ndarray:
        out = np.minimum(np.maximum(uv, -1e5), 1e5)
        out *= ONE
        return np.rint(out).astype(np.int32)

    ROAD_RANGE_M = 400.0  # open roads: only road within this distance of the camera is drawn
    MARKING_RANGE_M = 150.0  # markings: within this distance (sub-pixel far lines would be
    # drawn a full pixel wide by anti-aliasing, a bright streak along the horizon)

    def _runs(self, near: np.ndarray) -> list[np.ndarray] | None:
        """Index runs of consecutive route samples flagged `near`; None = the whole loop."""
        n = len(near)
        if near.all() and self.track.closed:
            return None
        if not near.any():
            return []
        dm = np.diff(near.astype(np.int8))
        starts = (np.flatnonzero(dm == 1) + 1).tolist()
        ends = (np.flatnonzero(dm == -1) + 1).tolist()
        if near[0]:
            starts.insert(0, 0)
        if near[-1]:
            ends.append(n)
        runs = [np.arange(s, e) for s, e in zip(starts, ends)]
        if self.track.closed and near[0] and near[-1] and len(runs) > 1:
            runs[0] = np.concatenate([runs.pop(), runs[0]])  # a run across the loop's seam
        return runs

    def _ground_rows(self, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(K, M) sample indices and lateral offsets of this frame's long contours.

        A band between two lateral offsets is either a ring pair (a whole closed loop: two
        rows, filled even-odd) or one strip row per run of nearby samples (forward along
        one offset, back along the other). Rows are padded to one length by repeating
        their last vertex (a zero-length edge changes nothing). Returns also the number
        of road rows (the rest are continuous lines).
        """
        d2 = fp[:, 0] ** 2 + fp[:, 1] ** 2
        rows: list[tuple[np.ndarray, float, float]] = []

        def band(runs, a, b):
            if runs is None:
                ring = np.arange(len(fp))
                rows.extend([(ring, a, a), (ring, b, b)])
            else:
                rows.extend((np.concatenate([r, r[::-1]]), a, b) for r in runs if len(r) >= 2)

        la, lb = self._road_pair
        band(None if self.track.closed else self._runs(d2 < self.ROAD_RANGE_M ** 2), la, lb)
        n_road = len(rows)
        if self._n_lines:
            runs = self._runs(d2 < self.MARKING_RANGE_M ** 2)
            for a, b in self._line_pairs.tolist():
                band(runs, a, b)
        if not rows:
            return np.zeros((0, 0), np.int64), np.zeros((0, 0)), 0
        M = max(len(r[0]) for r in rows)
        idx = np.empty((len(rows), M), np.int64)
        lat = np.empty((len(rows), M))
        for j, (ids, a, b) in enumerate(rows):
            m = len(ids)
            idx[j, :m] = ids
            idx[j, m:] = ids[-1]
            if a == b:
                lat[j] = a
            else:
                lat[j, : m // 2] = a
                lat[j, m // 2:] = b
        return idx, lat, n_road

    def _ground_contours(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Road and continuous-line contours, near-clipped and projected in one vectorised pass."""
        fp, fu = self._fr_p, self._fr_u
        idx, lat, n_road = self._ground_rows(fp)
        if idx.size == 0:
            return [], []
        Fm = fp[idx, 0] + lat * fu[idx, 0]  # (K, M) forward metres
        Rm = fp[idx, 1] + lat * fu[idx, 1]  # (K, M) right metres
        fmin = self._f_near
        inside = Fm >= fmin
        K, M = Fm.shape
        if inside.all():
            counts = np.full(K, M)
            pf, pr = Fm.reshape(-1), Rm.reshape(-1)
        else:  # Sutherland-Hodgman against the near plane, all contours at once
            Fn = np.roll(Fm, -1, axis=1)
            Rn = np.roll(Rm, -1, axis=1)
            cross = inside != np.roll(inside, -1, axis=1)
            t = np.divide(fmin - Fm, Fn - Fm, out=np.zeros_like(Fm), where=cross)
            FO = np.empty((K, 2 * M))
            RO = np.empty((K, 2 * M))
            keep = np.empty((K, 2 * M), bool)
            FO[:, 0::2] = Fm
            FO[:, 1::2] = fmin
            RO[:, 0::2] = Rm
            RO[:, 1::2] = Rm + t * (Rn - Rm)
            keep[:, 0::2] = inside
            keep[:, 1::2] = cross
            counts = keep.sum(1)
            pf, pr = FO[keep], RO[keep]
        uv = self._project_fr(pf, pr)
        ends = np.cumsum(counts).tolist()
        parts = [uv[a:b] for a, b in zip([0] + ends[:-1], ends)]
        road = [p for p in parts[:n_road] if len(p) >= 3]
        lines = [p for p in parts[n_road:] if len(p) >= 3]
        return road, lines

    def _polys(self, polys: np.ndarray, flag: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Project small disjoint ground polygons (K,V,2); returns (flagged, others).

        Polygons wholly behind the near plane or outside the image are culled; the few
        that cross the near plane are clipped one by one.
        """
        if len(polys) == 0:
            return [], []
        rel = polys - self._C
        f = rel @ self._d
        z = f * self.ct + self.h * self.st
        near = self.spec.near_m
        zin = z >= near
        zin &= ~(~flag & (f.min(1) > self.MARKING_RANGE_M))[:, None]  # far dashes: not drawn
        full = zin.all(1)
        yes: list[np.ndarray] = []
        no: list[np.ndarray] = []
        if full.any():
            r = rel[full] @ self._n
            uv = self._project_fr(f[full].reshape(-1), r.reshape(-1)).reshape(-1, polys.shape[1], 2)
            W, H = self.spec.width * ONE, self.spec.height * ONE
            u, v = uv[..., 0], uv[..., 1]
            vis = ~((u < -ONE).all(1) | (u > W + ONE).all(1) | (v > H + ONE).all(1))
            fl = flag[full]
            yes.extend(uv[vis & fl])
            no.extend(uv[vis & ~fl])
        for k in np.flatnonzero(zin.any(1) & ~full).tolist():
            c = self._clip_project_small(polys[k].tolist(), near)
            if c is not None:
                (yes if flag[k] else no).append(c)
        return yes, no

    def _clip_project_small(self, poly: list, near: float) -> np.ndarray | None:
        """Near-clip and project one small ground polygon in plain Python (few vertices)."""
        cx0, cy0 = self._C.tolist()
        dx, dy = self._d.tolist()
        fr = []
        for x, y in poly:
            rx, ry = x - cx0, y - cy0
            fr.append((rx * dx + ry * dy, -rx * dy + ry * dx))
        fmin = self._f_near
        out = []
        m = len(fr)
        for i in range(m):
            f0, r0 = fr[i]
            f1, r1 = fr[(i + 1) % m]
            if f0 >= fmin:
                out.append((f0, r0))
            if (f0 >= fmin) != (f1 >= fmin):
                t = (fmin - f0) / (f1 - f0)
                out.append((fmin, r0 + t * (r1 - r0)))
        if len(out) < 3:
            return None
        f = np.array([p[0] for p in out])
        r = np.array([p[1] for p in out])
        return self._project_fr(f, r)

    # ---------------------------------------------------------------- render
    def render(self, position: np.ndarray, heading: float,
               vehicles: list[tuple] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Frame for the ego at `position`/`heading`; `vehicles`: (pos, heading, L, W, rgb)."""
        self._frame(position, heading)
        img = self._bg.copy()
        depth = self._bg_depth.copy()
        self._draw_hills(img, heading)
        aa = cv2.LINE_AA
        road, lines = self._ground_contours()
        if road:
            cv2.fillPoly(img, road, self.c_asphalt, aa, SHIFT)
        shadows, dashes = self._polys(self._small, self._small_is_shadow)
        if shadows:
            cv2.fillPoly(img, shadows, self.c_shadow, aa, SHIFT)
        if lines:
            cv2.fillPoly(img, lines, self.c_marking, aa, SHIFT)
        if dashes:
            cv2.fillPoly(img, dashes, self.c_marking, aa, SHIFT)
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
        pts = self._hill_poly
        pts[1:-1, 1] = np.rint(v_top * ONE)
        cv2.fillPoly(img, [pts], self.c_hills, cv2.LINE_AA, SHIFT)

    def _draw_objects(self, img: np.ndarray, depth: np.ndarray, vehicles) -> None:
        """Billboard trees/bushes/poles and box vehicles, far to near (painter's order)."""
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
        for _, kind, j in items:
            if kind == 1:
                self._draw_vehicle(img, depth, vehicles[j])
                continue
            k, z0, u0, v0, hw, v_a, v_b, ax_w, ax_h, c1, c2 = obj[j]
            if k == TREE:
                tw = max(hw, ONE // 4)
                trunk = np.array([[u0 - tw, v0], [u0 + tw, v0], [u0 + tw, v_a], [u0 - tw, v_a]], np.int32)
                cv2.fillConvexPoly(img, trunk, c1, aa, SHIFT)
                cv2.fillConvexPoly(depth, trunk, z0, l8, SHIFT)
                cv2.ellipse(img, (u0, v_b), (ax_w, ax_h), 0, 0, 360, c2, -1, aa, SHIFT)
                cv2.ellipse(depth, (u0, v_b), (ax_w, ax_h), 0, 0, 360, z0, -1, l8, SHIFT)
            elif k == BUSH:
                cv2.ellipse(img, (u0, v0), (ax_w, ax_h), 0, 180, 360, c2, -1, aa, SHIFT)
                cv2.ellipse(depth, (u0, v0), (ax_w, ax_h), 0, 180, 360, z0, -1, l8, SHIFT)
            else:
                pw = max(hw, ONE // 3)
                pole = np.array([[u0 - pw, v0], [u0 + pw, v0], [u0 + pw, v_a], [u0 - pw, v_a]], np.int32)
                cv2.fillConvexPoly(img, pole, c1, aa, SHIFT)
                cv2.fillConvexPoly(depth, pole, z0, l8, SHIFT)
                plate = np.array([[u0 - ax_w, v_a], [u0 + ax_w, v_a], [u0 + ax_w, v_b], [u0 - ax_w, v_b]], np.int32)
                cv2.fillConvexPoly(img, plate, c2, aa, SHIFT)
                cv2.fillConvexPoly(depth, plate, z0, l8, SHIFT)

    def _object_shapes(self, ks: np.ndarray, fwd: np.ndarray, rgt: np.ndarray) -> list[tuple]:
        """Fixed-point screen shapes of the visible objects, computed in one vectorised pass.

        Per object: (kind, depth, u0, v0, half width, v_a, v_b, axis w, axis h, colour 1,
        colour 2). Trees: trunk to v_a, crown centred at v_b; bushes: half ellipse on the
        ground; poles: pole to v_a (top), sign plate from v_a down to v_b.
        """
        sc = self.scenery
        kind = sc.obj_kind[ks]
        w, hgt = sc.obj_size[ks, 0], sc.obj_size[ks, 1]
        ct, st, h = self.ct, self.st, self.h
        z0 = fwd * ct + h * st
        s = self.F / z0

        def v_at(z):
            dn = h - z
            return self.cy - 0.5 + self.F * (dn * ct - fwd * st) / (fwd * ct + dn * st)

        tree, bush = kind == TREE, kind == BUSH
        za = np.where(tree, 0.45 * hgt, hgt)
        zb = np.where(tree, 0.62 * hgt, hgt - 0.7)
        hw = np.where(tree, 0.175, np.where(bush, w / 2, w / 2)) * s
        ax_w = np.where(tree | bush, w / 2, 0.35) * s
        ax_h = np.where(tree, 0.42 * hgt, 0.6 * hgt) * s
        cols = np.stack([self.cx - 0.5 + rgt * s, v_at(0.0), hw, v_at(za), v_at(zb),
                         np.maximum(ax_w, 0.5), np.maximum(ax_h, 0.5)], 1)
        ints = np.rint(np.clip(cols, -1e5, 1e5) * ONE).astype(np.int64).tolist()
        c = sc.obj_color[ks].tolist()
        out = []
        for j, kd in enumerate(kind.tolist()):
            u0, v0, hwj, va, vb, aw, ah = ints[j]
            out.append((kd, float(z0[j]), u0, v0, hwj, va, vb, aw, ah, tuple(c[j][0]), tuple(c[j][1])))
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
