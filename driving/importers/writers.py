"""Write frames and labels in the three source formats (tests, benchmarks, worked example).

Why: a round trip needs sources whose frames and labels are known exactly; these writers
lay out a donkeycar v2 tub, a Udacity log and a video + CSV the way those tools do
(docs/real_drives.md), from any frames (e.g. simulator drives, `sim_drive`).
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def sim_drive(steps: int, hw: tuple[int, int] = (120, 160), seed: int = 0,
              env_id: str = "liquid_drive/Racetrack-v0") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames uint8 (T,H,W,3), expert steering (T,), speed m/s (T,)) of an expert drive."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers liquid_drive/*)

    env = gym.make(env_id, camera={"height": int(hw[0]), "width": int(hw[1])})
    try:
        obs, info = env.reset(seed=seed)
        frames, steer, speed = [], [], []
        for _ in range(steps):
            s = float(info["expert_steering"])
            frames.append(np.asarray(obs["image"], np.uint8))
            steer.append(s)
            speed.append(float(np.asarray(obs.get("speed", 0.0)).reshape(-1)[0]))
            obs, _, term, trunc, info = env.step(np.array([s], np.float32))
            if term or trunc:
                obs, info = env.reset()
    finally:
        env.close()
    return np.stack(frames), np.asarray(steer), np.asarray(speed)


def write_tub(path: str | os.PathLike, frames: np.ndarray, angles: Sequence[float],
              timestamps_ms: Sequence[int], *, throttles: Sequence[float] | None = None,
              modes: Sequence[str] | None = None, sessions: Sequence[str] | None = None,
              deleted: Sequence[int] = (), max_len: int = 1000, quality: int = 95,
              newline: str = "\n") -> Path:
    """A donkeycar v2 tub: manifest.json, catalog_N.catalog(+_manifest), images/N_cam_image_array_.jpg."""
    root = Path(path)
    (root / "images").mkdir(parents=True, exist_ok=True)
    n = len(frames)
    inputs = ["cam/image_array", "user/angle", "user/throttle", "user/mode"]
    types = ["image_array", "float", "float", "str"]
    catalogs: list[str] = []
    lines: dict[str, list[str]] = {}
    for i in range(n):
        name = f"{i}_cam_image_array_.jpg"
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        assert ok
        (root / "images" / name).write_bytes(buf.tobytes())
        rec = {"cam/image_array": name, "user/angle": float(angles[i]),
               "user/throttle": float(throttles[i]) if throttles is not None else 0.3,
               "user/mode": modes[i] if modes is not None else "user",
               "_timestamp_ms": int(timestamps_ms[i]), "_index": i,
               "_session_id": sessions[i] if sessions is not None else "26-01-01_0"}
        cat = f"catalog_{i // max_len}.catalog"
        if cat not in lines:
            catalogs.append(cat)
            lines[cat] = []
        lines[cat].append(json.dumps(rec, sort_keys=True))
    for k, cat in enumerate(catalogs):
        body = "".join(ln + newline for ln in lines[cat])
        (root / cat).write_text(body, newline="")
        man = {"path": cat.replace(".catalog", ".catalog_manifest"), "created_at": time.time(),
               "start_index": k * max_len, "line_lengths": [len(ln) + len(newline) for ln in lines[cat]]}
        (root / f"catalog_{k}.catalog_manifest").write_text(json.dumps(man, sort_keys=True) + newline, newline="")
    sess = sorted(set(sessions)) if sessions is not None else ["26-01-01_0"]
    header = [inputs, types, {}, {"created_at": time.time(),
                                  "sessions": {"all_full_ids": sess, "last_id": len(sess) - 1,
                                               "last_full_id": sess[-1]}},
              {"paths": catalogs, "current_index": n, "max_len": max_len, "deleted_indexes": sorted(deleted)}]
    (root / "manifest.json").write_text("".join(json.dumps(d) + newline for d in header), newline="")
    return root


def udacity_name(cam: str, t_s: float) -> str:
    """Simulator-style image name with a wall-clock stamp (UTC, milliseconds)."""
    ms = int(round((t_s % 1) * 1000))
    if ms == 1000:
        t_s, ms = float(int(t_s) + 1), 0
    return f"{cam}_{time.strftime('%Y_%m_%d_%H_%M_%S', time.gmtime(int(t_s)))}_{ms:03d}.jpg"


def write_udacity(path: str | os.PathLike, frames: np.ndarray, steering: Sequence[float],
                  times_s: Sequence[float], *, speed_mph: Sequence[float] | None = None,
                  header: bool = True, windows_paths: bool = False, quality: int = 95,
                  side_frames: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """A Udacity log folder: driving_log.csv and IMG/{center,left,right}_<stamp>.jpg."""
    root = Path(path)
    (root / "IMG").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(len(frames)):
        names = {c: udacity_name(c, float(times_s[i])) for c in ("center", "left", "right")}
        imgs = {"center": frames[i]}
        if side_frames is not None:
            imgs["left"], imgs["right"] = side_frames[0][i], side_frames[1][i]
        for cam, img in imgs.items():
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
            assert ok
            (root / "IMG" / names[cam]).write_bytes(buf.tobytes())
        prefix = "C:\\Users\\me\\Desktop\\data\\IMG\\" if windows_paths else "IMG/"
        cells = [prefix + names[c] if (c == "center" or side_frames is not None) else "" for c in ("center", "left", "right")]
        v = float(speed_mph[i]) if speed_mph is not None else 20.0
        rows.append([*cells, repr(float(steering[i])), "0.5", "0", repr(v)])
    with open(root / "driving_log.csv", "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(["center", "left", "right", "steering", "throttle", "brake", "speed"])
        w.writerows(rows)
    return root / "driving_log.csv"


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path:
    """An mp4 (MPEG-4 part 2 via OpenCV) of RGB frames at a constant rate."""
    h, w = frames.shape[1:3]
    vw = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (int(w), int(h)))
    if not vw.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    return Path(path)


def write_labels_csv(path: str | os.PathLike, times_s: Sequence[float], steering: Sequence[float],
                     columns: tuple[str, str] = ("time_s", "steering")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(columns))
        for t, s in zip(times_s, steering):
            w.writerow([repr(float(t)), repr(float(s))])
    return Path(path)


def make_examples(root: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Three small example sources from simulator drives, as a person would bring them:
    a donkeycar tub (160x120, 20 Hz, two sessions), a Udacity log (320x160, ~14 Hz, with a
    pause) and a 30 fps video with a 50 Hz steering log in degrees (±25°, milliseconds)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    out: dict[str, Path] = {}
    # donkeycar: two sessions of 10 s at 20 Hz, wall-clock ms with a little jitter
    f1, s1, _ = sim_drive(200, (120, 160), seed=seed + 1)
    f2, s2, _ = sim_drive(200, (120, 160), seed=seed + 2)
    ts = 1_767_225_600_000 + np.cumsum(rng.integers(45, 56, 400))
    ts[200:] += 60_000
    out["tub"] = write_tub(root / "tub", np.concatenate([f1, f2]), np.concatenate([s1, s2]), ts,
                           sessions=["26-01-01_0"] * 200 + ["26-01-01_1"] * 200, quality=90)
    # udacity: 300 rows, ~14 Hz, a 5 s pause after row 150
    f, s, v = sim_drive(300, (160, 320), seed=seed + 3)
    t = 1_767_225_600.0 + np.cumsum(rng.uniform(0.06, 0.085, 300))
    t[150:] += 5.0
    out["udacity"] = write_udacity(root / "udacity", f, s, t, speed_mph=v / 0.44704, windows_paths=True)
    # video + CSV: 20 s at 30 fps (the camera), labels at 50 Hz in degrees, ms clock
    f, s, _ = sim_drive(600, (240, 320), seed=seed + 4)
    out["video"] = write_video(root / "drive.mp4", f, fps=30)
    lt = np.arange(0, 20.0, 0.02)
    deg = np.interp(lt, np.arange(600) / 30.0, s * 25.0)
    out["labels"] = write_labels_csv(root / "steering.csv", (5000 + lt * 1000).round(3), deg,
                                     columns=("timestamp", "steering_deg"))
    return out


if __name__ == "__main__":
    import sys

    paths = make_examples(sys.argv[1] if len(sys.argv) > 1 else "examples")
    for k, p in paths.items():
        print(f"{k}: {p}")
