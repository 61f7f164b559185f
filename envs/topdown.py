"""Top-down debug view (OpenCV, no pygame): road, markings, objects, cars, camera frustum."""

from __future__ import annotations

import cv2
import numpy as np
from highway_env.road.lane import LineType

SHIFT = 4


def render_topdown(env, size: int = 300, view_m: float | None = None) -> np.ndarray:
    """RGB image of the scene seen from above; the whole loop, or `view_m` around the ego.

    Same handedness as highway-env's own view (world y points down the image), so
    a right turn in the dashcam is a clockwise turn here.
    """
    env = getattr(env, "unwrapped", env)
    tr, sc = env.track, env.scenery
    pal = sc.palette
    ego = env.ego
    if view_m is None and tr.closed:
        lo, hi = tr.bounds(margin=10.0)
        centre = (lo + hi) / 2
        half = float(max(hi - lo) / 2)
    else:
        centre = ego.position.copy()
        half = (view_m or 80.0) / 2
    scale = size / (2 * half)

    def px(p: np.ndarray) -> np.ndarray:
        q = (np.asarray(p) - centre) * scale + size / 2
        return np.rint(q * (1 << SHIFT)).astype(np.int32)

    img = np.empty((size, size, 3), np.uint8)
    img[:] = pal.grass_near
    if tr.closed:
        road = [px(tr.offset_polyline(tr.left_edge)), px(tr.offset_polyline(tr.right_edge))]
    else:
        road = [px(np.concatenate([tr.offset_polyline(tr.left_edge),
                                   tr.offset_polyline(tr.right_edge)[::-1]]))]
    cv2.fillPoly(img, road, pal.asphalt, cv2.LINE_AA, SHIFT)
    for lat, kind in tr.lane_lines:
        if kind == LineType.NONE:
            continue
        pts = px(tr.offset_polyline(lat))
        thick = 1 if kind == LineType.STRIPED else 2
        col = (200, 200, 200) if kind == LineType.STRIPED else (250, 250, 250)
        cv2.polylines(img, [pts], tr.closed, col, thick, cv2.LINE_AA, SHIFT)
    for p, kind in zip(sc.obj_pos, sc.obj_kind):
        cv2.circle(img, tuple(px(p).tolist()), int(2 * (1 << SHIFT)), (30, 80, 30) if kind != 2 else (150, 150, 150), -1, cv2.LINE_AA, SHIFT)
    for v in env.road.vehicles:
        d = np.array([np.cos(v.heading), np.sin(v.heading)])
        n = np.array([-d[1], d[0]])
        hl, hw = v.LENGTH / 2, v.WIDTH / 2
        box = np.array([v.position + hl * d + hw * n, v.position - hl * d + hw * n,
                        v.position - hl * d - hw * n, v.position + hl * d - hw * n])
        col = (40, 120, 255) if v is ego else tuple(int(c) for c in getattr(v, "color", (200, 40, 40)))
        cv2.fillConvexPoly(img, px(box), col, cv2.LINE_AA, SHIFT)
    # camera frustum
    cam = env.camera_spec
    half_fov = np.deg2rad(cam.fov_deg) / 2
    reach = 30.0
    for a in (-half_fov, half_fov):
        h = ego.heading + a
        end = ego.position + reach * np.array([np.cos(h), np.sin(h)])
        cv2.line(img, tuple(px(ego.position).tolist()), tuple(px(end).tolist()), (255, 230, 0), 1, cv2.LINE_AA, SHIFT)
    # expert look-ahead target
    e = env.config["expert"]
    ld = max(float(e["lookahead_min_m"]), float(e["lookahead_time_s"]) * abs(ego.speed))
    target, _ = tr.pose_at(env.route_s + ld)
    cv2.circle(img, tuple(px(target).tolist()), 3 << SHIFT, (255, 0, 255), -1, cv2.LINE_AA, SHIFT)
    return img


def depth_to_rgb(depth: np.ndarray, max_m: float = 100.0) -> np.ndarray:
    """Colour-map a depth image (log scale, near = bright) for viewing."""
    d = np.clip(np.log1p(np.minimum(depth, max_m)) / np.log1p(max_m), 0, 1)
    g = np.rint((1 - d) * 255).astype(np.uint8)
    return cv2.applyColorMap(g, cv2.COLORMAP_INFERNO)[..., ::-1].copy()


def debug_panel(env, scale: int = 3) -> np.ndarray:
    """Dashcam (enlarged) over its depth, beside the top-down view: the `rgb_array` render."""
    env = getattr(env, "unwrapped", env)
    frame = env._last_frame
    _, info = env._observe(crashed=False)
    H, W = frame.shape[:2]
    big = cv2.resize(frame, (W * scale, H * scale), interpolation=cv2.INTER_NEAREST)
    dep = cv2.resize(depth_to_rgb(info["depth"]), (W * scale, H * scale), interpolation=cv2.INTER_NEAREST)
    left = np.concatenate([big, dep], 0)
    top = render_topdown(env, size=left.shape[0])
    return np.concatenate([left, top], 1)
