"""Recording: labels vs executed actions (DART), resume/append, DAgger source, SIGKILL safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import fake_drive_env
import gymnasium as gym
import numpy as np
import pytest

from driving.cli import main
from driving.collect import collect, record_episode
from driving.dataset import Dataset, DatasetWriter, verify

TESTS = Path(__file__).resolve().parent
FAKE = "fake_drive_env:" + fake_drive_env.FAKE_ID  # importable in spawned workers too


def _fake_physics_ok(ds: Dataset, i: int, dt: float = 0.1) -> None:
    """The fake env moves x by 2·a·dt + 0.05: the stored action is the one executed."""
    x = ds.steps(i, "cross_track_m").astype(np.float64)
    a = ds.steps(i, "action").astype(np.float64)
    np.testing.assert_allclose(x[1:], x[:-1] + 2.0 * a[:-1] * dt + 0.05, atol=1e-5)
    # the label is the expert's steering for the frame it is stored with
    np.testing.assert_allclose(ds.steps(i, "steering"), np.clip(-0.5 * x, -1, 1), atol=1e-6)


def test_expert_and_dart_labels(tmp_path):
    res = collect(FAKE, 2, 30, tmp_path / "clean", progress=False)
    assert [r.length for r in res.recorded] == [30, 30] and res.frames == 60
    ds = Dataset(tmp_path / "clean")
    for i in range(2):
        np.testing.assert_array_equal(ds.steps(i, "action"), ds.steps(i, "steering"))
        _fake_physics_ok(ds, i)
        np.testing.assert_allclose(ds.steps(i, "dt_s"), 0.1, rtol=1e-6)
        np.testing.assert_allclose(np.diff(ds.steps(i, "time_s")), 0.1, atol=1e-9)
        assert (ds.frames(i)[:, 0, 0, 0] == ds.episodes[i].meta["seed"]).all()
        np.testing.assert_array_equal(ds.frames(i)[:, 0, 0, 1], np.arange(30))
    assert ds.attrs["camera"]["fov_deg"] == 60.0
    sigma = 0.2
    collect(FAKE, 3, 200, tmp_path / "dart", dart_noise=sigma, progress=False)
    ds = Dataset(tmp_path / "dart")
    noise = np.concatenate([ds.steps(i, "action") - ds.steps(i, "steering") for i in range(3)])
    assert abs(noise.std() - sigma) < 0.03 and abs(noise.mean()) < 0.03
    for i in range(3):
        _fake_physics_ok(ds, i)
        assert ds.episodes[i].meta["dart_noise"] == sigma
    # the same seed gives the same noisy drive (reproducible datasets)
    collect(FAKE, 1, 200, tmp_path / "dart2", dart_noise=sigma, progress=False)
    np.testing.assert_array_equal(
        Dataset(tmp_path / "dart2").steps(0, "action"), ds.steps(0, "action")
    )


def test_resume_append_and_early_termination(tmp_path):
    out = tmp_path / "ds"
    collect(FAKE, 2, 10, out, progress=False)
    res = collect(FAKE, 3, 10, out, progress=False)  # resume: seeds 0, 1 are there
    assert res.skipped_seeds == [0, 1] and [r.seed for r in res.recorded] == [2]
    res = collect(FAKE, 2, 10, out, seed=100, progress=False)  # another seed: append
    assert [r.seed for r in res.recorded] == [100, 101]
    ds = Dataset(out)
    assert sorted(e.meta["seed"] for e in ds.episodes) == [0, 1, 2, 100, 101]
    # an env that terminates early: the episode ends with the last frame that was acted on
    res = collect(FAKE, 1, 50, tmp_path / "short", env_kwargs={"terminate_at": 12}, progress=False)
    e = Dataset(tmp_path / "short").episodes[0]
    assert res.recorded[0].length == e.length == 12 and e.meta["ended_by"] == "terminated"


def test_dagger_action_source_and_jitter(tmp_path):
    env = gym.make(FAKE)
    w = DatasetWriter(tmp_path / "ds", FAKE, {}, {"height": 6, "width": 10})

    class Policy:
        resets = 0

        def reset(self, seed):
            Policy.resets += 1

        def __call__(self, obs, info):
            return 0.3  # a bad policy that always steers right

    # recover=False: the physics check below needs the uninterrupted drift (the strict rule
    # still counts the lane invasions in the metadata)
    r = record_episode(
        env, w, seed=4, max_steps=25, action_source=Policy(), source="dagger", dt_jitter=0.5,
        recover=False,
    )
    ds = Dataset(tmp_path / "ds")
    assert Policy.resets == 1 and r.length == 25
    assert ds.episodes[0].meta["source"] == "dagger"
    assert ds.episodes[0].meta["intervention"] == "strict"
    causes = ds.episodes[0].meta["intervention_causes"]
    assert ds.episodes[0].meta["interventions"] == sum(causes.values()) and causes["lane_invasion"] > 0
    np.testing.assert_allclose(ds.steps(0, "action"), 0.3, rtol=1e-6)
    dt = ds.steps(0, "dt_s")
    assert dt.min() >= 0.05 - 1e-6 and dt.max() <= 0.15 + 1e-6 and dt[1:].std() > 0.01
    x = ds.steps(0, "cross_track_m").astype(np.float64)
    np.testing.assert_allclose(x[1:], x[:-1] + 2 * 0.3 * dt[1:] + 0.05, atol=1e-5)
    np.testing.assert_allclose(np.diff(ds.steps(0, "time_s")), dt[1:], atol=1e-6)
    # label stays the expert's even though the policy drove
    np.testing.assert_allclose(ds.steps(0, "steering"), np.clip(-0.5 * x, -1, 1), atol=1e-6)
    env.close()


def test_parallel_workers_match_serial(tmp_path):
    collect(FAKE, 3, 20, tmp_path / "serial", dart_noise=0.1, progress=False)
    res = collect(FAKE, 3, 20, tmp_path / "par", dart_noise=0.1, workers=2, progress=False)
    assert sorted(r.seed for r in res.recorded) == [0, 1, 2]
    a, b = Dataset(tmp_path / "serial"), Dataset(tmp_path / "par")
    by_seed = {e.meta["seed"]: i for i, e in enumerate(b.episodes)}
    for i, e in enumerate(a.episodes):
        j = by_seed[e.meta["seed"]]
        np.testing.assert_array_equal(a.frames(i), b.frames(j))
        np.testing.assert_array_equal(a.steps(i, "action"), b.steps(j, "action"))
    assert verify(tmp_path / "par").ok


def test_sigkill_mid_write_then_resume(tmp_path):
    out = tmp_path / "ds"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from driving.collect import collect
        collect({FAKE!r}, 8, 40, {str(out)!r}, dart_noise=0.1, progress=False,
                env_kwargs={{"step_sleep": 0.004}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 90
        # wait until >= 2 episodes are committed and the next one is half written
        while time.time() < deadline:
            eps = [n for n in os.listdir(out / "episodes")] if (out / "episodes").is_dir() else []
            staged = (
                list((out / ".staging").glob("*/frames/c.*")) if (out / ".staging").is_dir() else []
            )
            if len([n for n in eps if n.startswith("ep_")]) >= 2 and staged:
                break
            assert proc.poll() is None, "collect finished before it could be killed"
            time.sleep(0.005)
        else:
            pytest.fail("collect did not get going in time")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ds = Dataset(out)
    done = len(ds)
    assert 2 <= done < 8
    rep = verify(out)
    assert rep.ok, rep.problems
    assert rep.episodes == done
    for i in range(done):
        assert ds.episodes[i].length == 40
        _fake_physics_ok(ds, i)
    # rerun the same command: resumes, and the result equals an uninterrupted run
    res = collect(FAKE, 8, 40, out, dart_noise=0.1, progress=False)
    assert len(res.skipped_seeds) == done and len(res.recorded) == 8 - done
    ds = Dataset(out)
    assert sorted(e.meta["seed"] for e in ds.episodes) == list(range(8))
    assert not os.listdir(out / ".staging")  # the dead writer's leftover was removed
    assert verify(out).ok
    ref = tmp_path / "ref"
    collect(FAKE, 8, 40, ref, dart_noise=0.1, progress=False)
    r = Dataset(ref)
    seed_to_i = {e.meta["seed"]: i for i, e in enumerate(r.episodes)}
    for i, e in enumerate(ds.episodes):
        j = seed_to_i[e.meta["seed"]]
        np.testing.assert_array_equal(ds.frames(i), r.frames(j))
        np.testing.assert_array_equal(ds.steps(i, "action"), r.steps(j, "action"))


def test_cli_collect_and_bad_input(tmp_path, capsys):
    out = tmp_path / "ds"
    assert (
        main(
            [
                "collect",
                "--env",
                FAKE,
                "--episodes",
                "2",
                "--steps",
                "12",
                "--out",
                str(out),
                "--quiet",
                "--dart-noise",
                "0.05",
            ]
        )
        == 0
    )
    assert "recorded 2 episodes, 24 frames" in capsys.readouterr().out
    assert (
        main(
            [
                "collect",
                "--env",
                FAKE,
                "--episodes",
                "2",
                "--steps",
                "12",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert "2 already present" in capsys.readouterr().out
    assert len(Dataset(out)) == 2
    # other resolution into the same store
    code = main(
        [
            "collect",
            "--env",
            FAKE,
            "--episodes",
            "1",
            "--steps",
            "5",
            "--out",
            str(out),
            "--quiet",
            "--env-kwargs",
            '{"height": 8}',
        ]
    )
    assert code == 2 and "resolution" in capsys.readouterr().err
    # non-empty foreign directory
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code = main(
        [
            "collect",
            "--env",
            FAKE,
            "--episodes",
            "1",
            "--steps",
            "5",
            "--out",
            str(foreign),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2 and "not a liquid-drive dataset" in err and os.listdir(foreign) == ["notes.txt"]
    )
    assert (
        main(
            [
                "collect",
                "--env",
                "liquid_drive/NoSuch-v0",
                "--episodes",
                "1",
                "--steps",
                "5",
                "--out",
                str(tmp_path / "x"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "unknown" in capsys.readouterr().err
    assert (
        main(
            [
                "collect",
                "--env",
                FAKE,
                "--episodes",
                "0",
                "--steps",
                "5",
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "collect",
                "--env",
                FAKE,
                "--episodes",
                "1",
                "--steps",
                "5",
                "--out",
                str(tmp_path / "y"),
                "--dart-noise",
                "-1",
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "collect",
                "--env",
                FAKE,
                "--episodes",
                "1",
                "--steps",
                "5",
                "--out",
                str(tmp_path / "y"),
                "--env-kwargs",
                "{bad",
            ]
        )
        == 2
    )


def test_real_env_end_to_end_replays_exactly(tmp_path):
    """A short Racetrack drive with env-side DART noise: the store replays bit for bit."""
    pytest.importorskip("envs.highway")
    env_id = "liquid_drive/Racetrack-v0"
    res = collect(env_id, 2, 20, tmp_path / "rt", dart_noise=0.15, progress=False)
    assert [r.length for r in res.recorded] == [20, 20]
    ds = Dataset(tmp_path / "rt")
    assert ds.image_shape == (78, 200, 3) and ds.camera["fov_deg"] > 0
    assert verify(tmp_path / "rt").ok
    import envs  # noqa: F401

    for i, e in enumerate(ds.episodes):
        assert e.meta["env_config"]["dart_noise"] == 0.15 and e.meta["dart_noise"] == 0.15
        env = gym.make(env_id, dart_noise=0.15)
        obs, info = env.reset(seed=e.meta["seed"])
        label, action = ds.steps(i, "steering"), ds.steps(i, "action")
        frames = ds.frames(i)
        for t in range(e.length):
            np.testing.assert_array_equal(frames[t], obs["image"])
            assert label[t] == np.float32(info["expert_steering"])
            assert ds.steps(i, "cross_track_m")[t] == np.float32(info["cross_track_m"])
            obs, _, _, _, info = env.step(np.array([label[t]], np.float32))
            assert action[t] == np.float32(info["executed_steering"])
        env.close()
        noise = action - label
        assert 0.02 < noise.std() < 0.4  # DART noise was applied to the executed steering
        assert np.all(ds.steps(i, "dt_s") > 0) and ds.steps(i, "on_road").all()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_sigkill_with_workers_leaves_no_orphans(tmp_path):
    out = tmp_path / "ds"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from driving.collect import collect
        if __name__ == "__main__":
            collect({FAKE!r}, 6, 60, {str(out)!r}, workers=2, progress=False,
                    env_kwargs={{"step_sleep": 0.03}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    pids: set[int] = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(pids) < 2:
            if (out / ".staging").is_dir():
                pids |= {int(p.name.split("-")[1]) for p in (out / ".staging").iterdir()}
            assert proc.poll() is None, "collect finished before it could be killed"
            time.sleep(0.01)
        assert len(pids) == 2, "both workers should be recording"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # an episode takes ~2 s here: workers still running after 1 s would go on writing
    deadline = time.time() + 1.0
    while time.time() < deadline and any(_running(p) for p in pids):
        time.sleep(0.02)
    assert not any(_running(p) for p in pids), "workers outlived the killed collect"
    done = len(Dataset(out)) if (out / "zarr.json").exists() else 0
    time.sleep(0.5)
    assert (len(Dataset(out)) if (out / "zarr.json").exists() else 0) == done
    assert verify(out).ok
    res = collect(FAKE, 6, 60, out, progress=False)
    assert len(res.skipped_seeds) == done
    assert sorted(e.meta["seed"] for e in Dataset(out).episodes) == list(range(6))
