"""Dashcam renderer: projection geometry, analytic depth, clipping, anti-aliasing, bad cameras."""

import numpy as np
import pytest

from envs.camera import CameraSpec, DashcamRenderer, clip_near
from envs.scenery import TREE, default_palette, sample_scenery
from envs.tracks import make_racetrack, make_sine_road


def _bare(track, spec, **kw):
    """A scene with the default palette and no objects or shadows."""
    sc = sample_scenery(track, np.random.default_rng(0), randomize=False, object_density=0.0)
    for k, v in kw.items():
        setattr(sc, k, v)
    return DashcamRenderer(track, sc, spec)


@pytest.fixture(scope="module")
def straight():
    # amplitude 0: a straight two-lane road along +x
    return make_sine_road(length=400.0, amplitude=0.0)


def test_depth_grows_towards_horizon_and_matches_ray_ground_intersection(straight):
    spec = CameraSpec(height=60, width=80, fov_deg=70, height_m=1.4, pitch_deg=5)
    r = _bare(straight, spec)
    _, depth = r.render(np.array([50.0, 0.0]), 0.0)
    assert depth.dtype == np.float32 and depth.shape == (60, 80)
    col = depth[:, 40]
    ground = col < spec.sky_depth_m
    rows = np.flatnonzero(ground)
    assert rows.size > 20 and rows.max() == 59
    # closer to the horizon (smaller row) = farther away, strictly
    assert np.all(np.diff(col[rows]) < 0)
    assert np.all(col[: rows.min()] == spec.sky_depth_m)
    # independent check: the ray through the centre of row v hits the ground at forward
    # distance x = h / tan(pitch + atan((v + .5 - cy) / f)); planar depth = x cos p + h sin p
    f = 40 / np.tan(np.deg2rad(35))
    p = np.deg2rad(5)
    for v in (40, 50, 59):
        ang = p + np.arctan((v + 0.5 - 30) / f)
        x = 1.4 / np.tan(ang)
        assert col[v] == pytest.approx(x * np.cos(p) + 1.4 * np.sin(p), rel=1e-4)
    # a level camera puts the horizon exactly in the middle
    r0 = _bare(straight, CameraSpec(height=40, width=40, pitch_deg=0.0))
    _, d0 = r0.render(np.array([50.0, 0.0]), 0.0)
    assert np.all(d0[:20] == r0.spec.sky_depth_m) and np.all(d0[20:] < r0.spec.sky_depth_m)


def test_lane_markings_project_where_geometry_says(straight):
    """The right edge line (ego lateral +2 m - 0.25 m inset) appears at u = cx + f*x/Z."""
    spec = CameraSpec(height=120, width=240, fov_deg=60, height_m=1.3, pitch_deg=4, forward_m=0.0)
    r = _bare(straight, spec)
    img, depth = r.render(np.array([50.0, 0.0]), 0.0)
    f = spec.focal_px
    lum = img.astype(float).mean(-1)
    found = 0
    for v in range(80, 120, 5):
        z = float(depth[v, 120])
        lat = 2.0 - 0.25
        # the ground point seen at this row, `lat` metres right: camera X = lat, Z = z
        u = 120 + f * lat / z - 0.5
        u0 = int(round(u))
        window = lum[v, max(u0 - 1, 0): u0 + 2]
        assert window.max() > 170, (v, u, lum[v, u0 - 4: u0 + 5])  # white paint there
        found += 1
        # asphalt between the car and the line
        assert lum[v, int(round(120 + f * 0.8 / z))] < 120
    assert found == 8


def test_right_curve_bends_right_in_image():
    tr = make_racetrack()
    spec = CameraSpec(height=78, width=200)
    r = _bare(tr, spec)
    # the second piece of the racetrack is a right turn of radius 30 m
    s0 = float(tr.seg_start[1]) - 8.0
    pos, h = tr.pose_at(s0)
    img, depth = r.render(pos, h)
    asphalt = np.all(np.abs(img.astype(int) - np.array(default_palette().asphalt)) < 6, axis=-1)
    near_row, far_row = 70, int(np.argmin(np.abs(r.row_depth - 20.0)))
    c_near = np.flatnonzero(asphalt[near_row]).mean()
    c_far = np.flatnonzero(asphalt[far_row]).mean()
    assert c_far > c_near + 10  # the road goes off to the right


def test_objects_overwrite_depth_and_are_drawn(straight):
    spec = CameraSpec(height=60, width=100, forward_m=0.0)
    sc = sample_scenery(straight, np.random.default_rng(0), randomize=False, object_density=0.0)
    sc.obj_kind = np.array([TREE])
    sc.obj_pos = np.array([[70.0, 6.0]])  # 20 m ahead, 6 m to the right
    sc.obj_size = np.array([[4.0, 8.0]])
    sc.obj_color = np.array([[[90, 60, 40], [20, 90, 20]]], np.uint8)
    r = DashcamRenderer(straight, sc, spec)
    img, depth = r.render(np.array([50.0, 0.0]), 0.0)
    bare = _bare(straight, spec)
    img0, depth0 = bare.render(np.array([50.0, 0.0]), 0.0)
    changed = np.any(img != img0, axis=-1)
    assert changed.sum() > 50
    z_tree = 20 * np.cos(np.deg2rad(4)) + 1.3 * np.sin(np.deg2rad(4))
    over = depth != depth0
    assert over.any()
    assert np.allclose(depth[over], z_tree, atol=1e-3)
    # the tree is in the right half of the image
    assert np.flatnonzero(changed.any(0)).mean() > 50


