"""`driving explain --data DIR --episode K`: explanations over recorded footage."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from driving.cli import main
from driving.dataset import Dataset
from driving.importers import ImportOptions, run_import
from driving.importers.writers import sim_drive, write_tub


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    root = tmp_path_factory.mktemp("footage")
    frames, steer, _ = sim_drive(12, (78, 200), seed=4)
    write_tub(root / "tub", frames, steer, 1_700_000_000_000 + np.arange(12) * 100)
    run_import("donkeycar", root / "tub", root / "ds",
               ImportOptions(min_episode_frames=4, camera_fov_deg=60, camera_height_m=1.3, camera_pitch_deg=4),
               progress=False)
    return root


def _one_line_exit_2(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_video_and_still_over_footage(footage, tmp_path):
    out = tmp_path / "e.mp4"
    assert main(["explain", "--policy", "ncp-cfc", "--data", str(footage / "ds"), "--episode", "0",
                 "--steps", "5", "--corruption", "fog:3", "--out", str(out)]) == 0
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 5 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 1280
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0, rel=1e-3)  # 1 / recorded dt
    png = tmp_path / "s.png"
    assert main(["explain", "--policy", "ncp-ltc", "--data", str(footage / "ds"), "--frame", "3",
                 "--out", str(png)]) == 0
    img = cv2.imread(str(png))
    assert img.shape == (720, 1280, 3)


def test_ssim_over_footage_clean_is_one_noise_below(footage, tmp_path):
    out = tmp_path / "s.json"
    assert main(["explain", "--ssim", "--policy", "ncp-cfc", "--data", str(footage / "ds"), "--corruption",
                 "noise:0", "--steps", "4", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["per_frame"] == [1.0] * 4  # severity 0: identical maps
    assert main(["explain", "--ssim", "--policy", "ncp-cfc", "--data", str(footage / "ds"), "--corruption",
                 "noise:4", "--steps", "4", "--out", str(out), "--force"]) == 0
    rep = json.loads(out.read_text())
    assert rep["frames"] == 4 and 0 < rep["ssim_mean"] < 1 and rep["episode"] == Dataset(footage / "ds").episodes[0].id


def test_footage_bad_input(footage, tmp_path, capsys):
    line = _one_line_exit_2(["explain", "--policy", "ncp-cfc", "--data", str(footage / "ds"), "--episode", "7",
                             "--out", str(tmp_path / "x.mp4")], capsys)
    assert "--episode 7 is not in" in line
    line = _one_line_exit_2(["explain", "--policy", "ncp-cfc", "--data", str(footage / "ds"), "--frame", "50",
                             "--out", str(tmp_path / "x.png")], capsys)
    assert "beyond episode" in line
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.png").exists()
