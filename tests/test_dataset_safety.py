"""Dataset store: crash windows (kill during creation / first commit, then rerun), NaN
metadata refused, strict JSON, clear path messages, `info` on damage, value checks in
`verify`, and a fingerprint that ignores recording time (issue 12 items 2, 6, 8, 9, 12)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fake_drive_env
import numpy as np
import pytest

from driving.cli import main
from driving.collect import collect
from driving.dataset import (
    STEP_CODEC,
    ChunkEncoder,
    Dataset,
    DatasetError,
    DatasetWriter,
    fingerprint,
    validate_meta,
    verify,
)

TESTS = Path(__file__).resolve().parent
FAKE = "fake_drive_env:" + fake_drive_env.FAKE_ID
CAM = {"height": 6, "width": 10, "fov_deg": 60.0}


def _episode(n: int, tag: int):
    frames = np.zeros((n, 6, 10, 3), np.uint8)
    frames[..., 0] = tag
    frames[..., 1] = np.arange(n, dtype=np.uint8)[:, None, None]
    steps = {
        "steering": np.sin(np.arange(n) / 3.0 + tag).astype(np.float32),
        "action": np.cos(np.arange(n) / 3.0).astype(np.float32),
        "speed": np.full(n, 5.0 + tag, np.float32),
        "time_s": np.arange(n) * 0.1,
        "dt_s": np.full(n, 0.1, np.float32),
        "cross_track_m": np.linspace(-1, 1, n),
    }
    return frames, steps


def _writer(root, **kw):
    return DatasetWriter(root, "fake-v0", {"lanes": 2}, CAM, **kw)


def _strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"{name} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


# ------------------------------------------------------------------------------------------------
# item 2: a collect killed while the store is being created (or at its first commit)

# (name of the metadata file whose write is the kill point, leave a half-written temp file)
KILL_POINTS = {
    "episodes-group": ("episodes/zarr.json", False),  # leaves .lock + empty episodes/
    "root-marker": ("zarr.json", False),  # leaves .lock + episodes/zarr.json
    "root-marker-mid-write": ("zarr.json", True),  # ... + a .zarr.json.<hex>.tmp
    "first-index-write": ("index.json", False),  # ep_000000 renamed in, not yet indexed
}


def _killed_collect(out: Path, target: str, leave_temp: bool) -> int:
    """Run `collect` in a child that dies (os._exit) exactly when it writes `target`."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        sys.path.insert(0, {str(TESTS)!r})
        import driving.dataset.writer as w
        from policies.atomicio import temp_path
        real = w.atomic_write_json
        out = Path({str(out)!r})

        def killer(path, *a, **k):
            if Path(path) == out / {target!r}:
                if {leave_temp!r}:
                    temp_path(path).write_text('{{"zarr_format": 3, "node_t')
                os._exit(9)
            return real(path, *a, **k)

        w.atomic_write_json = killer
        from driving.collect import collect
        collect({FAKE!r}, 3, 12, out, dart_noise=0.1, progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=120, capture_output=True)
    return proc.returncode


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_collect_killed_in_store_creation_or_first_commit_resumes(tmp_path, point):
    out = tmp_path / "ds"
    target, leave_temp = KILL_POINTS[point]
    assert _killed_collect(out, target, leave_temp) == 9
    if point != "first-index-write":
        assert not (out / "zarr.json").exists() and (out / ".lock").exists()
    else:
        assert (out / "episodes" / "ep_000000").is_dir() and not (out / "index.json").exists()
    if leave_temp:
        assert list(out.glob(".zarr.json.*.tmp"))
    res = collect(FAKE, 3, 12, out, dart_noise=0.1, progress=False)
    # the committed episode (seed 0) survived and was skipped, not re-recorded
    assert res.skipped_seeds == ([0] if point == "first-index-write" else [])
    ds = Dataset(out)
    assert sorted(e.meta["seed"] for e in ds.episodes) == [0, 1, 2]
    assert verify(out).ok
    assert not list(out.glob(".*.tmp"))
    ref = tmp_path / "ref"
    collect(FAKE, 3, 12, ref, dart_noise=0.1, progress=False)
    r = Dataset(ref)
    by_seed = {e.meta["seed"]: i for i, e in enumerate(r.episodes)}
    for i, e in enumerate(ds.episodes):
        j = by_seed[e.meta["seed"]]
        np.testing.assert_array_equal(ds.frames(i), r.frames(j))
        np.testing.assert_array_equal(ds.steps(i, "action"), r.steps(j, "action"))
    assert fingerprint(ds) == fingerprint(r)  # the resumed store holds the same data


