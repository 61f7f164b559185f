"""`driving import`: round trips from simulator frames, skip accounting, bad input (exit 2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from driving.cli import main
from driving.dataset import Dataset
from driving.importers import ImportOptions, require_simulator, run_import
from driving.importers.common import Geometry, flat_ground_depth
from driving.importers.writers import (
    sim_drive,
    write_labels_csv,
    write_tub,
    write_udacity,
    write_video,
)

T0_MS = 1_700_000_000_000


@pytest.fixture(scope="module")
def drive():
    frames, steer, _ = sim_drive(48, (120, 160), seed=3)
    return frames, steer


def _opts(**kw) -> ImportOptions:
    base = dict(size=(120, 160), min_episode_frames=4)
    base.update(kw)
    return ImportOptions(**base)


def _all(ds: Dataset, name: str) -> np.ndarray:
    return np.concatenate([ds.steps(i, name) for i in range(len(ds))])


def _frames(ds: Dataset) -> np.ndarray:
    return np.concatenate([ds.frames(i) for i in range(len(ds))])


def _jpeg(frames: np.ndarray, quality: int = 95) -> np.ndarray:
    """What a JPEG encode + decode (the writers' quality) makes of RGB frames."""
    import cv2

    out = []
    for f in frames:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        out.append(cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return np.stack(out)


def _one_line_exit_2(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------------ donkeycar


def test_tub_round_trip_frames_labels_time(tmp_path, drive):
    frames, steer = drive
    ts = T0_MS + np.arange(len(frames)) * 50 + np.r_[0, np.cumsum(np.arange(len(frames) - 1) % 3)]
    write_tub(tmp_path / "tub", frames, steer, ts, max_len=20)  # three catalogs
    s = run_import("donkeycar", tmp_path / "tub", tmp_path / "ds", _opts(), progress=False, modes={"user"})
    ds = Dataset(tmp_path / "ds")
    assert s["episodes_written"] == 1 and s["frames_written"] == len(frames) and not s["skipped"]
    np.testing.assert_array_equal(_all(ds, "steering"), steer.astype(np.float32))  # labels exact
    got = _frames(ds)
    np.testing.assert_array_equal(got, _jpeg(frames))  # exactly the JPEG round trip, nothing else
    assert np.abs(got.astype(np.int16) - frames).mean() < 3.0
    dt = ds.steps(0, "dt_s")
    np.testing.assert_allclose(dt[1:], np.diff(ts) / 1000.0, atol=1e-6)  # real, irregular intervals
    assert dt[0] == pytest.approx(np.median(np.diff(ts)) / 1000.0, rel=1e-6)
    np.testing.assert_allclose(ds.steps(0, "time_s"), (ts - ts[0]) / 1000.0)
    meta = ds.episodes[0].meta
    assert meta["source"] == "import:donkeycar" and meta["origin"]["format"] == "donkeycar"
    assert meta["origin"]["path"] == str((tmp_path / "tub").resolve())
    assert ds.attrs["env_id"] == "import/donkeycar"
    assert "throttle" in meta["steps"]
    summary = json.loads(next((tmp_path / "ds" / "imports").glob("donkeycar-*.json")).read_text())
    assert summary["frames_written"] == len(frames)


def test_tub_deleted_sessions_gaps_modes_and_damage(tmp_path, drive):
    frames, steer = drive
    n = len(frames)
    ts = T0_MS + np.arange(n) * 50
    ts[30:] += 5000  # a 5 s pause: new episode
    ts[20] = ts[19] - 10  # time going backwards
    sessions = ["26-01-01_0"] * 40 + ["26-01-01_1"] * (n - 40)
    modes = ["user"] * n
    modes[25] = "local"
    angles = steer.copy()
    angles[7] = np.nan
    write_tub(tmp_path / "tub", frames, angles, ts, sessions=sessions, modes=modes, deleted=[12, 13])
    (tmp_path / "tub" / "images" / "3_cam_image_array_.jpg").unlink()  # missing image
    (tmp_path / "tub" / "images" / "5_cam_image_array_.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    s = run_import("donkeycar", tmp_path / "tub", tmp_path / "ds", _opts(), progress=False, modes={"user"})
    sk = {k: v["count"] for k, v in s["skipped"].items()}
    assert sk == {"deleted": 2, "mode": 1, "missing_image": 1, "undecodable_image": 1,
                  "non_finite_label": 1, "time_backwards": 1}
    ds = Dataset(tmp_path / "ds")
    spans = [(e.meta["origin"]["first_record"], e.meta["origin"]["last_record"], e.meta["ended_by"])
             for e in ds.episodes]
    # cuts: deleted 12-13, pilot record 25, the 5 s gap before 30, the session change at 40
    assert spans == [(0, 11, "deleted"), (14, 24, "deleted"), (26, 29, "gap"), (30, 39, "session"),
                     (40, n - 1, "end")]
    assert sum(e.length for e in ds.episodes) == n - 7
    kept = [i for i in range(n) if i not in (3, 5, 7, 12, 13, 20, 25)]
    np.testing.assert_array_equal(_all(ds, "steering"), angles[kept].astype(np.float32))


def test_tub_rerun_resumes_and_crlf_catalogs(tmp_path, drive):
    frames, steer = drive
    write_tub(tmp_path / "tub", frames, steer, T0_MS + np.arange(len(frames)) * 50, newline="\r\n")
    a = run_import("donkeycar", tmp_path / "tub", tmp_path / "ds", _opts(max_episode_frames=20), progress=False)
    assert a["episodes_written"] == 3  # 48 frames cut at 20
    b = run_import("donkeycar", tmp_path / "tub", tmp_path / "ds", _opts(max_episode_frames=20), progress=False)
    assert b["episodes_written"] == 0 and b["skipped"]["already_imported"]["count"] == len(frames)
    assert len(Dataset(tmp_path / "ds")) == 3


def test_killed_import_keeps_committed_episodes_and_rerun_completes(tmp_path, drive, monkeypatch):
    from driving.dataset import DatasetWriter

    frames, steer = drive
    write_tub(tmp_path / "tub", frames, steer, T0_MS + np.arange(len(frames)) * 50)
    opts = _opts(max_episode_frames=12)  # four episodes of 12 frames
    real = DatasetWriter.append_episode
    calls = {"n": 0}

    def dying(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed while writing the third episode
        return real(self, *a, **kw)

    monkeypatch.setattr(DatasetWriter, "append_episode", dying)
    with pytest.raises(KeyboardInterrupt):
        run_import("donkeycar", tmp_path / "tub", tmp_path / "ds", opts, progress=False)
    assert len(Dataset(tmp_path / "ds")) == 2
    monkeypatch.setattr(DatasetWriter, "append_episode", real)
    s = run_import("donkeycar", tmp_path / "tub", tmp_path / "ds", opts, progress=False)
    assert s["episodes_written"] == 2 and s["skipped"]["already_imported"]["count"] == 24
    ds = Dataset(tmp_path / "ds")
    firsts = sorted(e.meta["origin"]["first_record"] for e in ds.episodes)
    assert firsts == [0, 12, 24, 36]
    order = np.argsort([e.meta["origin"]["first_record"] for e in ds.episodes])
    np.testing.assert_array_equal(np.concatenate([ds.steps(int(i), "steering") for i in order]),
                                  steer.astype(np.float32))


def test_folder_of_tubs_and_v1_tub_message(tmp_path, drive, capsys):
    frames, steer = drive
    write_tub(tmp_path / "data" / "tub_1", frames[:20], steer[:20], T0_MS + np.arange(20) * 50)
    write_tub(tmp_path / "data" / "tub_2", frames[20:], steer[20:], T0_MS + np.arange(28) * 50)
    s = run_import("donkeycar", tmp_path / "data", tmp_path / "ds", _opts(), progress=False)
    assert s["episodes_written"] == 2 and s["frames_written"] == 48
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "record_1.json").write_text("{}")
    line = _one_line_exit_2(["import", "--format", "donkeycar", str(tmp_path / "v1"), "--out",
                             str(tmp_path / "o")], capsys)
    assert "v1 tub" in line and "convert_to_tub_v2" in line
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------ udacity


def test_udacity_round_trip_windows_paths_no_header_side_cameras(tmp_path, drive):
    frames, steer = drive
    times = 1_700_000_000.0 + np.arange(len(frames)) * 0.1
    left, right = frames[:, :, ::-1].copy(), np.ascontiguousarray(frames[::-1])
    log = write_udacity(tmp_path / "run", frames, steer, times, header=False, windows_paths=True,
                        side_frames=(left, right), speed_mph=np.full(len(frames), 10.0))
    s = run_import("udacity", log, tmp_path / "ds", _opts(speed_scale=0.44704), progress=False,
                   side_cameras=0.2, rate_hz=None)
    assert s["episodes_written"] == 3 and not s["skipped"]
    ds = Dataset(tmp_path / "ds")
    by_cam = {e.meta["camera_position"]: i for i, e in enumerate(ds.episodes)}
    np.testing.assert_array_equal(ds.steps(by_cam["center"], "steering"), steer.astype(np.float32))
    np.testing.assert_allclose(ds.steps(by_cam["left"], "steering"), np.clip(steer + 0.2, -1, 1), atol=1e-6)
    np.testing.assert_allclose(ds.steps(by_cam["right"], "steering"), np.clip(steer - 0.2, -1, 1), atol=1e-6)
    np.testing.assert_array_equal(ds.steps(by_cam["left"], "action"), steer.astype(np.float32))
    np.testing.assert_allclose(ds.steps(by_cam["center"], "dt_s"), 0.1, atol=2e-3)  # ms stamps
    np.testing.assert_allclose(ds.steps(by_cam["center"], "speed"), 4.4704, rtol=1e-6)
    np.testing.assert_array_equal(ds.frames(by_cam["left"]), _jpeg(left))


def test_udacity_names_without_stamps_need_rate(tmp_path, drive, capsys):
    frames, steer = drive
    log = write_udacity(tmp_path / "run", frames[:20], steer[:20], 1.7e9 + np.arange(20) * 0.1)
    old = sorted((tmp_path / "run" / "IMG").iterdir())  # rename the images to plain numbers
    names = [f"{k:04d}.jpg" for k in range(len(old))]
    for p, n in zip(old, names):
        p.rename(p.with_name(n))
    rows = log.read_text().splitlines()
    log.write_text("\n".join([rows[0]] + [f"IMG/{n}" + r[r.index(","):] for n, r in zip(names, rows[1:])]) + "\n")
    line = _one_line_exit_2(["import", "--format", "udacity", str(log), "--out", str(tmp_path / "o")], capsys)
    assert "--rate HZ" in line
    s = run_import("udacity", log, tmp_path / "o", _opts(), progress=False, rate_hz=15.0)
    assert s["frames_written"] == 20
    np.testing.assert_allclose(Dataset(tmp_path / "o").steps(0, "dt_s"), 1 / 15, rtol=1e-6)


def test_udacity_csv_without_named_columns_exit_2(tmp_path, drive, capsys):
    frames, steer = drive
    log = write_udacity(tmp_path / "run", frames[:8], steer[:8], 1.7e9 + np.arange(8) * 0.1)
    text = log.read_text().splitlines()
    log.write_text("\n".join(["img,angle_deg,gas,x"] + text[1:]) + "\n")
    line = _one_line_exit_2(["import", "--format", "udacity", str(log), "--out", str(tmp_path / "o")], capsys)
    assert "center" in line and "steering" in line and "found: img" in line
    line = _one_line_exit_2(["import", "--format", "udacity", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert "no driving_log.csv" in line
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------ video


def test_video_round_trip_labels_by_time_and_fps(tmp_path, drive):
    frames, steer = drive
    write_video(tmp_path / "d.mp4", frames, fps=10)
    # labels at 20 Hz in degrees, starting 0.5 s before the video (--video-start)
    lt = 100.0 + np.arange(2 * len(frames) + 10) * 0.05
    deg = np.interp(lt, 100.5 + np.arange(len(frames)) * 0.1, steer * 25.0)
    write_labels_csv(tmp_path / "l.csv", lt, deg, columns=("timestamp", "angle"))
    s = run_import("video", tmp_path / "d.mp4", tmp_path / "ds", _opts(steering_scale=25.0), progress=False,
                   labels=tmp_path / "l.csv", video_start=100.5, time_unit="s", max_label_gap=0.25)
    assert s["frames_written"] == len(frames)
    ds = Dataset(tmp_path / "ds")
    np.testing.assert_allclose(ds.steps(0, "steering"), steer, atol=1e-6)  # the label at each frame time
    np.testing.assert_allclose(ds.steps(0, "dt_s"), 0.1, atol=1e-6)
    err = np.abs(ds.frames(0).astype(np.int16) - frames.astype(np.int16))
    assert err.mean() < 8.0  # lossy MPEG-4
    s2 = run_import("video", tmp_path / "d.mp4", tmp_path / "ds5", _opts(steering_scale=25.0, fps=5),
                    progress=False, labels=tmp_path / "l.csv", video_start=100.5)
    assert s2["frames_written"] == len(frames) // 2 and s2["skipped"]["subsampled"]["count"] == len(frames) // 2
    np.testing.assert_allclose(Dataset(tmp_path / "ds5").steps(0, "dt_s"), 0.2, atol=1e-6)


def test_video_frames_without_labels_skipped(tmp_path, drive):
    frames, steer = drive
    write_video(tmp_path / "d.mp4", frames, fps=10)
    t = np.arange(len(frames)) * 0.1
    keep = (t < 1.0) | (t > 2.0)  # one second without labels in the middle
    write_labels_csv(tmp_path / "l.csv", t[keep], steer[keep])
    s = run_import("video", tmp_path / "d.mp4", tmp_path / "ds", _opts(max_gap_s=0.5), progress=False,
                   labels=tmp_path / "l.csv", max_label_gap=0.04)
    assert s["skipped"]["no_label"]["count"] == int((~keep).sum())
    assert s["episodes_written"] == 2


def test_video_bad_inputs_exit_2(tmp_path, drive, capsys):
    frames, steer = drive
    (tmp_path / "bad.mp4").write_bytes(b"this is not a video" * 50)
    write_labels_csv(tmp_path / "l.csv", np.arange(10) * 0.1, np.zeros(10))
    out = tmp_path / "o"
    line = _one_line_exit_2(["import", "--format", "video", str(tmp_path / "bad.mp4"), "--labels",
                             str(tmp_path / "l.csv"), "--out", str(out)], capsys)
    assert "does not decode" in line and "ffmpeg" in line
    write_video(tmp_path / "d.mp4", frames[:10], fps=10)
    write_labels_csv(tmp_path / "noname.csv", np.arange(10) * 0.1, np.zeros(10), columns=("a", "b"))
    line = _one_line_exit_2(["import", "--format", "video", str(tmp_path / "d.mp4"), "--labels",
                             str(tmp_path / "noname.csv"), "--out", str(out)], capsys)
    assert "no time or steering column" in line and "--time-column" in line
    write_labels_csv(tmp_path / "deg.csv", np.arange(10) * 0.1, np.linspace(-20, 20, 10))
    line = _one_line_exit_2(["import", "--format", "video", str(tmp_path / "d.mp4"), "--labels",
                             str(tmp_path / "deg.csv"), "--out", str(out)], capsys)
    assert "outside the declared scale" in line and "--steering-scale 20" in line
    assert not out.exists()


def test_out_with_other_camera_or_simulator_data_refused_nothing_lost(tmp_path, drive, capsys):
    frames, steer = drive
    write_tub(tmp_path / "tub", frames, steer, T0_MS + np.arange(len(frames)) * 50)
    run_import("donkeycar", tmp_path / "tub", tmp_path / "ds", _opts(), progress=False)
    before = sorted(p.relative_to(tmp_path / "ds") for p in (tmp_path / "ds").rglob("*"))
    line = _one_line_exit_2(["import", "--format", "donkeycar", str(tmp_path / "tub"), "--out",
                             str(tmp_path / "ds"), "--size", "60x80", "--quiet"], capsys)
    assert "another camera" in line or "resolution" in line
    line = _one_line_exit_2(["import", "--format", "donkeycar", str(tmp_path / "tub"), "--out",
                             str(tmp_path / "ds"), "--size", "120x160", "--crop", "20,0"], capsys)
    assert "another camera" in line and "crop_rows" in line
    after = sorted(p.relative_to(tmp_path / "ds") for p in (tmp_path / "ds").rglob("*"))
    assert before == after
    assert Dataset(tmp_path / "ds").num_frames == len(frames)


def test_out_holding_a_run_or_report_refused(tmp_path, drive, capsys):
    frames, steer = drive
    write_tub(tmp_path / "tub", frames[:20], steer[:20], T0_MS + np.arange(20) * 50)
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "report.json").write_text("{}")
    line = _one_line_exit_2(["import", "--format", "donkeycar", str(tmp_path / "tub"), "--out",
                             str(tmp_path / "rep")], capsys)
    assert "evaluation report" in line
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["report.json"]


def test_dagger_refused_on_imported_data(tmp_path, drive):
    frames, steer = drive
    write_tub(tmp_path / "tub", frames[:20], steer[:20], T0_MS + np.arange(20) * 50)
    run_import("donkeycar", tmp_path / "tub", tmp_path / "ds", _opts(), progress=False)
    with pytest.raises(ValueError, match="DAgger needs a simulator"):
        require_simulator(Dataset(tmp_path / "ds"))
    assert main(["train", "--data", str(tmp_path / "ds"), "--policy", "ncp-cfc", "--epochs", "1",
                 "--dagger-rounds", "1", "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()  # refused before any training


# ------------------------------------------------------------------------------------ geometry


def test_crop_resize_and_flat_ground_depth_match_simulator_camera():
    import gymnasium as gym

    import envs  # noqa: F401

    cam = {"height": 78, "width": 200, "fov_deg": 60.0, "height_m": 1.3, "pitch_deg": 4.0}
    env = gym.make("liquid_drive/Racetrack-v0", camera=cam)
    try:
        env.reset(seed=0)
        r = env.unwrapped.renderer
        ref = r.row_depth  # the simulator's analytic ground depth per row
        spec = r.spec  # the camera it rendered with (appearance draws may move pitch/height)
        cam = {"height": spec.height, "width": spec.width, "fov_deg": spec.fov_deg,
               "height_m": spec.height_m, "pitch_deg": spec.pitch_deg}
    finally:
        env.close()
    geo = Geometry.make((78, 200), (0, 0), (78, 200))
    depth = flat_ground_depth(cam, geo.intrinsics(60.0))
    np.testing.assert_allclose(depth[:, 0], ref, rtol=1e-5)
    # cropping the top 30 rows of a 120-row image and resizing to 45 rows keeps the geometry:
    # the principal row moves up by 30 and both scale by 45/90
    g2 = Geometry.make((120, 160), (0.25, 0), (45, 80))
    k = g2.intrinsics(60.0)
    assert g2.crop_rows == (30, 0)
    assert k["principal_row"] == pytest.approx((60 - 30) * 0.5) and k["focal_px_y"] == pytest.approx(
        80 / math.tan(math.radians(30)) * 0.5)
    img = np.arange(120 * 160 * 3, dtype=np.uint32).reshape(120, 160, 3).astype(np.uint8)
    assert g2.apply(img).shape == (45, 80, 3)
    with pytest.raises(ValueError, match="camera-height-m"):
        flat_ground_depth({"height": 45, "width": 80}, None)


def test_geometry_refuses_crop_of_everything():
    with pytest.raises(ValueError, match="leave at least 2 rows"):
        Geometry.make((120, 160), (0.6, 0.5), (78, 200))


def test_dataset_verifies_after_import(tmp_path, drive):
    from driving.dataset import verify

    frames, steer = drive
    write_tub(tmp_path / "tub", frames, steer, T0_MS + np.arange(len(frames)) * 50)
    run_import("donkeycar", tmp_path / "tub", tmp_path / "ds", _opts(size=(78, 200), crop=(0.3, 0.0)),
               progress=False)
    rep = verify(tmp_path / "ds")
    assert rep.ok and rep.frames == len(frames)
    assert Path(tmp_path / "ds" / "imports").is_dir()
