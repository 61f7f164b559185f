"""The episodic zarr store: round trip, append rules, damage detection, disk full."""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pytest

from driving.cli import main
from driving.dataset import (
    Dataset,
    DatasetError,
    DatasetWriter,
    DiskFullError,
    verify,
)

CAM = {"height": 6, "width": 10, "fov_deg": 60.0}


def _episode(n: int, tag: int, h: int = 6, w: int = 10):
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[..., 0] = tag
    frames[..., 1] = np.arange(n, dtype=np.uint8)[:, None, None]
    frames[..., 2] = np.random.default_rng(tag).integers(0, 255, (n, h, w), dtype=np.uint8)
    steps = {
        "steering": np.sin(np.arange(n) / 3.0 + tag).astype(np.float32),
        "action": np.cos(np.arange(n) / 3.0).astype(np.float32),
        "speed": np.full(n, 5.0 + tag, np.float32),
        "time_s": np.arange(n) * 0.1,
        "dt_s": np.full(n, 0.1, np.float32),
        "cross_track_m": np.linspace(-1, 1, n),
        "on_road": np.arange(n) % 7 != 3,
    }
    return frames, steps


def _writer(root, **kw):
    return DatasetWriter(root, "fake-v0", {"lanes": 2, "camera": CAM}, CAM, **kw)


def test_round_trip_is_exact_and_keeps_metadata(tmp_path):
    root = tmp_path / "ds"
    w = _writer(root)
    eps = [_episode(n, tag) for tag, n in enumerate([5, 37, 16])]
    ids = [
        w.append_episode(f, s, {"seed": 10 + i, "source": "expert"}) for i, (f, s) in enumerate(eps)
    ]
    assert ids == [0, 1, 2]
    ds = Dataset(root)
    assert [e.length for e in ds.episodes] == [5, 37, 16]
    assert ds.num_frames == 58 and ds.image_shape == (6, 10, 3)
    for i, (f, s) in enumerate(eps):
        np.testing.assert_array_equal(ds.frames(i), f)
        np.testing.assert_array_equal(ds.frames(i, 3, 5), f[3:5])
        for k, v in s.items():
            got = ds.steps(i, k)
            np.testing.assert_array_equal(got, np.asarray(v).astype(got.dtype))
        assert ds.steps(i, "steering").dtype == np.float32
        assert ds.steps(i, "time_s").dtype == np.float64
        assert ds.steps(i, "on_road").dtype == bool
        meta = ds.episodes[i].meta
        assert meta["seed"] == 10 + i and meta["env_id"] == "fake-v0"
        assert meta["package_version"] and meta["schema_version"] == 1
        assert meta["steering_mean"] == pytest.approx(float(np.mean(s["steering"])), abs=1e-6)
    assert ds.attrs["camera"]["fov_deg"] == 60.0 and ds.attrs["env_config"]["lanes"] == 2
    rep = verify(root)
    assert rep.ok and rep.episodes == 3 and rep.frames == 58
    # frames chunked along time: a 37-frame episode with 16-frame chunks has 3 chunks
    arr = ds.array(1, "frames")
    assert arr.chunks == (16, 6, 10, 3)


def test_append_after_reopen_and_index_rebuild(tmp_path):
    root = tmp_path / "ds"
    _writer(root).append_episode(*_episode(8, 1))
    w2 = _writer(root)  # reopen: appends
    assert w2.append_episode(*_episode(9, 2)) == 1
    os.remove(root / "index.json")  # the index is only a cache
    ds = Dataset(root)
    assert [e.length for e in ds.episodes] == [8, 9]
    np.testing.assert_array_equal(ds.frames(1), _episode(9, 2)[0])


def test_uncommitted_episode_is_invisible_and_cleaned(tmp_path):
    root = tmp_path / "ds"
    w = _writer(root)
    w.append_episode(*_episode(4, 1))
    b = w.begin_episode({"seed": 5})
    f, s = _episode(20, 2)
    for t in range(20):
        b.add(f[t], {k: v[t] for k, v in s.items()})
    # not committed: readers see only the first episode
    assert len(Dataset(root)) == 1
    rep = verify(root)
    assert rep.ok and rep.warnings and "uncommitted" in rep.warnings[0]
    # a leftover of a dead writer (pid not alive) is removed by the next writer
    dead = b.path.with_name("ep-999999999-deadbeef")
    os.rename(b.path, dead)
    assert _writer(root).cleanup_staging() == 1
    assert not dead.exists()


