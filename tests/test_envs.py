"""The gymnasium contract of the dashcam envs (docs/architecture.md, envs/)."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from highway_env.road.lane import CircularLane

import envs
from envs.expert import expert_steering

SMALL = {"camera": {"height": 24, "width": 64}}
INFO_KEYS = {"cross_track_m", "heading_error_rad", "curvature", "on_road", "distance_m",
             "expert_steering", "depth", "time_s", "dt_s", "crashed", "lap_progress"}


def make(env_id="liquid_drive/Racetrack-v0", **kw):
    return gym.make(env_id, **{**SMALL, **kw})


def test_ids_registered_and_import_does_not_import_carla():
    for eid in (*envs.ENV_IDS, envs.CARLA_ENV_ID):
        assert eid in gym.registry
    code = "import sys, envs; print('carla' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False"


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_check_env_and_contract(env_id):
    env = make(env_id, render_mode="rgb_array")
    check_env(env.unwrapped)
    obs, info = env.reset(seed=3)
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (24, 64, 3)
    assert obs["speed"].dtype == np.float32 and obs["speed"].shape == (1,)
    assert INFO_KEYS <= set(info)
    assert info["depth"].dtype == np.float32 and info["depth"].shape == (24, 64)
    obs2, r, term, trunc, info2 = env.step(np.array([0.0], np.float32))
    assert info2["time_s"] == pytest.approx(0.1) and info2["dt_s"] == pytest.approx(0.1)
    assert info2["distance_m"] == pytest.approx(obs["speed"][0] * 0.1, rel=0.1)
    # the observation is the view *after* the step: re-rendering the new pose reproduces it
    u = env.unwrapped
    img, depth = u.renderer.render(u.ego.position, u.ego.heading, u._vehicles_for_camera())
    assert np.array_equal(img, obs2["image"]) and np.array_equal(depth, info2["depth"])
    assert not np.array_equal(obs2["image"], obs["image"])
    frame = env.render()
    assert frame.ndim == 3 and frame.dtype == np.uint8


def test_seeded_random_start_poses():
    env = make()
    poses = []
    for seed in (0, 1, 0):
        env.reset(seed=seed)
        u = env.unwrapped
        poses.append((*u.ego.position, u.ego.heading, u.cross_track, u.target_speed))
    assert poses[0] == poses[2]
    assert poses[0] != poses[1]
    # starts differ in place, lateral offset and heading over seeds, within the configured bounds
    lats = []
    for seed in range(8):
        _, info = env.reset(seed=seed)
        lats.append(info["cross_track_m"])
        assert abs(info["heading_error_rad"]) <= np.deg2rad(5) + 1e-9
        assert 8.0 <= env.unwrapped.target_speed <= 10.0
    assert np.ptp(lats) > 0.2 and max(map(abs, lats)) <= 0.5 + 1e-9


def test_truncation_and_config_overrides():
    env = make(max_steps=3, config={"policy_frequency": 5.0})
    u = env.unwrapped
    assert u.config["policy_frequency"] == 5.0 and u.config["camera"]["fov_deg"] == 60.0
    env.reset(seed=0)
    for i in range(3):
        _, _, term, trunc, info = env.step(np.zeros(1, np.float32))
        assert not term
        assert trunc == (i == 2)
    assert info["time_s"] == pytest.approx(0.6)


def test_off_road_counts_crash_recover_and_terminate_flag():
    env = make(traffic=0)
    env.reset(seed=1)
    crashed = False
    for _ in range(60):
        _, _, term, _, info = env.step(np.array([1.0], np.float32))  # hard right
        assert not term  # default: leaving the road does not end the episode
        if not info["on_road"]:
            crashed = info["crashed"]
            break
    assert crashed
    obs, info = env.unwrapped.recover()
    assert abs(info["cross_track_m"]) < 1e-6 and abs(info["heading_error_rad"]) < 1e-6
    assert info["on_road"] and not info["crashed"] and env.unwrapped.recoveries == 1
    # keep going after the recovery
    _, _, _, _, info = env.step(np.array([info["expert_steering"]], np.float32))
    assert info["on_road"]
    env2 = make(traffic=0, terminate_off_road=True)
    env2.reset(seed=1)
    for _ in range(60):
        _, _, term, _, info = env2.step(np.array([1.0], np.float32))
        if not info["on_road"]:
            break
    assert term


def test_advance_custom_dt_and_curvature_sign():
    env = make(traffic=0)
    _, info0 = env.reset(seed=2)
    _, _, _, _, info = env.unwrapped.advance(np.array([info0["expert_steering"]], np.float32), 0.037)
    assert info["time_s"] == pytest.approx(0.037) and info["dt_s"] == pytest.approx(0.037)
    assert info["distance_m"] == pytest.approx(env.unwrapped.ego.speed * 0.037, rel=0.1)
    # the racetrack's curvatures: radii 10..35 m, both signs
    tr = env.unwrapped.track
    radii = [lane.radius for lane in tr.route if isinstance(lane, CircularLane)]
    assert min(radii) == pytest.approx(10) and max(radii) == pytest.approx(35)
    ks = [tr.curvature(i, 1.0) for i in range(len(tr.route))]
    assert max(ks) == pytest.approx(1 / 10, rel=1e-3) and min(ks) == pytest.approx(-1 / 15, rel=1e-3)


def test_dart_noise_perturbs_execution_not_label():
    env = make(dart_noise=0.3, traffic=0)
    _, info = env.reset(seed=0)
    diffs = []
    for _ in range(10):
        label = info["expert_steering"]
        _, _, _, _, info = env.step(np.array([label], np.float32))
        diffs.append(info["executed_steering"] - label)
        assert info["expert_steering"] == pytest.approx(expert_steering(env))
    assert np.std(diffs) > 0.1


def test_random_road_train_test_disjoint():
    tr_env = make("liquid_drive/RandomRoad-v0", split="train")
    te_env = make("liquid_drive/RandomRoad-v0", split="test")
    train, test = set(), set()
    for seed in range(4):
        tr_env.reset(seed=seed)
        te_env.reset(seed=seed)
        train.add(tr_env.unwrapped.track.seed)
        test.add(te_env.unwrapped.track.seed)
    assert all(s % 2 == 0 for s in train) and all(s % 2 == 1 for s in test)
    assert len(train) == 4 and not train & test
    pinned = make("liquid_drive/RandomRoad-v0", split="test", road_seed=7)
    pinned.reset(seed=0)
    a = pinned.unwrapped.track.points.copy()
    pinned.reset(seed=1)
    assert np.array_equal(a, pinned.unwrapped.track.points)
    with pytest.raises(ValueError, match="test range"):
        make("liquid_drive/RandomRoad-v0", split="test", road_seed=8)
    with pytest.raises(ValueError, match="split"):
        make("liquid_drive/RandomRoad-v0", split="val")


@pytest.mark.parametrize("kw, msg", [
    ({"track": "moon"}, "unknown track"),
    ({"camera": {"height": 0}}, "height"),
    ({"camera": {"width": -1}}, "width"),
    ({"camera": {"fov_deg": 180}}, "fov_deg"),
    ({"camera": {"fov_deg": 0}}, "fov_deg"),
    ({"nonsense": 1}, "unknown config key"),
    ({"max_steps": 0}, "max_steps"),
    ({"track_kwargs": {"bogus": 1}}, "unknown track_kwargs"),
    ({"track_kwargs": {"centre_line": "zigzag"}}, "centre_line"),
    ({"dynamics": "hover"}, "dynamics"),
])
def test_bad_config_is_a_clear_error(kw, msg):
    with pytest.raises(ValueError, match=msg):
        gym.make("liquid_drive/Racetrack-v0", **kw)  # at make time, not at the first reset


def test_bad_action_is_a_clear_error():
    env = make().unwrapped
    env.reset(seed=0)
    for bad in (np.zeros(2, np.float32), np.zeros((1, 1), np.float32)):
        with pytest.raises(ValueError, match="shape"):
            env.step(bad)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="dt_s"):
        env.advance(np.zeros(1, np.float32), 0.0)
    with pytest.raises(gym.error.Error):
        gym.make("liquid_drive/NoSuchTrack-v0")


def test_async_vector_env():
    fns = [lambda: make("liquid_drive/Racetrack-v0"), lambda: make("liquid_drive/RandomRoad-v0")]
    venv = gym.vector.AsyncVectorEnv(fns)
    try:
        obs, info = venv.reset(seed=[0, 1])
        assert obs["image"].shape == (2, 24, 64, 3)
        for _ in range(3):
            obs, r, term, trunc, info = venv.step(np.asarray(info["expert_steering"], np.float32)[:, None])
        assert info["depth"].shape == (2, 24, 64)
        assert np.all(info["on_road"])
    finally:
        venv.close()


def test_collision_with_traffic_is_a_crash():
    env = make(traffic=1)
    env.reset(seed=0)
    u = env.unwrapped
    car = u.road.vehicles[1]
    car.lateral = 0.0  # move the other car into the ego lane, just ahead, slow
    car.route_s = u.route_s + 6.0
    car.signed_speed = 1.0
    hit = False
    for _ in range(10):
        _, _, _, _, info = env.step(np.zeros(1, np.float32))
        if info["collision"]:
            hit = info["crashed"]
            break
    assert hit


def test_scenery_randomised_by_seed_and_never_on_the_road():
    from envs.scenery import _road_clearance, default_palette

    env = make("liquid_drive/RandomRoad-v0")
    looks = set()
    for seed in range(4):
        env.reset(seed=seed)
        u = env.unwrapped
        looks.add((u.scenery.palette.asphalt, u.scenery.palette.grass_near))
        assert len(u.scenery.obj_pos) > 20
        assert np.all(_road_clearance(u.track, u.scenery.obj_pos) > 0.5)
    assert len(looks) == 4
    plain = make(randomize=False)
    plain.reset(seed=5)
    assert plain.unwrapped.scenery.palette == default_palette()
    assert len(plain.unwrapped.scenery.shadows) == 0


def test_preview_cli_writes_png(tmp_path):
    import imageio.v3 as iio

    from driving.cli import main

    out = tmp_path / "p.png"
    assert main(["preview", "--env", "liquid_drive/LaneKeeping-v0", "--out", str(out),
                 "--frames", "2", "--every", "3", "--scale", "1"]) == 0
    img = iio.imread(out)
    # two 78x200 frames + gap over their depth, beside a square top-down view
    assert img.shape == (78 * 2 + 4, 200 * 2 + 4 + 4 + 78 * 2 + 4, 3)
    assert main(["preview", "--env", "liquid_drive/Nope-v0", "--out", str(out)]) == 2
    assert main(["preview", "--out", str(tmp_path / "p.jpg")]) == 2


def _arc_radii(track) -> list[float]:
    return [lane.radius for lane in track.route if isinstance(lane, CircularLane)]


def test_random_roads_with_a_tighter_radius_range():
    from envs.tracks import make_random_road

    default = make_random_road(5001)
    # the default range draws the same roads as before radius_m existed (the v2 sweep's roads)
    assert float(default.points.sum()) == pytest.approx(268385.59162766143, rel=0, abs=1e-6)
    assert np.array_equal(make_random_road(5001, radius_m=(15, 60)).points, default.points)
    radii = [r for s in range(0, 40, 2) for r in _arc_radii(make_random_road(s, radius_m=[10, 60]))]
    centre = [r for s in range(0, 40, 2) for r in _arc_radii(make_random_road(s))]
    assert min(centre) > 15 - 4.5 - 1e-6  # the route's lane: the arc's radius ± a lane width
    assert min(radii) < 12 and sum(r < 15 for r in radii) > 0.2 * len(radii)
    for bad in ([5, 60], [30, 20], [10, 500], "tight", [10]):
        with pytest.raises(ValueError, match=r"radius_m must"):
            make_random_road(2, radius_m=bad)


def test_random_roads_with_back_to_back_bends():
    from envs.tracks import make_random_road

    def arc_after_arc(prob, radius_m=None):
        """Share of arcs whose next piece is another arc, over 20 roads."""
        kw = {} if radius_m is None else {"radius_m": radius_m}
        follows = []
        for s in range(0, 40, 2):
            kinds = [isinstance(lane, CircularLane)
                     for lane in make_random_road(s, straight_prob=prob, **kw).route]
            follows += [b for a, b in zip(kinds[:-1], kinds[1:]) if a]
        return sum(follows) / len(follows)

    # the default keeps the earlier roads (same seed, same points)
    assert np.array_equal(make_random_road(5001, straight_prob=0.75).points, make_random_road(5001).points)
    assert 0.15 < arc_after_arc(0.75) < 0.35  # about 1 - 0.75
    assert arc_after_arc(0.0) == 1.0  # never a straight after an arc
    assert arc_after_arc(0.25, radius_m=[10, 25]) > 0.6  # the chicane recipe of docs/simulator.md
    a, b = make_random_road(8, straight_prob=0.3), make_random_road(8, straight_prob=0.3)
    assert np.array_equal(a.points, b.points)  # seeded
    for bad in (-0.1, 1.5, "often", None, float("nan")):
        with pytest.raises(ValueError, match=r"straight_prob must"):
            make_random_road(2, straight_prob=bad)


def test_tight_random_road_through_the_env_config_and_the_expert_keeps_its_lane():
    env = gym.make("liquid_drive/RandomRoad-v0", track_kwargs={"length": 300.0, "radius_m": [10, 20]},
                   max_steps=200)
    env.reset(seed=4)
    worst = tightest = 0.0
    for _ in range(200):
        _, _, term, trunc, info = env.step(np.array([expert_steering(env.unwrapped)], np.float32))
        worst = max(worst, abs(info["cross_track_m"]))
        tightest = max(tightest, abs(info["curvature"]))
        assert not info["crashed"] and not info["off_road"] and info["lane_invasion_m"] < 0.5
        if term or trunc:
            break
    assert worst < 1.0 and tightest > 1 / 25  # it drove through the tight bends
    env.close()
