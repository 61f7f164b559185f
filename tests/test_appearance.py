"""Appearance variety (envs/appearance.py, envs/scenery.py): the train/test split, determinism,
ranges, and that each look is drawn where the geometry says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.appearance import (
    APPEARANCE_RANGES,
    FACTORS,
    all_combinations,
    default_appearance_options,
    is_test_combination,
    sample_appearance,
    split_combinations,
    validate_options,
)
from envs.camera import CameraSpec, DashcamRenderer
from envs.contract import make_env
from envs.scenery import POLE, TREE, cast_shadows, sample_scenery
from envs.tracks import make_racetrack, make_sine_road

CAM = {"height": 20, "width": 48}


def test_split_partitions_combinations_and_keeps_every_level_in_both():
    combos = all_combinations()
    test = [c for c in combos if is_test_combination(c)]
    train = [c for c in combos if not is_test_combination(c)]
    assert len(test) + len(train) == len(combos) == 4 * 3 * 2 * 4 * 5
    assert 0.2 < len(test) / len(combos) < 0.3
    for i, levels in enumerate(FACTORS.values()):  # each single level occurs in both splits
        for lv in levels:
            assert any(c[i] == lv for c in train) and any(c[i] == lv for c in test), lv
    opts = default_appearance_options()
    assert set(split_combinations("train", opts)) == set(train)
    assert set(split_combinations("test", opts)) == set(test)


def test_train_split_never_draws_a_test_appearance_seed_or_combination():
    for seed in range(0, 400, 2):
        a = sample_appearance(seed, "train")
        assert not is_test_combination(a.combination) and a.seed % 2 == 0
    for seed in range(1, 400, 2):
        assert is_test_combination(sample_appearance(seed, "test").combination)
    with pytest.raises(ValueError, match="not in the train split"):
        sample_appearance(3, "train")


def test_random_road_train_env_never_draws_test_roads_or_looks():
    tr, te = (make_env("liquid_drive/RandomRoad-v0", {"split": s}, CAM) for s in ("train", "test"))
    seen = {"train": set(), "test": set()}
    for seed in range(6):
        for name, env in (("train", tr), ("test", te)):
            env.reset(seed=seed)
            a = env.appearance
            parity = 0 if name == "train" else 1
            assert env.track.seed % 2 == parity and a.seed % 2 == parity
            assert is_test_combination(a.combination) == (name == "test")
            assert 3.0 <= env.track.lane_width <= 4.5
            seen[name].add((env.track.seed, a.seed))
    assert not {s for s, _ in seen["train"]} & {s for s, _ in seen["test"]}
    assert not {a for _, a in seen["train"]} & {a for _, a in seen["test"]}


def test_same_seed_same_frames_other_seed_other_look():
    env = make_env("liquid_drive/RandomRoad-v0", {"split": "train"}, CAM)
    frames = []
    for seed in (4, 4, 5):
        obs, info = env.reset(seed=seed)
        seq = [obs["image"]]
        for _ in range(3):
            obs, *_ = env.step(np.array([info["expert_steering"]], np.float32))
            seq.append(obs["image"])
        frames.append((np.stack(seq), env.appearance))
    assert np.array_equal(frames[0][0], frames[1][0]) and frames[0][1] == frames[1][1]
    assert not np.array_equal(frames[0][0], frames[2][0]) and frames[0][1] != frames[2][1]
    assert sample_appearance(10, "train") == sample_appearance(10, "train")
    # the look depends on the appearance seed alone: pinning it fixes the look on any episode
    pinned = make_env("liquid_drive/Racetrack-v0", {"appearance_seed": 12, "traffic": 0}, CAM)
    pinned.reset(seed=0)
    pal0 = pinned.scenery.palette
    pinned.reset(seed=1)
    assert pinned.scenery.palette == pal0 and pinned.appearance.seed == 12


@pytest.mark.parametrize("env_id", ["liquid_drive/Racetrack-v0", "liquid_drive/LaneKeeping-v0"])
@pytest.mark.parametrize("split", [None, "train", "test"])
def test_fixed_tracks_work_with_every_split(env_id, split):
    env = make_env(env_id, {"split": split}, CAM)
    _, info = env.reset(seed=3)
    assert env.track.lane_width == 4.0  # the tracks keep their geometry
    for _ in range(5):
        _, _, _, _, info = env.step(np.array([info["expert_steering"]], np.float32))
    assert info["on_road"]
    if split is not None:
        assert is_test_combination(env.appearance.combination) == (split == "test")


def test_camera_mount_varies_within_its_ranges():
    env = make_env("liquid_drive/Racetrack-v0", {"traffic": 0}, CAM)
    hs, ps, rs = [], [], []
    for seed in range(12):
        env.reset(seed=seed)
        cam = env.episode_camera
        hs.append(cam.height_m - 1.3)
        ps.append(cam.pitch_deg - 4.0)
        rs.append(cam.roll_deg)
        assert env.camera["height_m"] == 1.3 and env.camera["roll_deg"] == 0.0  # nominal
    assert max(map(abs, hs)) <= 0.1 and max(map(abs, ps)) <= 2.0 and max(map(abs, rs)) <= 1.0
    assert np.ptp(hs) > 0.05 and np.ptp(ps) > 1.0 and np.ptp(rs) > 0.5
    fixed = make_env("liquid_drive/Racetrack-v0", {"appearance": {
        "camera_height_jitter_m": 0, "camera_pitch_jitter_deg": 0, "camera_roll_jitter_deg": 0}}, CAM)
    fixed.reset(seed=1)
    assert fixed.episode_camera == fixed.camera_spec


@pytest.mark.parametrize("cfg, msg", [
    ({"split": "val"}, r"split must be 'train', 'test' or None"),
    ({"appearance": {"lane_width_m": [2.5, 4.0]}}, r"lane_width_m .*\[3, 4.5\]"),
    ({"appearance": {"camera_roll_jitter_deg": 2.0}}, r"camera_roll_jitter_deg .*\[0, 1\]"),
    ({"appearance": {"camera_pitch_jitter_deg": -1}}, r"camera_pitch_jitter_deg .*\[0, 2\]"),
    ({"appearance": {"time_of_day": [0.8, 0.2]}}, r"time_of_day .*\[0, 1\]"),
    ({"appearance": {"shoulders": ["lava"]}}, "grass, gravel, kerb, pavement"),
    ({"appearance": {"fog": 1}}, "unknown appearance option 'fog'"),
    ({"appearance": {"surfaces": ["new"], "marking_styles": ["dashed"], "marking_colours": ["white"],
                     "shoulders": ["grass"], "time_bands": ["dawn"]}, "split": "train"}, "widen them"),
    ({"lane_width_m": 5.0}, r"lane_width_m must be None or in \[3, 4.5\]"),
    ({"appearance_seed": 3, "split": "train"}, "not in the train split"),
    ({"appearance": "sunny"}, "appearance"),
])
def test_bad_appearance_config_names_the_valid_range(cfg, msg):
    with pytest.raises(ValueError, match=msg):
        make_env("liquid_drive/Racetrack-v0", cfg, CAM)


def test_options_restrict_the_draws():
    opts = {"surfaces": ["cracked"], "marking_colours": ["yellow"], "time_of_day": [0.45, 0.55],
            "lane_width_m": 3.2}
    assert validate_options(opts)["lane_width_m"] == [3.2, 3.2]
    for seed in range(0, 40, 2):
        a = sample_appearance(seed, "train", opts)
        assert a.surface == "cracked" and a.marking_colour == "yellow" and a.lane_width_m == 3.2
        assert 0.45 <= a.time_of_day <= 0.55 and a.time_band == "noon"
        assert a.sun_elevation_deg > 60
    assert set(APPEARANCE_RANGES) <= set(default_appearance_options())


def test_marking_styles_colours_and_shoulders_are_drawn():
    tr = make_sine_road(length=300.0, amplitude=0.0)
    spec = CameraSpec(height=60, width=120, forward_m=0.0)
    pos = np.array([50.0, 0.0])
    looks = {}
    for seed in range(0, 400, 2):
        a = sample_appearance(seed, None, {"marking_wear": 0.0, "camera_roll_jitter_deg": 0.0})
        key = (a.marking_style, a.marking_colour, a.shoulder)
        if key in looks or a.overcast:
            continue
        looks[key] = a
    assert len(looks) >= 20
    for (style, colour, shoulder), a in looks.items():
        sc = sample_scenery(tr, np.random.default_rng(a.seed), appearance=a, object_density=0.0,
                            shadows=False)
        centre = [ln for ln in sc.lines if abs(ln.lat + tr.lane_width / 2) < 0.3]
        assert {ln.kind for ln in centre} == {"dashed" if style == "dashed" else "solid"}
        assert len(centre) == (2 if style == "double" else 1)
        rgb = np.array(centre[0].colour, float)
        assert (rgb[2] < 0.6 * rgb[0]) == (colour == "yellow"), (colour, rgb)
        assert (len(sc.pre_bands) > 0) == (shoulder != "grass")
        if shoulder != "grass":  # the band reaches beyond the road edge on both sides
            lo, hi, _ = sc.pre_bands[0]
            assert lo < tr.left_edge and hi > tr.right_edge
        r = DashcamRenderer(tr, sc, spec)
        img, _ = r.render(pos, 0.0)
        if style == "dashed":
            assert len(r._small) > 0
        # paint of the centre line's colour appears left of the image centre
        d = np.abs(img.astype(int) - rgb.astype(int)).sum(-1)
        assert (d[30:, :60] < 30).sum() > 3, (style, colour)


def test_shadows_fall_away_from_the_sun_onto_the_road():
    tr = make_sine_road(length=300.0, amplitude=0.0)  # along +x; lateral + = +y (right)
    tree = (np.array([TREE]), np.array([[100.0, tr.right_edge + 3.0]]), np.array([[4.0, 8.0]]))
    base = sample_appearance(0, None, {"time_of_day": 0.1})
    import dataclasses

    # sun on the right of the road (azimuth +y): the shadow goes left, across the road
    sun_right = dataclasses.replace(base, sun_azimuth_rad=math.pi / 2, sun_elevation_deg=20.0)
    polys = cast_shadows(tr, *tree, sun_right)
    assert polys, "a low sun on the right casts the roadside tree's shadow onto the road"
    pts = np.concatenate(polys)
    assert pts[:, 1].min() >= tr.left_edge - 1e-6 and pts[:, 1].max() <= tr.right_edge + 1e-6
    assert abs(pts[:, 0].mean() - 100.0) < 3.0  # straight across, no along-road offset
    # sun on the left: the shadow falls away from the road
    sun_left = dataclasses.replace(sun_right, sun_azimuth_rad=-math.pi / 2)
    assert cast_shadows(tr, *tree, sun_left) == []
    # a higher sun casts a shorter shadow: less of the road is covered
    high = dataclasses.replace(sun_right, sun_elevation_deg=60.0)
    pole = (np.array([POLE]), np.array([[100.0, tr.right_edge + 1.0]]), np.array([[0.15, 5.0]]))
    span_low = np.ptp(np.concatenate(cast_shadows(tr, *pole, sun_right))[:, 1])
    span_high = np.ptp(np.concatenate(cast_shadows(tr, *pole, high))[:, 1])
    assert span_low > span_high > 0


def test_rolled_camera_tilts_the_horizon():
    tr = make_racetrack()
    sc = sample_scenery(tr, np.random.default_rng(0), randomize=False, object_density=0.0)
    spec = CameraSpec(height=60, width=120, pitch_deg=0.0, roll_deg=1.0)
    r = DashcamRenderer(tr, sc, spec)
    pos, h = tr.pose_at(5.0)
    _, depth = r.render(pos, h)
    sky = depth >= spec.sky_depth_m
    first_ground = np.argmax(~sky, axis=0)  # per column, the first ground row
    slope = np.polyfit(np.arange(120), first_ground, 1)[0]
    assert slope == pytest.approx(-math.tan(math.radians(1.0)), abs=0.006)  # right side higher
    flat = DashcamRenderer(tr, sc, CameraSpec(height=60, width=120, pitch_deg=0.0))
    _, d0 = flat.render(pos, h)
    assert np.ptp(np.argmax(d0 < spec.sky_depth_m, axis=0)) == 0
    with pytest.raises(ValueError, match="roll_deg"):
        CameraSpec(roll_deg=20.0)
