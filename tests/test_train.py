"""`driving train`: learning, checkpoints, resume after a real kill, determinism, bad input."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from driving.augment import AugmentConfig, augment_windows, shadow_mask
from driving.cli import main
from driving.train import TrainConfig, train, weighted_mse

HW = (16, 24)


def make_dataset(root: Path, episodes: int = 6, length: int = 24, seed: int = 0) -> Path:
    """A synthetic store in which the steering label is readable from the frame: a bright
    vertical bar whose x position is the steering (so a policy can actually learn it)."""
    from driving.dataset import DatasetWriter

    rng = np.random.default_rng(seed)
    h, w = HW
    writer = DatasetWriter(root, "liquid_drive/Racetrack-v0", {}, {"height": h, "width": w}, durable=False)
    for e in range(episodes):
        t = np.arange(length)
        steer = (0.6 * np.sin(t / 4.0 + e)).astype(np.float32)
        frames = np.full((length, h, w, 3), 60, np.uint8)
        for i, x in enumerate(((steer + 1) / 2 * (w - 4)).astype(int)):
            frames[i, :, x : x + 4] = 220
        frames += rng.integers(0, 20, frames.shape, dtype=np.uint8)
        dt = rng.uniform(0.08, 0.12, length).astype(np.float32)
        steps = {"steering": steer, "action": steer, "speed": np.full(length, 8.0, np.float32),
                 "time_s": np.cumsum(dt).astype(np.float64), "dt_s": dt}
        writer.append_episode(frames, steps, {"source": "expert", "seed": e})
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds")


def small_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--seq-len", "8", "--batch", "4",
            "--threads", "1", *extra]


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- pieces
def test_weighted_mse_is_the_papers_weighting():
    pred = torch.tensor([[0.0, 0.5, -0.2]])
    target = torch.tensor([[0.1, 0.3, -0.6]])
    loss, mse = weighted_mse(pred, target, alpha=3.0)
    w = np.exp(3.0 * np.abs([0.1, 0.3, -0.6]))
    se = np.square([-0.1, 0.2, 0.4])
    assert loss.item() == pytest.approx(float(np.mean(w * se)), rel=1e-6)
    assert mse.item() == pytest.approx(float(np.mean(se)), rel=1e-6)
    loss0, _ = weighted_mse(pred, target, alpha=0.0)
    assert loss0.item() == pytest.approx(mse.item(), rel=1e-6)


def test_augment_is_reproducible_and_changes_images():
    imgs = torch.randint(0, 256, (3, 5, 12, 20, 3), dtype=torch.uint8)
    a = augment_windows(imgs, torch.Generator().manual_seed(1))
    b = augment_windows(imgs, torch.Generator().manual_seed(1))
    c = augment_windows(imgs, torch.Generator().manual_seed(2))
    assert a.dtype == torch.uint8 and a.shape == imgs.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, imgs)
    # degenerate ranges and no shadow: the identity (up to rounding)
    ident = AugmentConfig(brightness=(1, 1), channel_gain=0.0, gamma=(1, 1), shadow_prob=0.0)
    same = augment_windows(imgs, torch.Generator().manual_seed(3), ident)
    assert torch.equal(same, imgs)
    with pytest.raises(ValueError, match="uint8"):
        augment_windows(imgs.float(), torch.Generator())


def test_shadow_mask_darkens_one_side_of_an_edge():
    cfg = AugmentConfig(shadow_prob=1.0, shadow_darkness=(0.5, 0.5))
    m = shadow_mask(64, 4, 10, 30, torch.Generator().manual_seed(0), cfg)
    assert m.shape == (64, 4, 10, 30)
    assert set(torch.unique(m).tolist()) <= {0.5, 1.0}
    frac = (m < 1).float().mean().item()
    assert 0.2 < frac < 0.8  # shadows cover a part of the image, not all or nothing


class ScriptedEnv:
    """A stand-in env with a scripted on-road/lap signal, to check rollout's bookkeeping."""

    def __init__(self, on_road: list[bool], progress: list[float]):
        self.on_road, self.progress, self.t, self.recovered = on_road, progress, 0, 0
        self.unwrapped = self

    def _obs(self):
        return {"image": np.zeros((*HW, 3), np.uint8), "speed": np.array([5.0], np.float32)}

    def _info(self, on_road=True):
        return {"dt_s": 0.1, "on_road": on_road, "lap_progress": self.progress[self.t],
                "cross_track_m": 0.0 if on_road else 3.0, "expert_steering": 0.1,
                "distance_m": 2.0 * self.t, "crashed": not on_road, "time_s": 0.1 * self.t}

    def reset(self, seed=None):
        self.t = 0
        return self._obs(), self._info()

    def step(self, action):
        self.t += 1
        return self._obs(), 0.0, False, self.t >= len(self.on_road) - 1, self._info(self.on_road[self.t])

    def recover(self):
        self.recovered += 1
        return self._obs(), self._info(True)


