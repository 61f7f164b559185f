"""`driving train` keeps its promises under kills, full disks, NaN and bad flags (issue 12).

Kill points are injected, not timed: a child process patches `os.replace` so that it SIGKILLs
itself at the exact moment the first training state would be renamed into place.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import HW, make_dataset, small_args

from driving.cli import main

FAST = ("--policy", "gru", "--epochs", "2", "--patience", "0", "--cnn-warmup-steps", "3", "--seed", "4")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("robust") / "ds", episodes=4, length=20)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted run with the settings every kill test uses."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(small_args(data, out, *FAST)) == 0
    return out


def same_weights(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def one_error_line(err: str) -> bool:
    """The CLI printed exactly one error line and no traceback (progress lines may precede)."""
    return "Traceback" not in err and sum(ln.startswith("driving train: error:") for ln in err.splitlines()) == 1


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


KILL_AT_FIRST_STATE_RENAME = textwrap.dedent("""
    import os, signal, sys
    real = os.replace
    def replace(src, dst, *a, **k):
        if str(dst).endswith("state.safetensors"):
            os.kill(os.getpid(), signal.SIGKILL)  # the temp file is complete, not yet renamed
        return real(src, dst, *a, **k)
    os.replace = replace
    from driving.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def run_killed_at_first_save(args: list[str]) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_STATE_RENAME, *args], env=env,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode


@pytest.mark.parametrize("then", ["resume", "restart"])
def test_kill_during_the_first_state_save_can_resume_and_restart(data, reference, tmp_path, then):
    out = tmp_path / "run"
    assert run_killed_at_first_save(small_args(data, out, *FAST)) == -signal.SIGKILL
    assert list((out / "last").glob(".state.safetensors.*.tmp")), "the kill hit the first save"
    assert not (out / "last" / "state.safetensors").exists()
    extra = ("--resume",) if then == "resume" else ()
    assert main(small_args(data, out, *FAST, *extra)) == 0
    assert same_weights(reference, out)
    assert not list(out.rglob(".*.tmp"))


def test_the_issues_minimal_repro_resumes(data, reference, tmp_path):
    out = tmp_path / "r"
    (out / "last").mkdir(parents=True)
    (out / "last" / ".state.safetensors.x.tmp").touch()
    assert main(small_args(data, out, *FAST, "--resume")) == 0
    assert same_weights(reference, out)


def test_disk_full_is_one_line_exit_2_and_the_rerun_works(data, reference, tmp_path, monkeypatch, capsys):
    import policies.atomicio as atomicio

    real = atomicio.atomic_write_with

    def full(path, write):
        def fill(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, fill)

    monkeypatch.setattr(atomicio, "atomic_write_with", full)
    out = tmp_path / "run"
    assert main(small_args(data, out, *FAST)) == 2
    err = capsys.readouterr().err
    assert one_error_line(err) and "disk is full" in err
    assert not list(out.rglob("*")) or all(p.is_dir() for p in out.rglob("*"))  # no half files
    monkeypatch.setattr(atomicio, "atomic_write_with", real)
    assert main(small_args(data, out, *FAST)) == 0  # the failed first save left no obstacle
    assert same_weights(reference, out)


