"""Explanatory video: frames decode with the right count, size and rate; CLI modes; bad input."""

from __future__ import annotations

import json
import os

import cv2
import gymnasium as gym
import imageio.v2 as iio
import numpy as np
import pytest

from driving.cli import main
from driving.explain.video import Composer, FrameData, FrameWriter, write_png

FAKE_ID = "liquid_drive/ExplainFake-v0"


class FakeRoadEnv(gym.Env):
    """A stand-in with the env contract (obs image/speed, info keys, recover) at 5 Hz.

    The car's lateral offset follows the steering; it renders a grey road whose position
    moves with the offset, so the policy's input changes with its own actions.
    """

    metadata = {"render_modes": []}

    def __init__(self, camera: dict | None = None, **_: object) -> None:
        cam = camera or {}
        self.hw = (int(cam.get("height", 78)), int(cam.get("width", 200)))
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (*self.hw, 3), np.uint8),
            "speed": gym.spaces.Box(0, 50, (1,), np.float32)})
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
        self.config = {"policy_frequency": 5}
        self.offset = 0.0
        self.t = 0.0

    def _obs(self):
        h, w = self.hw
        img = np.full((h, w, 3), (90, 150, 220), np.uint8)
        img[h // 2:] = (60, 140, 60)
        cx = int(w / 2 - self.offset * w / 8)
        pts = np.array([[cx - 4, h // 2], [cx + 4, h // 2], [cx + w // 2, h - 1], [cx - w // 2, h - 1]])
        cv2.fillConvexPoly(img, pts.astype(np.int32), (110, 110, 110))
        depth = np.tile(np.linspace(80, 2, h, dtype=np.float32)[:, None], (1, w))
        info = {"cross_track_m": self.offset, "expert_steering": float(np.clip(-self.offset, -1, 1)),
                "depth": depth, "crashed": abs(self.offset) > 1.5, "on_road": abs(self.offset) <= 1.5,
                "dt_s": 0.2, "time_s": self.t, "distance_m": self.t * 8.0}
        return {"image": img, "speed": np.array([8.0], np.float32)}, info

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.offset, self.t = 0.3, 0.0
        return self._obs()

    def step(self, action):
        return self.advance(action, 0.2)

    def advance(self, action, dt_s):
        self.offset += 0.8 * float(np.asarray(action).reshape(-1)[0]) + 0.1
        self.t += float(dt_s)
        obs, info = self._obs()
        return obs, 0.0, False, False, info

    def recover(self):
        self.offset = 0.0
        return self._obs()

    # envs.contract.DrivingEnv
    nominal_dt = 0.2

    @property
    def image_hw(self):
        return self.hw

    @property
    def camera(self):
        return {"height": self.hw[0], "width": self.hw[1]}

    def expert_action(self):
        return float(np.clip(-self.offset, -1, 1))


if FAKE_ID not in gym.registry:
    gym.register(id=FAKE_ID, entry_point=FakeRoadEnv)


def _frames(n: int):
    rng = np.random.default_rng(0)
    cam = rng.integers(0, 256, (78, 200, 3), dtype=np.uint8)
    for i in range(n):
        yield FrameData(camera=cam, vbp=rng.random((78, 200)), neuron_maps={0: rng.random((78, 200))},
                        states=rng.standard_normal(19), steering=0.1 * i, expert=0.0,
                        cross_track_m=0.1, crashes=0, step=i, time_s=0.1 * i)


def _read(path: str) -> tuple[list[np.ndarray], dict]:
    r = iio.get_reader(path)
    meta = r.get_meta_data()
    frames = [f for f in r]
    r.close()
    return frames, meta


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_writer_frame_count_and_size(tmp_path, ext):
    comp = Composer(19, [0], wiring=None, title="t")
    path = str(tmp_path / f"v{ext}")
    n = 5 if ext == ".mp4" else 3  # GIF palette quantisation of 1280×720 frames is slow
    with FrameWriter(path, fps=10) as w:
        for fd in _frames(n):
            w.append(comp.compose(fd))
    frames, meta = _read(path)
    assert len(frames) == n
    assert frames[0].shape[:2] == (720, 1280)
    if ext == ".mp4":
        assert meta["codec"] == "h264" and meta["fps"] == pytest.approx(10.0)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]  # temp file replaced


def test_composer_draws_panels_and_rejects_small_frames():
    comp = Composer(19, [0, "motor"], wiring=None, title="t")
    fds = list(_frames(3))
    a = comp.compose(fds[0])
    b = comp.compose(fds[1])
    x0, y0, x1, y1 = comp.r_cam
    assert np.abs(a[y0:y1, x0:x1].astype(int) - cv2.resize(fds[0].camera, (x1 - x0, y1 - y0)).astype(int)).max() <= 1
    assert not np.array_equal(a[comp.r_steer[1]:comp.r_steer[3]], b[comp.r_steer[1]:comp.r_steer[3]])
    with pytest.raises(ValueError, match="1280"):
        Composer(19, [0], size=(640, 360))


def test_cli_video_on_closed_loop_drive(tmp_path):
    out = tmp_path / "drive.mp4"
    rc = main(["explain", "--policy", "ncp-ltc", "--env", FAKE_ID, "--steps", "5",
               "--corruption", "noise:3", "--neurons", "0,5,18", "--out", str(out)])
    assert rc == 0
    frames, meta = _read(str(out))
    assert len(frames) == 5 and frames[0].shape == (720, 1280, 3)
    assert meta["fps"] == pytest.approx(5.0)  # 1 / dt of the env


def test_cli_still_and_ssim(tmp_path):
    png = tmp_path / "still.png"
    assert main(["explain", "--policy", "ncp-cfc", "--env", FAKE_ID, "--frame", "2",
                 "--out", str(png)]) == 0
    img = iio.imread(str(png))
    assert img.shape[:2] == (720, 1280)
    ig = tmp_path / "ig.png"
    assert main(["explain", "--policy", "ncp-cfc", "--env", FAKE_ID, "--frame", "1", "--neurons",
                 "all", "--saliency", "integrated", "--ig-steps", "2", "--out", str(ig)]) == 0
    assert not np.array_equal(iio.imread(str(ig)), img)
    js = tmp_path / "ssim.json"
    assert main(["explain", "--ssim", "--policy", "ncp-cfc", "--env", FAKE_ID, "--steps", "4",
                 "--corruption", "noise:5", "--out", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["frames"] == 4 and len(data["per_frame"]) == 4
    assert all(-1.0 <= v <= 1.0 for v in data["per_frame"])
    assert data["ssim_mean"] == pytest.approx(np.mean(data["per_frame"]), abs=1e-5)
    assert data["ssim_mean"] < 0.999  # heavy noise does change the attention map


@pytest.mark.parametrize("extra,msg", [
    (["--neurons", "0,19"], "out of range"),
    (["--corruption", "fog:x"], "not an integer"),
    (["--corruption", "smoke:2"], "unknown corruption"),
    (["--corruption", "fog:9"], "out of range"),
    (["--corruption", "jitter:2"], "timing fault"),
    (["--neurons", "1,x"], "comma-separated integers"),
])
def test_bad_input_exits_2_before_work(tmp_path, capsys, extra, msg):
    out = tmp_path / "x.mp4"
    rc = main(["explain", "--policy", "ncp-ltc", "--env", FAKE_ID, "--steps", "3", "--out", str(out),
               *extra])
    assert rc == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


def test_bad_output_folder_exits_2(tmp_path, capsys):
    assert main(["explain", "--policy", "ncp-ltc", "--out", str(tmp_path / "no" / "x.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        assert main(["explain", "--policy", "ncp-ltc", "--out", str(ro / "x.mp4")]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_write_png_roundtrip(tmp_path):
    img = np.zeros((720, 1280, 3), np.uint8)
    img[10:20, 30:40] = (255, 0, 0)
    write_png(str(tmp_path / "a.png"), img)
    np.testing.assert_array_equal(iio.imread(str(tmp_path / "a.png")), img)


def test_drive_counts_crashes_and_recovers_like_evaluation():
    """A policy that always steers +1 in FakeRoadEnv: offset 0.3 → 1.2 → 2.1 (crash, recover to
    0) → 0.9 → 1.8 (crash) → …, so crashes happen after steps 1, 3, 5; the state is kept."""
    import torch
    from torch import nn

    from driving.explain.drive import drive

    class Hard(nn.Module):
        image_hw = (78, 200)
        units = 2

        def __init__(self):
            super().__init__()
            self.cnn = nn.Flatten()

        def initial_state(self, batch=1):
            return torch.zeros(batch, 2)

        def forward(self, images, hx=None, timespans=None, return_states=False):
            self.cnn(images.float())
            h = hx + 1
            return torch.ones(1, 1), h, h[:, None]

    env = gym.make(FAKE_ID)
    steps = list(drive(Hard(), env, 6))
    assert [s.crashes for s in steps] == [0, 0, 1, 1, 2, 2]
    assert [float(s.states[0]) for s in steps] == [1, 2, 3, 4, 5, 6]  # state kept over recoveries
    assert all(s.dt == pytest.approx(0.2) for s in steps)


def test_ssim_severity_zero_is_exactly_one(tmp_path):
    """Severity 0 leaves the frame untouched: clean and 'corrupted' maps are identical."""
    js = tmp_path / "s.json"
    assert main(["explain", "--ssim", "--policy", "ncp-ltc", "--env", FAKE_ID, "--steps", "3",
                 "--corruption", "fog:0", "--out", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["per_frame"] == [1.0, 1.0, 1.0] and data["ssim_std"] == 0.0


def test_real_env_video_frames_and_rate(tmp_path):
    """On the real dashcam env: 5 frames of 1280×720 H.264 at the env's 1/dt."""
    import envs  # noqa: F401

    env_id = "liquid_drive/Racetrack-v0"
    if env_id not in gym.registry:
        pytest.skip(f"{env_id} not registered")
    env = gym.make(env_id)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(1, np.float32))
    fps = 1.0 / float(info["dt_s"])
    env.close()
    out = tmp_path / "real.mp4"
    assert main(["explain", "--policy", "ncp-cfc", "--env", env_id, "--steps", "5",
                 "--corruption", "fog:3", "--out", str(out)]) == 0
    frames, meta = _read(str(out))
    assert len(frames) == 5 and frames[0].shape == (720, 1280, 3)
    assert meta["fps"] == pytest.approx(fps)


def test_cli_checkpoint_still(tmp_path):
    """--checkpoint loads a saved run (safetensors + config.json) and renders a still."""
    from policies.checkpoint import save_checkpoint
    from policies.factory import build_policy

    policy = build_policy("ncp-ltc")
    run = tmp_path / "run"
    save_checkpoint(str(run), policy, {"policy": "ncp-ltc", "image_hw": list(policy.image_hw)})
    png = tmp_path / "c.png"
    assert main(["explain", "--checkpoint", str(run), "--env", FAKE_ID, "--frame", "1",
                 "--out", str(png)]) == 0
    assert iio.imread(str(png)).shape[:2] == (720, 1280)
    assert main(["explain", "--checkpoint", str(tmp_path / "nope"), "--env", FAKE_ID,
                 "--out", str(tmp_path / "x.mp4")]) == 2