# ---------------------------------------------------------------------------- training runs
def test_training_learns_and_writes_a_loadable_run(data, tmp_path):
    from policies.checkpoint import load_policy

    out = tmp_path / "run"
    assert main(small_args(data, out, "--policy", "ncp-cfc", "--epochs", "6", "--lr", "0.01",
                           "--patience", "0")) == 0
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("round,epoch,train_loss,train_mse")
    assert len(rows) == 1 + 6
    header = rows[0].split(",")
    val = [float(r.split(",")[header.index("val_mse")]) for r in rows[1:]]
    assert min(val[-2:]) < 0.8 * val[0], val  # it learns the bar → steering mapping
    policy, config = load_policy(out)
    assert config["policy"] == "ncp-cfc" and config["image_hw"] == list(HW)
    assert config["camera"]["height"] == HW[0]
    assert len(config["dataset"]["fingerprint"]) == 64 and config["dataset"]["episodes"] == 6
    assert config["training"]["seq_len"] == 8 and config["training"]["alpha"] == 3.0
    assert config["package_version"]
    assert config["best"]["epoch"] == 1 + int(np.argmin([
        float(r.split(",")[header.index("val_loss")]) for r in rows[1:]]))
    assert (out / "last" / "state.safetensors").is_file()
    assert not list(out.rglob(".*.tmp"))