def test_traffic_box_is_drawn_with_its_depth(straight):
    spec = CameraSpec(height=60, width=100, forward_m=0.0)
    r = _bare(straight, spec)
    veh = [(np.array([65.0, -4.0]), 0.0, 5.0, 2.0, (200, 30, 30))]
    img, depth = r.render(np.array([50.0, 0.0]), 0.0, veh)
    red = (img[..., 0] > 120) & (img[..., 1] < 60)
    assert red.sum() > 10
    assert np.all(depth[red] < 20) and np.all(depth[red] > 10)
    assert np.flatnonzero(red.any(0)).mean() < 50  # on the left lane = left of centre
    # its rear window: dark pixels inside the car's box, in its upper part
    rows, cols = np.nonzero(red)
    box = img[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1].astype(int)
    dark = box.sum(-1) < 200
    assert dark.sum() >= 2
    assert np.nonzero(dark)[0].mean() < (rows.max() - rows.min()) / 2


def test_anti_aliased_edges(straight):
    spec = CameraSpec(height=78, width=200)
    r = _bare(straight, spec)
    img, _ = r.render(np.array([50.0, 0.0]), 0.02)
    pal = default_palette()
    flat = img.reshape(-1, 3)
    colours = {tuple(c) for c in flat.tolist()}
    base = {pal.asphalt, pal.marking}
    # blended pixels between asphalt and paint exist (a non-AA raster would have none)
    lum = flat.astype(float).mean(1)
    a, m = np.mean(pal.asphalt), np.mean(pal.marking)
    between = (lum > a + 15) & (lum < m - 15)
    assert between.sum() > 20 and len(colours) > len(base) + 20


def test_clip_near_square():
    sq = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    z = sq[:, 0] + 5.0  # depth grows with x
    c = clip_near(sq, z, 5.5)  # keep x >= 0.5
    area = 0.5 * abs(np.dot(c[:, 0], np.roll(c[:, 1], 1)) - np.dot(c[:, 1], np.roll(c[:, 0], 1)))
    assert area == pytest.approx(0.5 * 2.0)
    assert len(clip_near(sq, z, 100.0)) == 0
    assert np.array_equal(clip_near(sq, z, 0.0), sq)


def test_deterministic_given_seed():
    tr = make_racetrack()
    spec = CameraSpec(height=30, width=60)
    a = DashcamRenderer(tr, sample_scenery(tr, np.random.default_rng(5)), spec)
    b = DashcamRenderer(tr, sample_scenery(tr, np.random.default_rng(5)), spec)
    c = DashcamRenderer(tr, sample_scenery(tr, np.random.default_rng(6)), spec)
    pos, h = tr.pose_at(33.0)
    ia, da = a.render(pos, h)
    ib, db = b.render(pos, h)
    ic, _ = c.render(pos, h)
    assert np.array_equal(ia, ib) and np.array_equal(da, db)
    assert not np.array_equal(ia, ic)


@pytest.mark.parametrize("bad, msg", [
    ({"height": 0}, "height"), ({"width": -3}, "width"), ({"width": 2.5}, "width"),
    ({"fov_deg": 0}, "fov_deg"), ({"fov_deg": 180}, "fov_deg"), ({"fov_deg": 200}, "fov_deg"),
    ({"height_m": 0}, "height_m"), ({"zoom": 2}, "unknown camera key"),
])
def test_bad_camera_is_a_clear_error(bad, msg):
    with pytest.raises(ValueError, match=msg):
        CameraSpec.from_config(bad)


@pytest.mark.parametrize("centre, n_cont, dashed", [("striped", 2, True), ("continuous", 3, False),
                                                   ("none", 2, False)])
def test_markings_follow_highway_env_line_types(centre, n_cont, dashed):
    tr = make_racetrack(centre_line=centre)
    for lane in tr.route:
        assert lane.line_types[1] == 2  # ego lane: continuous right edge
    r = _bare(tr, CameraSpec(height=20, width=40))
    assert len(r._line_pairs) == n_cont
    assert (len(r._small) > 0) == dashed



def test_open_road_window_matches_full_road():
    """Drawing only the road within 400 m of the camera changes nothing but horizon slivers."""
    from envs.tracks import make_random_road

    tr = make_random_road(4)
    spec = CameraSpec(height=78, width=200)
    win = _bare(tr, spec)
    full = _bare(tr, spec)
    full.ROAD_RANGE_M = 1e6
    for s in (30.0, 300.0):
        pos, h = tr.pose_at(s)
        a, da = win.render(pos, h)
        b, db = full.render(pos, h)
        differ = np.any(a != b, axis=-1)
        rows = np.flatnonzero(differ.any(1))
        # only road beyond 400 m differs: a sub-pixel sliver on the horizon row
        assert np.all(np.abs(rows + 0.5 - win.horizon_v) <= 1.0), rows
        assert np.array_equal(da, db)


def test_marking_range_only_drops_far_lines_on_a_loop():
    """Lines within 150 m as strips (runs across the loop's seam too) = the full rings nearby."""
    tr = make_racetrack()
    spec = CameraSpec(height=78, width=200)
    part = _bare(tr, spec)
    full = _bare(tr, spec)
    full.MARKING_RANGE_M = 1e6  # whole rings, no runs
    for s in (2.0, 100.0, 200.0, tr.length - 3.0):  # near the seam at s = 0 too
        pos, h = tr.pose_at(s)
        a, _ = part.render(pos, h)
        b, _ = full.render(pos, h)
        rows = np.flatnonzero(np.any(a != b, axis=-1).any(1))
        assert np.all(part.row_depth[rows] > 60.0), (s, rows)