# ---------------------------------------------------------------------------- NaN
def test_non_finite_loss_stops_with_exit_2_and_keeps_the_last_good_run(data, reference, tmp_path,
                                                                         monkeypatch, capsys):
    import driving.train as train_mod

    real = train_mod.weighted_mse
    calls = {"n": 0}
    train_windows = 3  # steps in epoch 1 (4 episodes, 1 val → 3 × 20 frames → windows of 8, batch 4)

    def poisoned(pred, target, alpha, mask=None):
        loss, mse = real(pred, target, alpha, mask)
        if pred.requires_grad and train_mod.torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] > train_windows + 3:  # past the warm-up and epoch 1
                return loss * float("nan"), mse
        return loss, mse

    monkeypatch.setattr(train_mod, "weighted_mse", poisoned)
    out = tmp_path / "run"
    assert main(small_args(data, out, *FAST)) == 2
    err = capsys.readouterr().err
    assert "diverged" in err and "nan" in err and one_error_line(err)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2  # epoch 1 only: epoch 2 never reached the disk
    model = load_file(str(out / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in model.values())
    state = load_file(str(out / "last" / "state.safetensors"))
    assert all(torch.isfinite(v).all() for k, v in state.items() if k.startswith(("model/", "best/")))
    monkeypatch.setattr(train_mod, "weighted_mse", real)
    assert main(["train", "--out", str(out), "--resume"]) == 0  # and it resumes from epoch 1
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    assert same_weights(reference, out)


def test_out_of_range_labels_stop_training_without_a_best_model(tmp_path, capsys):
    from driving.dataset import DatasetWriter

    h, w = HW
    writer = DatasetWriter(tmp_path / "bad", "liquid_drive/Racetrack-v0", {}, {"height": h, "width": w},
                           durable=False)
    for e in range(3):
        n = 16
        steps = {"steering": np.full(n, 50.0, np.float32), "action": np.zeros(n, np.float32),
                 "speed": np.full(n, 8.0, np.float32), "time_s": np.arange(n) * 0.1,
                 "dt_s": np.full(n, 0.1, np.float32)}
        writer.append_episode(np.full((n, h, w, 3), 90, np.uint8), steps, {"source": "expert", "seed": e})
    out = tmp_path / "run"
    code = main(small_args(tmp_path / "bad", out, "--policy", "gru", "--epochs", "2"))
    err = capsys.readouterr().err
    assert code == 2 and one_error_line(err)
    # the dataset check (issue 12: verify checks label ranges) or the loss guard stops it
    assert "steering" in err or "diverged" in err
    assert not (out / "model.safetensors").exists()


# ---------------------------------------------------------------------------- --out, --data
def test_out_under_a_file_or_onto_a_file_exits_2_before_any_work(data, tmp_path, monkeypatch, capsys):
    import driving.train_run as runio

    def no_work(*a, **k):
        raise AssertionError("the dataset was opened before --out was checked")

    monkeypatch.setattr(runio, "open_dataset", no_work)
    file = tmp_path / "file"
    file.write_text("keep me")
    for out, words in ((file / "run", "is a file"), (file, "not a directory")):
        assert main(small_args(data, out)) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    assert file.read_text() == "keep me"


def test_resume_works_from_another_working_directory(data, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(data, tmp_path / "ds")
    monkeypatch.chdir(tmp_path)
    out = (tmp_path / "run").resolve()
    assert main(["train", "--data", "ds", "--out", str(out), "--seq-len", "8", "--batch", "4", *FAST[:2],
                 "--epochs", "1", "--cnn-warmup-steps", "2"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2"]) == 0
    assert len((out / "metrics.csv").read_text().splitlines()) == 3


# ---------------------------------------------------------------------------- workers
def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, uses prctl")
def test_dataloader_workers_die_with_a_sigkilled_train(tmp_path):
    data = make_dataset(tmp_path / "ds", episodes=6, length=40)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = small_args(data, tmp_path / "run", "--policy", "gru", "--epochs", "50", "--workers", "2",
                      "--cnn-warmup-steps", "0", "--patience", "0")
    proc = subprocess.Popen([sys.executable, "-m", "driving", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        workers: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None and len(workers) < 2:
            workers = _children(proc.pid)
            time.sleep(0.01)
        assert len(workers) >= 2, "the workers never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        gone_by = time.monotonic() + 1.5  # PyTorch's own watchdog takes ~5 s
        while time.monotonic() < gone_by and any(_alive(w) for w in workers):
            time.sleep(0.01)
        assert not any(_alive(w) for w in workers), "a DataLoader worker outlived the killed train"
    finally:
        if proc.poll() is None:
            proc.kill()


# ---------------------------------------------------------------------------- bad flags
@pytest.mark.parametrize("flags, words", [
    (("--grad-clip", "-1"), ["--grad-clip -1", "≥ 0"]),
    (("--weight-decay", "-1"), ["--weight-decay -1", "≥ 0"]),
    (("--lr", "inf"), ["--lr inf", "finite"]),
    (("--lr", "nan"), ["--lr nan", "finite"]),
    (("--lr", "0"), ["--lr 0", "> 0"]),
    (("--alpha", "nan"), ["--alpha nan", "finite"]),
    (("--burn-in", "8"), ["--burn-in 8", "[0, 7]"]),
    (("--burn-in", "-1"), ["--burn-in -1", "[0, 7]"]),
    (("--burn-in", "9", "--stateful"), ["--burn-in 9", "[0, 7]"]),
    (("--augment", "photometric,blur"), ["'blur'", "photometric, shadow, noise"]),
    (("--device", "tpu"), ["--device tpu", "cpu, cuda, auto"]),
    (("--precision", "fp16"), ["--precision fp16", "fp32, bf16"]),
])
def test_bad_training_flags_exit_2_with_the_valid_range(data, tmp_path, capsys, flags, words):
    assert main(small_args(data, tmp_path / "r", *flags)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_names_what_is_available(data, tmp_path, capsys):
    assert main(small_args(data, tmp_path / "r", "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert "no CUDA" in err and "available: cpu" in err


def test_bf16_where_unsupported_exits_2(data, tmp_path, capsys, monkeypatch):
    import driving.train_run as runio

    monkeypatch.setattr(runio, "supports_bf16", lambda device: False)
    assert main(small_args(data, tmp_path / "r", "--precision", "bf16")) == 2
    assert "available: fp32" in capsys.readouterr().err


def test_a_same_seed_re_recording_matches_the_runs_fingerprint(tmp_path):
    """Issue 12 item 12: two recordings of the same seeds differ only in `recorded_at`; the
    run's fingerprint must not see that (and older runs' index fingerprints still match)."""
    from driving.collect import collect
    from driving.dataset import Dataset
    from driving.train_run import dataset_fingerprint, fingerprint_matches, legacy_fingerprint
    from tests.fake_drive_env import FAKE_ID

    a, b = tmp_path / "a", tmp_path / "b"
    collect(FAKE_ID, 2, 12, a, progress=False)
    time.sleep(1.1)  # a later recording time
    collect(FAKE_ID, 2, 12, b, progress=False)
    da, db = Dataset(a), Dataset(b)
    assert [e.meta["recorded_at"] for e in da.episodes] != [e.meta["recorded_at"] for e in db.episodes]
    assert legacy_fingerprint(da) != legacy_fingerprint(db)  # what the old fingerprint saw
    assert dataset_fingerprint(da) == dataset_fingerprint(db)
    assert fingerprint_matches(db, 2, dataset_fingerprint(da))
    assert fingerprint_matches(da, 2, legacy_fingerprint(da))  # a run recorded before the change
    collect(FAKE_ID, 1, 12, tmp_path / "c", seed=5, progress=False)
    assert not fingerprint_matches(Dataset(tmp_path / "c"), 1, dataset_fingerprint(da, 1))
