"""WindowDataset: windows stay inside episodes, split by episode, works with DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from driving.dataset import DatasetWriter
from driving.loader import WindowDataset, split_episodes

CAM = {"height": 4, "width": 6}
LENGTHS = [5, 40, 33, 16, 21, 50, 17, 30]


def _make(root, lengths=LENGTHS):
    w = DatasetWriter(root, "fake-v0", {}, CAM, chunk_frames=8)
    for e, n in enumerate(lengths):
        frames = np.zeros((n, 4, 6, 3), np.uint8)
        frames[..., 0] = e  # episode tag
        frames[..., 1] = np.arange(n)[:, None, None]  # step tag
        t = np.arange(n)
        w.append_episode(
            frames,
            {
                "steering": (e * 1000 + t).astype(np.float32),
                "action": -(e * 1000 + t).astype(np.float32),
                "speed": np.full(n, e, np.float32),
                "time_s": 0.05 * t * (1 + e),
                "dt_s": (0.05 + 0.001 * t).astype(np.float32),
            },
            {"seed": e, "source": "dagger" if e % 3 == 2 else "expert"},
        )
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("loader") / "ds")


def _check_item(item, seq_len):
    e = int(item["image"][0, 0, 0, 0])
    t = item["image"][:, 0, 0, 1].numpy().astype(int)
    s = int(item["start"])
    assert e == int(item["episode"])
    # one episode, consecutive steps: never crosses a boundary
    assert (item["image"][..., 0] == e).all()
    np.testing.assert_array_equal(t, np.arange(s, s + seq_len))
    np.testing.assert_array_equal(item["steering"].numpy(), e * 1000 + t)
    np.testing.assert_array_equal(item["action"].numpy(), -(e * 1000 + t))
    np.testing.assert_allclose(item["dt"].numpy(), 0.05 + 0.001 * t, rtol=1e-6)
    np.testing.assert_array_equal(item["speed"].numpy(), np.full(seq_len, e))


def test_windows_at_boundaries(store):
    ds = WindowDataset(store, seq_len=16, split="all")
    got = [ds.window(i) for i in range(len(ds))]
    expected = []
    for e, n in enumerate(LENGTHS):
        if n < 16:
            continue
        starts = list(range(0, n - 16 + 1, 16))
        if starts[-1] != n - 16:
            starts.append(n - 16)  # last window ends on the last step
        expected += [(e, s) for s in starts]
    assert got == expected
    assert ds.skipped_short == 1  # the 5-step episode
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (16, 4, 6, 3)
        for k in ("steering", "dt", "speed", "action"):
            assert item[k].dtype == torch.float32 and item[k].shape == (16,)
        _check_item(item, 16)
    # overlapping windows with a smaller stride; a 16-step episode gives exactly one window
    ds4 = WindowDataset(store, seq_len=16, stride=4, split="all")
    assert sum(1 for i in range(len(ds4)) if ds4.window(i)[0] == 3) == 1
    assert [ds4.window(i)[1] for i in range(len(ds4)) if ds4.window(i)[0] == 1] == list(
        range(0, 25, 4)
    )
    assert [ds4.window(i)[1] for i in range(len(ds4)) if ds4.window(i)[0] == 2] == [
        0,
        4,
        8,
        12,
        16,
        17,
    ]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_split_is_by_episode_and_deterministic(store):
    tr = WindowDataset(store, split="train", val_fraction=0.25, seed=3)
    va = WindowDataset(store, split="val", val_fraction=0.25, seed=3)
    assert set(tr.episode_ids).isdisjoint(va.episode_ids)
    assert sorted(tr.episode_ids + va.episode_ids) == list(range(len(LENGTHS)))
    assert len(va.episode_ids) == 2
    assert (
        WindowDataset(store, split="val", val_fraction=0.25, seed=3).episode_ids == va.episode_ids
    )
    others = {
        tuple(WindowDataset(store, split="val", val_fraction=0.25, seed=s).episode_ids)
        for s in range(6)
    }
    assert len(others) > 1  # the seed matters
    assert {tr.window(i)[0] for i in range(len(tr))} <= set(tr.episode_indices)
    assert WindowDataset(store, split="val", val_fraction=0.0).episode_ids == []
    # tiny datasets still get one episode on each side
    assert tuple(map(len, split_episodes(["a", "b"], 0.2, 0))) == (1, 1)
    dag = WindowDataset(store, split="all", sources=["dagger"])
    assert dag.episode_ids == [2, 5]


def test_dataloader_with_workers(store):
    ds = WindowDataset(store, seq_len=8, split="all", stride=8)
    loader = DataLoader(
        ds, batch_size=5, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0)
    )
    seen = 0
    for batch in loader:
        assert batch["image"].shape[1:] == (8, 4, 6, 3) and batch["image"].dtype == torch.uint8
        assert batch["steering"].shape[1] == 8 and batch["dt"].dtype == torch.float32
        for b in range(batch["image"].shape[0]):
            _check_item({k: v[b] for k, v in batch.items()}, 8)
        seen += batch["image"].shape[0]
    assert seen == len(ds)


def test_bad_arguments(store, tmp_path):
    with pytest.raises(ValueError, match="split"):
        WindowDataset(store, split="test")
    with pytest.raises(ValueError, match="seq_len"):
        WindowDataset(store, seq_len=0)
    with pytest.raises(ValueError, match="stride"):
        WindowDataset(store, stride=0)
    with pytest.raises(ValueError, match="val_fraction"):
        WindowDataset(store, val_fraction=1.0)
    with pytest.raises(ValueError, match="not a liquid-drive dataset|does not exist"):
        WindowDataset(tmp_path / "nothing")
    assert len(WindowDataset(store, seq_len=100, split="all")) == 0
