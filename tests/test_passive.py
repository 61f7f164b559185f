"""The passive test (`driving eval --data`): numbers on a policy whose output is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from driving import corruptions as C
from driving.cli import main
from driving.dataset import Dataset
from driving.importers import ImportOptions, run_import
from driving.importers.writers import sim_drive, write_tub
from driving.passive import PassiveSpec, _seed, passive_eval, pearson
from policies.cnn import PerceptionCNN

TAU_S = 0.3
HW = (40, 64)


class EMAPolicy(nn.Module):
    """Steering = exponential moving average (time constant TAU_S, real Δt) of the frame's
    mean brightness mapped to [-1, 1]: stateful, time-aware and computable by hand. The CNN
    is only there for VisualBackProp (attention SSIM)."""

    name = "ema"
    uses_time = True

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cnn = PerceptionCNN(HW)
        self.image_hw = HW

    def initial_state(self, b: int = 1) -> torch.Tensor:
        return torch.zeros(b, 1)

    def forward(self, x, h, ts):
        b, t = x.shape[:2]
        bright = x.float().mean(dim=(2, 3, 4)) / 127.5 - 1.0
        outs = []
        for k in range(t):
            a = 1.0 - torch.exp(-ts[:, k] / TAU_S)
            h = h + a[:, None] * (bright[:, k: k + 1] - h)
            outs.append(h[:, 0])
        return torch.stack(outs, 1), h


def ema_reference(frames: np.ndarray, dt: np.ndarray) -> np.ndarray:
    h, out = 0.0, []
    for f, d in zip(frames, dt):
        b = f.astype(np.float64).mean() / 127.5 - 1.0
        h = h + (1 - math.exp(-max(float(d), 1e-3) / TAU_S)) * (b - h)
        out.append(h)
    return np.asarray(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("passive")
    frames, steer, _ = sim_drive(60, (96, 128), seed=1)
    rng = np.random.default_rng(0)
    ts = 1_700_000_000_000 + np.cumsum(rng.integers(40, 140, len(frames)))  # irregular real time
    ts[25:] += 3000  # a pause: two episodes
    ts[45:] += 3000  # three
    write_tub(root / "tub", frames, steer, ts)
    opts = ImportOptions(size=HW, min_episode_frames=4, camera_fov_deg=70.0, camera_height_m=0.2,
                         camera_pitch_deg=10.0)
    run_import("donkeycar", root / "tub", root / "ds", opts, progress=False)
    run_import("donkeycar", root / "tub", root / "ds_nocam", ImportOptions(size=HW, min_episode_frames=4),
               progress=False)
    return root


def _expected(ds: Dataset, name: str, sev: int, seed: int = 0):
    preds, labels = [], []
    for i, ep in enumerate(ds.episodes):
        fr = ds.frames(i)
        if name in C.CORRUPTIONS and sev:
            rng = _seed(seed, name, sev, ep.id)
            fr = np.stack([C.apply(name, f, None, sev, rng) for f in fr])
        preds.append(ema_reference(fr, ds.steps(i, "dt_s")))
        labels.append(ds.steps(i, "steering"))
    return np.concatenate(preds), np.concatenate(labels)


def test_known_policy_numbers_clean_and_noise(data, tmp_path):
    ds = Dataset(data / "ds")
    assert len(ds) == 3
    spec = PassiveSpec(checkpoint="ema", data=str(data / "ds"), corruptions=("none", "noise"), severities=(3,),
                       split="all", ssim_frames=20, batch_episodes=2, chunk=7)
    rep = passive_eval(spec, tmp_path / "r", policy=EMAPolicy(), config={}, progress=False)
    rows = {(r["corruption"], r["severity"]): r for r in rep["results"]}
    for key in (("none", 0), ("noise", 3)):
        p, y = _expected(ds, *key)
        r = rows[key]
        assert r["frames"] == len(y) == ds.num_frames
        assert r["steering_mse"] == pytest.approx(np.mean((p - y) ** 2), rel=1e-5)
        assert r["steering_mae"] == pytest.approx(np.mean(np.abs(p - y)), rel=1e-5)
        assert r["steering_corr"] == pytest.approx(np.corrcoef(p, y)[0, 1], abs=1e-5)
    assert rows[("none", 0)]["attention_ssim"] == 1.0
    assert 0.0 < rows[("noise", 3)]["attention_ssim"] < 0.99 and rows[("noise", 3)]["ssim_frames"] == 20
    assert rows[("none", 0)]["steering_mse"] != rows[("noise", 3)]["steering_mse"]
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["kind"] == "passive" and saved["split"] == "all" and len(saved["results"]) == 2
    assert "| noise | 3 |" in (tmp_path / "r" / "report.md").read_text()


def test_batching_and_chunking_do_not_change_results(data, tmp_path):
    def run(b, c, out):
        spec = PassiveSpec(checkpoint="ema", data=str(data / "ds"), corruptions=("noise", "dropped_frames"),
                           severities=(2,), split="all", ssim_frames=10, batch_episodes=b, chunk=c)
        return passive_eval(spec, tmp_path / out, policy=EMAPolicy(), config={}, progress=False)["results"]

    a, b = run(1, 32, "a"), run(3, 5, "b")
    for ra, rb in zip(a, b):
        for k in ("steering_mse", "steering_mae", "steering_corr", "attention_ssim"):
            if ra[k] is None or rb[k] is None:
                assert ra[k] is rb[k] is None and k == "attention_ssim" and ra["corruption"] == "dropped_frames"
            else:
                assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-9)


def test_dropped_frames_hold_last_steering_with_true_gap(data, tmp_path):
    ds = Dataset(data / "ds")
    spec = PassiveSpec(checkpoint="ema", data=str(data / "ds"), corruptions=("dropped_frames",),
                       severities=(4,), split="all", ssim_frames=0)
    row = passive_eval(spec, tmp_path / "r", policy=EMAPolicy(), config={}, progress=False)["results"][0]
    preds, labels = [], []
    for i, ep in enumerate(ds.episodes):
        fr, dt = ds.frames(i), np.maximum(ds.steps(i, "dt_s").astype(np.float64), 1e-3)
        rng = _seed(0, "dropped_frames/timing", 4, ep.id)
        keep = [True] + [C.timing_step("dropped_frames", 4, rng, float(d)).delivered for d in dt[1:]]
        h, acc, out = 0.0, 0.0, []
        for t in range(len(fr)):
            acc += dt[t] if t else 0.0
            if keep[t]:
                step_dt = dt[0] if t == 0 else acc
                b = fr[t].astype(np.float64).mean() / 127.5 - 1.0
                h = h + (1 - math.exp(-step_dt / TAU_S)) * (b - h)
                acc = 0.0
            out.append(h)
        assert not all(keep)
        preds.append(out)
        labels.append(ds.steps(i, "steering"))
    p, y = np.concatenate(preds), np.concatenate(labels)
    assert row["steering_mse"] == pytest.approx(np.mean((p - y) ** 2), rel=1e-5)
    assert row["attention_ssim"] is None


def test_fog_uses_flat_ground_depth_or_is_refused(data, tmp_path):
    spec = PassiveSpec(checkpoint="ema", data=str(data / "ds"), corruptions=("fog",), severities=(5,),
                       split="all", ssim_frames=5)
    rep = passive_eval(spec, tmp_path / "a", policy=EMAPolicy(), config={}, progress=False)
    assert rep["settings"]["depth_for_fog"] == "flat_ground"
    clean = passive_eval(PassiveSpec(checkpoint="ema", data=str(data / "ds"), corruptions=("none",),
                                     split="all", ssim_frames=0), tmp_path / "c", policy=EMAPolicy(),
                         config={}, progress=False)
    assert rep["results"][0]["steering_mse"] != clean["results"][0]["steering_mse"]
    with pytest.raises(ValueError, match="camera-height-m"):
        passive_eval(PassiveSpec(checkpoint="ema", data=str(data / "ds_nocam"), corruptions=("fog",),
                                 severities=(3,), split="all"), tmp_path / "b", policy=EMAPolicy(), config={},
                     progress=False)
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="jitter"):
        passive_eval(PassiveSpec(checkpoint="ema", data=str(data / "ds"), corruptions=("jitter",),
                                 split="all"), tmp_path / "j", policy=EMAPolicy(), config={}, progress=False)


def test_splits_follow_the_checkpoint_training_split(data, tmp_path):
    from driving.loader import split_episodes
    from driving.train_run import dataset_fingerprint

    ds = Dataset(data / "ds")
    cfg = {"dataset": {"episodes": 2, "fingerprint": dataset_fingerprint(ds, 2)},
           "training": {"val_fraction": 0.5, "seed": 3}}
    _, val = split_episodes([e.name for e in ds.episodes[:2]], 0.5, 3)

    def eps(split):
        spec = PassiveSpec(checkpoint="ema", data=str(data / "ds"), corruptions=("none",), split=split, ssim_frames=0)
        return passive_eval(spec, tmp_path / str(split), policy=EMAPolicy(), config=cfg, progress=False)["episodes"]

    assert eps("val") == [ds.episodes[i].id for i in val]
    assert eps("test") == [ds.episodes[2].id]  # imported after the checkpoint's 2 episodes
    assert eps(None) == [ds.episodes[2].id]
    assert len(eps("all")) == 3
    cfg3 = {"dataset": {"episodes": 3, "fingerprint": dataset_fingerprint(ds, 3)}, "training": {"val_fraction": 0.34}}
    with pytest.raises(ValueError, match="--split test: every episode"):
        passive_eval(PassiveSpec(checkpoint="ema", data=str(data / "ds"), split="test"), tmp_path / "x",
                     policy=EMAPolicy(), config=cfg3, progress=False)


def test_pearson_matches_numpy_and_handles_constant():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert pearson(np.ones(5), b[:5]) is None


def test_cli_passive_with_shipped_agent_and_bad_input(data, tmp_path, capsys):
    frames, steer, _ = sim_drive(24, (78, 200), seed=2)
    write_tub(tmp_path / "tub", frames, steer, 1_700_000_000_000 + np.arange(24) * 100)
    run_import("donkeycar", tmp_path / "tub", tmp_path / "ds", ImportOptions(min_episode_frames=4), progress=False)
    rc = main(["eval", "--checkpoint", "pretrained:ncp-cfc", "--data", str(tmp_path / "ds"), "--corruptions",
               "none,noise", "--severities", "3", "--ssim-frames", "8", "--out", str(tmp_path / "rep")])
    assert rc == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["split"] == "test" and rep["results"][0]["frames"] == 24
    assert rep["results"][0]["steering_mse"] < 0.5
    capsys.readouterr()
    assert main(["eval", "--checkpoint", "pretrained:ncp-cfc", "--data", str(data / "ds"), "--out",
                 str(tmp_path / "rep2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "re-import with --size 78x200" in err[0]