def test_cli_collect_completes_the_half_created_store_of_the_issue(tmp_path, capsys):
    """`mkdir -p d/episodes && touch d/.lock && driving collect ... --out d` (issue 12, item 2)."""
    d = tmp_path / "d"
    (d / "episodes").mkdir(parents=True)
    (d / ".lock").touch()
    args = ["collect", "--env", FAKE, "--episodes", "1", "--steps", "10", "--out", str(d), "--quiet"]
    assert main(args) == 0
    assert "recorded 1 episodes, 10 frames" in capsys.readouterr().out
    assert len(Dataset(d)) == 1 and verify(d).ok


def test_creation_never_takes_over_foreign_or_damaged_folders(tmp_path):
    photos = tmp_path / "photos"
    (photos / "episodes").mkdir(parents=True)
    (photos / "episodes" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not ours"):
        _writer(photos)
    assert sorted(os.listdir(photos)) == ["episodes"]  # not even a lock file
    # a store whose root zarr.json was deleted: its episodes are never adopted or touched
    root = tmp_path / "ds"
    _writer(root).append_episode(*_episode(5, 1))
    os.remove(root / "zarr.json")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(DatasetError, match="recorded episodes .* but no root zarr.json"):
        _writer(root)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


# ------------------------------------------------------------------------------------------------
# item 8: NaN is refused before it is recorded; every JSON file is strict JSON


def test_nan_metadata_is_refused_and_json_is_strict(tmp_path):
    with pytest.raises(DatasetError, match=r"dart_noise = nan is not a finite number.*--dart-noise 0.1"):
        validate_meta({"dart_noise": float("nan")})
    with pytest.raises(DatasetError, match=r"env_config.kwargs.gain = inf"):
        validate_meta({"env_config": {"kwargs": {"gain": np.float32("inf")}}})
    with pytest.raises(DatasetError, match="dart_noise = -0.5 is negative"):
        validate_meta({"dart_noise": -0.5})
    assert validate_meta({"dart_noise": np.float32(0.25), "shape": (1, 2)}) == {
        "dart_noise": 0.25,
        "shape": [1, 2],
    }
    root = tmp_path / "ds"
    w = _writer(root)
    with pytest.raises(DatasetError, match="dart_noise = nan"):
        w.begin_episode({"dart_noise": float("nan")})
    with pytest.raises(DatasetError, match="env config lanes = nan"):
        DatasetWriter(tmp_path / "other", "fake-v0", {"lanes": math.nan}, CAM)
    assert not (tmp_path / "other").exists()
    # NaN in a per-step array: refused at commit, naming array and step; nothing committed
    f, s = _episode(8, 1)
    s["cross_track_m"][3] = np.nan
    with pytest.raises(DatasetError, match=r"cross_track_m: non-finite value nan at step 3"):
        w.append_episode(f, s, {"seed": 1})
    # metadata added after begin_episode (collect sets `ended_by`) is checked at commit too
    b = w.begin_episode({"seed": 2})
    b.add_block(*_episode(4, 2))
    b.meta["dart_noise"] = float("inf")
    with pytest.raises(DatasetError, match="dart_noise = inf"):
        b.commit()
    assert len(Dataset(root)) == 0 and not os.listdir(root / ".staging")
    w.append_episode(*_episode(6, 3), {"seed": 3, "gain": np.float64(0.5)})
    for p in [root / "zarr.json", root / "index.json", *root.glob("episodes/**/zarr.json")]:
        _strict_json(p)


def test_collect_with_nan_dart_noise_fails_with_a_message_and_writes_no_nan(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(ValueError, match=r"dart.noise .*nan|nan.*dart.noise"):
        collect(FAKE, 1, 5, out, dart_noise=float("nan"), progress=False)
    for p in out.rglob("*.json"):
        _strict_json(p)
    assert not (out / "episodes").exists() or not any(
        n.startswith("ep_") for n in os.listdir(out / "episodes")
    )


def test_verify_warns_about_an_old_index_with_nan(tmp_path):
    root = tmp_path / "ds"
    _writer(root).append_episode(*_episode(5, 1))
    idx = json.loads((root / "index.json").read_text())
    idx["episodes"][0]["dart_noise"] = float("nan")
    (root / "index.json").write_text(json.dumps(idx))  # what the old writer produced
    rep = verify(root)
    assert rep.ok and any("NaN is not valid JSON" in w for w in rep.warnings)
    # the next commit rewrites the cache as strict JSON
    _writer(root).append_episode(*_episode(5, 2))
    _strict_json(root / "index.json")


# ------------------------------------------------------------------------------------------------
# item 9: messages for a path that is a file; `dataset info` on a damaged store


def test_file_instead_of_dataset_directory(tmp_path, capsys):
    f = tmp_path / "data.zarr"
    f.write_text("x")
    for fn in (Dataset, verify):
        with pytest.raises(DatasetError, match="is a file, not a dataset directory"):
            fn(f)
    with pytest.raises(DatasetError, match="does not exist"):
        Dataset(tmp_path / "missing")
    pkl = tmp_path / "data.pt"
    pkl.write_bytes(b"\x80\x04junk")
    with pytest.raises(DatasetError, match="is a pickled file, not a dataset directory"):
        Dataset(pkl)
    for verb in ("info", "verify"):
        assert main(["dataset", verb, str(f)]) == 2
        err = capsys.readouterr().err
        assert "is a file, not a dataset directory" in err and "Traceback" not in err


def test_info_on_a_damaged_store_warns_and_exits_2(tmp_path, capsys):
    root = tmp_path / "ds"
    w = _writer(root)
    for tag in range(2):
        w.append_episode(*_episode(40, tag), {"source": "expert"})
    assert main(["dataset", "info", str(root)]) == 0
    assert "WARNING" not in capsys.readouterr().err
    os.remove(root / "episodes" / "ep_000001" / "frames" / "c.1.0.0.0")
    assert main(["dataset", "info", str(root)]) == 2
    cap = capsys.readouterr()
    assert "episodes       2" in cap.out and "DAMAGED" in cap.out  # the summary is still shown
    assert "WARNING: dataset" in cap.err and "ep_000001/frames: chunk file c.1.0.0.0 is missing" in cap.err
    assert "driving dataset verify" in cap.err
    assert main(["dataset", "info", str(root), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["damaged"] is True and len(doc["problems"]) == 1
    # truncated chunk file (a disk-full leftover) is caught without decoding
    (root / "episodes" / "ep_000000" / "steering" / "c.0").write_bytes(b"")
    assert main(["dataset", "info", str(root)]) == 2
    assert "ep_000000/steering: chunk file c.0 is truncated" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# item 6: `verify` checks label ranges and finite values of every per-step array


def _overwrite_steps(root: Path, ep: str, name: str, values: np.ndarray) -> None:
    """Damage on purpose: replace a per-step array by `values` with a valid checksum."""
    (root / "episodes" / ep / name / "c.0").write_bytes(ChunkEncoder(STEP_CODEC, 1).encode(values))


def test_verify_flags_out_of_range_and_non_finite_values(tmp_path, capsys):
    root = tmp_path / "ds"
    w = _writer(root)
    for tag in range(3):
        w.append_episode(*_episode(20, tag), {"seed": tag})
    f, s = _episode(20, 0)
    steer = s["steering"].copy()
    steer[3] = 50.0
    _overwrite_steps(root, "ep_000000", "steering", steer)
    action = s["action"].copy()
    action[5] = np.nan
    action[6] = -np.inf
    _overwrite_steps(root, "ep_000001", "action", action)
    xt = s["cross_track_m"].astype(np.float32)
    xt[11] = np.inf
    _overwrite_steps(root, "ep_000002", "cross_track_m", xt)
    rep = verify(root)
    text = "\n".join(rep.problems)
    assert "ep_000000/steering: value 50.0 at step 3 is outside [-1, 1] (1 step(s))" in text
    assert "ep_000001/action: non-finite value nan at step 5 (2 step(s))" in text
    assert "ep_000002/cross_track_m: non-finite value inf at step 11" in text
    assert rep.damaged_episodes == ["ep_000000", "ep_000001", "ep_000002"]
    assert main(["dataset", "verify", str(root), "--quiet"]) == 1
    assert "steering: value 50.0 at step 3" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# item 12: the fingerprint ignores recording time, sees the data


def test_fingerprint_ignores_recording_time_but_sees_data(tmp_path, monkeypatch):
    import driving.dataset.writer as wmod

    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setattr(wmod, "_now", lambda: "2026-01-01T00:00:00Z")
    collect(FAKE, 2, 10, a, dart_noise=0.1, progress=False)
    monkeypatch.setattr(wmod, "_now", lambda: "2027-06-30T12:34:56Z")
    collect(FAKE, 2, 10, b, dart_noise=0.1, progress=False)
    da, db = Dataset(a), Dataset(b)
    assert da.episodes[0].meta["recorded_at"] != db.episodes[0].meta["recorded_at"]
    assert fingerprint(da) == fingerprint(db)
    assert len(fingerprint(da)) == 64
    assert fingerprint(da, 1) != fingerprint(da)  # a dropped episode changes it
    # other data under the same metadata (a frame chunk rewritten) changes it
    chunk = b / "episodes" / "ep_000001" / "frames" / "c.0.0.0.0"
    frames = db.frames(1, 0, 10)
    frames[0, 0, 0, 0] ^= 1
    buf = np.zeros((16, *frames.shape[1:]), np.uint8)
    buf[:10] = frames
    chunk.write_bytes(ChunkEncoder(db.attrs["codec"], 1).encode(buf))
    assert fingerprint(Dataset(b)) != fingerprint(da)
    assert fingerprint(Dataset(b), 1) == fingerprint(da, 1)
    # another seed: other data, other fingerprint
    c = tmp_path / "c"
    collect(FAKE, 2, 10, c, seed=5, dart_noise=0.1, progress=False)
    assert fingerprint(Dataset(c)) != fingerprint(da)