def test_refuses_other_resolution_depth_setting_schema_and_foreign_dirs(tmp_path):
    root = tmp_path / "ds"
    _writer(root).append_episode(*_episode(4, 1))
    with pytest.raises(DatasetError, match="resolution"):
        DatasetWriter(root, "fake-v0", {}, {"height": 7, "width": 10})
    with pytest.raises(DatasetError, match="save-depth"):
        _writer(root, save_depth=True)
    w = _writer(root)
    with pytest.raises(DatasetError, match="shape"):
        w.append_episode(*_episode(4, 1, h=7))
    assert len(Dataset(root)) == 1  # nothing half-written became visible
    # another schema version
    meta = json.loads((root / "zarr.json").read_text())
    meta["attributes"]["liquid-drive-dataset"]["schema_version"] = 99
    (root / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="schema version 99"):
        Dataset(root)
    with pytest.raises(DatasetError, match="schema version 99"):
        _writer(root)
    # a non-empty directory that is not a dataset
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not a liquid-drive dataset"):
        _writer(other)
    assert sorted(os.listdir(other)) == ["cat.jpg"]
    # a zarr group that is not ours
    z = tmp_path / "z"
    z.mkdir()
    (z / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
    )
    with pytest.raises(DatasetError, match="not a liquid-drive dataset"):
        Dataset(z)
    with pytest.raises(DatasetError, match="does not exist"):
        Dataset(tmp_path / "missing")


def test_bad_episode_inputs(tmp_path):
    w = _writer(tmp_path / "ds")
    f, s = _episode(4, 1)
    with pytest.raises(ValueError, match="required"):
        w.append_episode(f, {k: v for k, v in s.items() if k != "dt_s"})
    with pytest.raises(ValueError, match="expected"):
        w.append_episode(f, {**s, "speed": np.zeros(3)})
    with pytest.raises(ValueError, match="empty"):
        w.begin_episode().commit()
    assert len(Dataset(tmp_path / "ds")) == 0
    assert not os.listdir(tmp_path / "ds" / ".staging")