def test_same_seed_same_weights_other_seed_other_weights(data, tmp_path):
    def run(name: str, seed: int) -> dict[str, torch.Tensor]:
        cfg = TrainConfig(data=str(data), out=str(tmp_path / name), policy="ncp-cfc", epochs=2,
                          seq_len=8, batch=4, seed=seed, threads=1)
        train(cfg)
        return tensors_of(tmp_path / name / "model.safetensors")

    a, b, c = run("a", 5), run("b", 5), run("c", 6)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_resume_after_a_real_kill_gives_the_uninterrupted_weights(data, tmp_path):
    epochs = "5"
    common = ["--policy", "gru", "--epochs", epochs, "--patience", "0", "--seed", "3"]
    ref = tmp_path / "ref"
    assert main(small_args(data, ref, *common)) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "driving", *small_args(data, killed, *common)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:  # epoch 1 done
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(metrics.read_text().splitlines()) - 1
    assert 1 <= done < int(epochs)

    assert main(small_args(data, killed, "--policy", "gru")) == 2  # no silent overwrite
    assert main(["train", "--out", str(killed), "--resume"]) == 0
    assert len(metrics.read_text().splitlines()) == 1 + int(epochs)
    for name in ("model.safetensors", "last/state.safetensors"):
        a, b = tensors_of(ref / name), tensors_of(killed / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert not list(killed.rglob(".*.tmp"))
    # a finished run resumed again is a no-op; with more epochs it continues
    before = digest_tree(killed)
    assert main(["train", "--out", str(killed), "--resume"]) == 0
    assert digest_tree(killed)["model.safetensors"] == before["model.safetensors"]


# ---------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def done_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cfc"
    assert main(small_args(data, out, "--policy", "ncp-cfc", "--epochs", "1")) == 0
    return out


def test_unknown_policy_exits_2(data, tmp_path, capsys):
    assert main(small_args(data, tmp_path / "r", "--policy", "transformer")) == 2
    err = capsys.readouterr().err
    assert "unknown policy 'transformer'" in err and "ncp-cfc" in err
    assert not (tmp_path / "r").exists()


def test_dataset_failing_verify_exits_2(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds", episodes=2)
    chunk = next(p for p in sorted((ds / "episodes").rglob("*")) if p.is_file() and "frames/c" in str(p))
    chunk.unlink()
    assert main(small_args(ds, tmp_path / "r")) == 2
    assert "failed verification" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_existing_run_is_never_overwritten(data, done_run, capsys):
    before = digest_tree(done_run)
    assert main(small_args(data, done_run, "--policy", "ncp-cfc")) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(small_args(data, done_run, "--policy", "lstm", "--resume")) == 2
    assert "trained with policy 'ncp-cfc'" in capsys.readouterr().err
    assert main(small_args(data, done_run, "--lr", "0.5", "--resume")) == 2
    assert "lr" in capsys.readouterr().err
    assert digest_tree(done_run) == before


def test_state_whose_tensors_do_not_match_exits_2(data, done_run, tmp_path, capsys):
    import shutil

    from safetensors import safe_open

    run = tmp_path / "tampered"
    shutil.copytree(done_run, run)
    path = run / "last" / "state.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.startswith("model/") and tensors[k].ndim == 2)
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, str(path), metadata=meta)
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "do not match" in capsys.readouterr().err


def test_pickled_files_are_refused(data, tmp_path, capsys):
    pt = tmp_path / "data.pt"
    torch.save({"x": torch.zeros(2)}, pt)
    assert main(small_args(pt, tmp_path / "r")) == 2
    assert "never unpickles" in capsys.readouterr().err
    run = tmp_path / "oldrun"
    run.mkdir()
    torch.save({"w": torch.zeros(2)}, run / "model.pt")
    assert main(["train", "--data", str(data), "--out", str(run), "--resume"]) == 2
    assert "pickled" in capsys.readouterr().err
    assert main(small_args(data, pt)) == 2  # --out naming a pickle


def test_config_rejects_bad_numbers():
    with pytest.raises(ValueError, match="--epochs"):
        TrainConfig(data="x", out="y", epochs=0)
    with pytest.raises(ValueError, match="--val-fraction"):
        TrainConfig(data="x", out="y", val_fraction=1.0)


# ---------------------------------------------------------------------------- DAgger
def test_dagger_round_appends_expert_labelled_policy_drives(tmp_path):
    from driving.collect import collect
    from driving.dataset import Dataset

    data = tmp_path / "race"
    small_cam = {"camera": {"height": 16, "width": 24}, "traffic": 0}
    collect("liquid_drive/Racetrack-v0", 3, 24, data, dart_noise=0.1, env_kwargs=small_cam,
            progress=False)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--policy", "ncp-cfc", "--epochs", "1",
            "--seq-len", "8", "--batch", "4", "--dagger-rounds", "1", "--dagger-episodes", "2",
            "--dagger-steps", "12", "--dagger-beta", "0.5"]
    assert main(args) == 0
    store = Dataset(data)
    dagger = [e for e in store.episodes if e.meta.get("source") == "dagger"]
    assert len(store.episodes) == 5 and len(dagger) == 2
    assert {e.meta["round"] for e in dagger} == {1} and {e.meta["beta"] for e in dagger} == {0.5}
    assert all(e.length == 12 for e in dagger)
    for e in dagger:  # labels are the expert's; the executed action is the policy's or the expert's
        i = store.episodes.index(e)
        assert np.all(np.abs(store.steps(i, "steering")) <= 1.0)
        assert np.all(store.steps(i, "dt_s") > 0)
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1"]  # a BC epoch, then a DAgger epoch
    # resuming the finished run changes nothing and records no more rollouts
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert len(Dataset(data).episodes) == 5