def test_verify_and_reader_report_missing_and_corrupt_chunks(tmp_path, capsys):
    root = tmp_path / "ds"
    w = _writer(root)
    for tag in range(3):
        w.append_episode(*_episode(40, tag))
    assert main(["dataset", "verify", str(root), "--quiet"]) == 0
    # delete a frames chunk of episode 1, corrupt one of episode 2
    missing = root / "episodes" / "ep_000001" / "frames" / "c.1.0.0.0"
    os.remove(missing)
    corrupt = root / "episodes" / "ep_000002" / "frames" / "c.0.0.0.0"
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2 :] = b"\xff" * (len(data) - len(data) // 2)
    corrupt.write_bytes(bytes(data[: len(data) - 7]))
    os.remove(root / "episodes" / "ep_000000" / "steering" / "c.0")
    rep = verify(root)
    assert not rep.ok
    assert rep.damaged_episodes == ["ep_000000", "ep_000001", "ep_000002"]
    text = "\n".join(rep.problems)
    assert "ep_000001/frames: chunk file c.1.0.0.0 is missing" in text
    assert "ep_000002/frames: chunk c.0.0.0.0 does not decode" in text
    assert "ep_000000/steering: chunk file c.0 is missing" in text
    ds = Dataset(root)
    np.testing.assert_array_equal(ds.frames(1, 0, 16), _episode(40, 1)[0][:16])  # intact part
    with pytest.raises(DatasetError, match="missing"):
        ds.frames(1, 10, 20)
    with pytest.raises(DatasetError, match="damaged"):
        ds.frames(2, 0, 4)
    with pytest.raises(DatasetError, match="missing"):
        ds.steps(0, "steering")
    capsys.readouterr()
    assert main(["dataset", "verify", str(root), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and "ep_000001" in out
    assert main(["dataset", "verify", str(root), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and len(doc["damaged_episodes"]) == 3
    # an episode directory that vanished while still in the index
    shutil.rmtree(root / "episodes" / "ep_000001")
    assert any("directory is missing" in p for p in verify(root).problems)


def test_info_command(tmp_path, capsys):
    root = tmp_path / "ds"
    w = _writer(root)
    w.append_episode(*_episode(12, 1), {"source": "expert"})
    w.append_episode(*_episode(8, 2), {"source": "dagger"})
    assert main(["dataset", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "episodes       2" in out and "frames         20" in out and "10x6" in out
    assert main(["dataset", "info", str(root), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["episodes_by_source"] == {"expert": 1, "dagger": 1}
    assert s["bytes_per_frame"] > 0
    assert main(["dataset", "info", str(tmp_path / "nope")]) == 2


def test_depth_is_stored_when_asked(tmp_path):
    root = tmp_path / "ds"
    w = _writer(root, save_depth=True)
    f, s = _episode(5, 1)
    depth = np.linspace(0.5, 80.0, 5 * 6 * 10, dtype=np.float32).reshape(5, 6, 10)
    w.append_episode(f, s, depth=depth)
    ds = Dataset(root)
    np.testing.assert_allclose(ds.depth(0), depth, rtol=1e-3)  # float16 storage
    assert verify(root).ok


def test_disk_full_keeps_committed_episodes(tmp_path, monkeypatch):
    import driving.dataset.writer as dsmod

    root = tmp_path / "ds"
    w = _writer(root)
    w.append_episode(*_episode(20, 1))
    calls = {"n": 0}
    real_write = dsmod.write_file

    def full_write(path, data):
        calls["n"] += 1
        if calls["n"] > 2:  # two chunks fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(dsmod, "write_file", full_write)
    with pytest.raises(DiskFullError, match="disk full.*1 committed episodes are intact"):
        w.append_episode(*_episode(60, 2))
    monkeypatch.undo()
    assert calls["n"] == 3
    assert not os.listdir(root / ".staging")  # the partial episode was dropped
    ds = Dataset(root)
    assert len(ds) == 1
    np.testing.assert_array_equal(ds.frames(0), _episode(20, 1)[0])
    assert verify(root).ok
    # after freeing space the same writer goes on
    assert w.append_episode(*_episode(5, 3)) == 1


@pytest.mark.parametrize("save_depth", [False, True])
def test_files_are_byte_identical_to_zarr(tmp_path, save_depth):
    """Our direct writer produces exactly the files zarr-python writes for the same arrays."""
    import zarr

    from driving.dataset import CHUNK_KEY_ENCODING, DEPTH_CODEC, STEP_CODEC, _codecs

    root = tmp_path / "ds"
    w = _writer(root, save_depth=save_depth, chunk_frames=4)
    f, s = _episode(11, 5)
    depth = np.random.default_rng(0).uniform(1, 90, (11, 6, 10)).astype(np.float32)
    w.append_episode(f, s, depth=depth if save_depth else None)
    ep = root / "episodes" / "ep_000000"
    ref = zarr.open_group(tmp_path / "ref", mode="w", zarr_format=3)
    cfg = {"write_empty_chunks": True}
    arrays = {"frames": (f, (4, 6, 10, 3), _codecs(w.attrs["codec"]))}
    if save_depth:
        arrays["depth"] = (depth.astype(np.float16), (4, 6, 10), _codecs(DEPTH_CODEC))
    got = Dataset(root)
    for k in s:
        arrays[k] = (got.steps(0, k), (11,), _codecs(STEP_CODEC))
    for k, (data, chunks, codecs) in arrays.items():
        z = ref.create_array(
            k,
            shape=data.shape,
            chunks=chunks,
            dtype=data.dtype,
            compressors=codecs,
            config=cfg,
            chunk_key_encoding=CHUNK_KEY_ENCODING,
        )
        z[:] = data
        ours = sorted(str(p.relative_to(ep / k)) for p in (ep / k).rglob("*") if p.is_file())
        theirs = sorted(
            str(p.relative_to(tmp_path / "ref" / k))
            for p in (tmp_path / "ref" / k).rglob("*")
            if p.is_file()
        )
        assert ours == theirs, k
        assert json.loads((ep / k / "zarr.json").read_text()) == json.loads(
            (tmp_path / "ref" / k / "zarr.json").read_text()
        )
        for rel in ours:
            if rel != "zarr.json":
                assert (ep / k / rel).read_bytes() == (tmp_path / "ref" / k / rel).read_bytes(), (
                    k,
                    rel,
                )
    np.testing.assert_array_equal(got.frames(0), f)
