"""Closed-loop evaluation: crash/recover counting, timing faults, determinism, report files, CLI."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest

from driving import corruptions as C
from driving.cli import main
from driving.evaluate import EvalSpec, ExpertDriver, PolicyDriver, evaluate, run_episode, tasks
from driving.interventions import LENIENT

H, W = 24, 64


class ToyLaneEnv:
    """A straight two-lane road with a bicycle-model car, honouring the env contract.

    The dashcam is a flat-world projection (road band, depth per row), so image
    corruptions change what an image-reading policy sees. Counts its own off-road events
    (``offroad_events``) as an independent check on the evaluator's crash count.
    """

    def __init__(self, speed: float = 10.0, dt: float = 0.1, offroad_m: float = 3.0) -> None:
        self.speed, self.dt, self.offroad_m = speed, dt, offroad_m
        self.config = {"policy_frequency": round(1 / dt), "camera": {"height": H, "width": W}}
        self.unwrapped = self
        self.offroad_events = 0
        self.horizon = H // 3
        rows = np.arange(H, dtype=np.float32) - self.horizon
        self.focal = 30.0
        self.row_depth = np.where(rows > 0, 1.2 * self.focal / np.maximum(rows, 1e-6), np.inf).astype(np.float32)

    def reset(self, seed: int | None = None):
        rng = np.random.default_rng(seed)
        self.y = float(rng.uniform(-0.5, 0.5))
        self.psi = float(rng.uniform(-0.05, 0.05))
        self.x = 0.0
        self.t = 0.0
        return self._obs(), self._info(self.dt)

    def _obs(self):
        cols = np.arange(W, dtype=np.float32)[None, :]
        d = self.row_depth[:, None]
        centre = W / 2 + self.focal * (-self.y - np.minimum(d, 1e3) * math.sin(self.psi)) / np.minimum(d, 1e3)
        half = self.focal * 2.0 / np.minimum(d, 1e3)
        road = np.abs(cols - centre) < half
        img = np.zeros((H, W, 3), np.uint8)
        img[:] = (40, 140, 40)
        img[road] = (90, 90, 90)
        img[: self.horizon + 1] = (130, 170, 230)
        return {"image": img, "speed": np.array([self.speed], np.float32)}

    def _info(self, dt: float) -> dict:
        on_road = abs(self.y) < self.offroad_m
        return {
            "cross_track_m": self.y, "heading_error_rad": self.psi, "curvature": 0.0,
            "on_road": on_road, "distance_m": self.x, "crashed": not on_road,
            "expert_steering": float(np.clip(-0.4 * self.y - 1.5 * self.psi, -1, 1)),
            "depth": np.broadcast_to(self.row_depth[:, None], (H, W)).copy(),
            "time_s": self.t, "dt_s": dt, "lap_progress": 0.0,
        }

    def advance(self, action, dt_s: float):
        a = float(np.clip(np.asarray(action).reshape(-1)[0], -1, 1))
        self.psi += self.speed / 2.5 * math.tan(0.5 * a) * dt_s
        self.y += self.speed * math.sin(self.psi) * dt_s
        self.x += self.speed * math.cos(self.psi) * dt_s
        self.t += dt_s
        info = self._info(dt_s)
        if not info["on_road"]:
            self.offroad_events += 1
        return self._obs(), 0.0, not info["on_road"], False, info

    def step(self, action):
        return self.advance(action, self.dt)

    def recover(self):
        self.y, self.psi = 0.0, 0.0
        return self._obs(), self._info(self.dt)

    # envs.contract.DrivingEnv
    @property
    def nominal_dt(self) -> float:
        return self.dt

    @property
    def image_hw(self) -> tuple[int, int]:
        return (H, W)

    @property
    def camera(self) -> dict:
        return dict(self.config["camera"])

    def expert_action(self) -> float:
        return float(np.clip(-0.4 * self.y - 1.5 * self.psi, -1, 1))

    def close(self) -> None:
        pass


class ScriptedPolicy:
    """Fixed steering; records what it was given (frames' mean, dt)."""

    name = "scripted"
    image_hw = (H, W)

    def __init__(self, steering: float = 1.0, uses_time: bool = True) -> None:
        self.steering = steering
        self.uses_time = uses_time
        self.dts: list = []
        self.frame_means: list[float] = []

    def initial_state(self, batch: int):
        return 0

    def step(self, image, h, dt=None):
        self.dts.append(dt)
        self.frame_means.append(float(np.asarray(image).mean()))
        return np.array([self.steering], np.float32), h + 1


class ImagePolicy:
    """Steers toward the road seen in the bottom rows of the frame (corruptions hurt it)."""

    name = "image-p"
    image_hw = (H, W)
    uses_time = False

    def initial_state(self, batch: int):
        return None

    def step(self, image, h, dt=None):
        img = np.asarray(image, dtype=np.float32)
        rows = img[-6:]
        grey = np.abs(rows[..., 0] - rows[..., 1]) < 25  # road pixels are grey
        cols = np.nonzero(grey)[1]
        offset = (cols.mean() - W / 2) / (W / 2) if cols.size else 0.0
        return np.array([np.clip(1.5 * offset, -1, 1)], np.float32), h


def _toy_env():
    return ToyLaneEnv()


def _image_policy():
    return ImagePolicy()


def _left_policy():
    return ScriptedPolicy(1.0, uses_time=False)


# ------------------------------------------------------------------------------ episodes


def test_crash_and_recover_counting_matches_env():
    env = ToyLaneEnv()
    out = run_episode(env, PolicyDriver(ScriptedPolicy(1.0)), "none", 0, 200, 3, np.random.default_rng(0),
                      rule=LENIENT)
    assert out["crashes"] == env.offroad_events > 10  # every off-road event counted, and recovered
    assert out["intervention_causes"] == {"collision": 0, "off_road": out["crashes"], "lane_invasion": 0}
    # Strict: the safety driver takes over when the edge is 0.5 m over the line, before the
    # car leaves the road: every intervention is a lane invasion and the car never goes off-road.
    env = ToyLaneEnv()
    strict = run_episode(env, PolicyDriver(ScriptedPolicy(1.0)), "none", 0, 200, 3, np.random.default_rng(0))
    assert env.offroad_events == 0 and strict["crashes"] > out["crashes"]
    assert strict["intervention_causes"]["lane_invasion"] == strict["crashes"]
    assert out["steps"] == 200  # the run went on after each crash
    assert out["elapsed_s"] == pytest.approx(20.0)
    assert out["autonomy_pct"] == pytest.approx(max(0.0, (1 - out["crashes"] * 6 / 20.0) * 100))
    assert out["completion_pct"] < 10  # the first crash came within the first second
    assert out["lane_departures"] >= out["crashes"]


def test_expert_keeps_lane_and_image_policy_degrades():
    env = ToyLaneEnv()
    expert = run_episode(env, ExpertDriver(), "none", 0, 150, 1, np.random.default_rng(0))
    assert expert["crashes"] == 0 and expert["completion_pct"] == 100.0 and expert["autonomy_pct"] == 100.0
    assert expert["mean_abs_cross_track_m"] < 0.3
    assert expert["distance_m"] == pytest.approx(150, rel=0.01)
    clean = run_episode(env, PolicyDriver(ImagePolicy()), "none", 0, 150, 1, np.random.default_rng(0))
    assert clean["crashes"] == 0
    noisy = run_episode(env, PolicyDriver(ImagePolicy()), "noise", 5, 150, 1, np.random.default_rng(0))
    assert noisy["steering_jerk"] > clean["steering_jerk"]


def test_corruption_reaches_the_policy():
    env = ToyLaneEnv()
    seen = []
    pol = ScriptedPolicy(0.0)
    run_episode(env, PolicyDriver(pol), "night", 5, 5, 0, np.random.default_rng(0), frame_hook=seen.append)
    assert len(seen) == 5
    clean = env.reset(seed=0)[0]["image"]
    np.testing.assert_array_equal(seen[0], C.night(clean, None, 5, np.random.default_rng(0)))
    assert pol.frame_means[0] < 0.5 * clean.mean()


def test_dropped_frames_hold_action_and_pass_true_gap():
    env = ToyLaneEnv()
    pol = ScriptedPolicy(0.0, uses_time=True)
    out = run_episode(env, PolicyDriver(pol), "dropped_frames", 5, 300, 0, np.random.default_rng(4))
    assert out["held_frames"] == 300 - len(pol.dts) > 100  # ~60% dropped
    gaps = np.array(pol.dts)
    assert gaps[0] == pytest.approx(0.1)
    # Every gap is a whole number of frame intervals; their sum is the time between the
    # first and the last delivered frame.
    assert np.allclose(gaps / 0.1, np.round(gaps / 0.1)) and gaps.max() >= 0.3 - 1e-9
    assert gaps[1:].sum() <= out["elapsed_s"] + 1e-9
    # A policy that does not use time gets no dt.
    pol2 = ScriptedPolicy(0.0, uses_time=False)
    run_episode(env, PolicyDriver(pol2), "dropped_frames", 5, 50, 0, np.random.default_rng(4))
    assert set(pol2.dts) == {None}


def test_jitter_advances_by_random_intervals():
    env = ToyLaneEnv()
    pol = ScriptedPolicy(0.0, uses_time=True)
    out = run_episode(env, PolicyDriver(pol), "jitter", 5, 200, 0, np.random.default_rng(1))
    gaps = np.array(pol.dts[1:])
    assert len(pol.dts) == 200 and gaps.std() > 0.02 and gaps.min() > 0.02
    assert gaps.mean() == pytest.approx(0.1, rel=0.1)
    assert out["elapsed_s"] == pytest.approx(env.t)


# ------------------------------------------------------------------------------ evaluate


def _spec(**kw) -> EvalSpec:
    base = dict(
        checkpoint=None, env_id="toy", episodes=2, corruptions=("none", "fog", "dropped_frames"),
        severities=(1, 5), steps=40, seed=3, policy_factory=_image_policy, env_factory=_toy_env,
        batch_episodes=1,  # the toy policies step one frame at a time
    )
    base.update(kw)
    return EvalSpec(**base)


def test_task_grid():
    spec = _spec()
    t = tasks(spec)
    policy = [x for x in t if x.driver == "policy"]
    expert = [x for x in t if x.driver == "expert"]
    assert len(policy) == (1 + 2 + 2) * 2
    assert {(x.corruption, x.severity) for x in expert} == {("none", 0), ("dropped_frames", 1), ("dropped_frames", 5)}


def test_evaluate_writes_report_with_schema(tmp_path):
    report = evaluate(_spec(), tmp_path / "ev", workers=1, progress=False)
    on_disk = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert on_disk == report
    assert {"policy", "checkpoint", "env", "results"} <= set(report)
    assert report["policy"] == "image-p" and report["env"] == "toy"
    keys = ["corruption", "severity", "episodes", "distance_m", "mean_abs_cross_track_m",
            "lane_departures_per_km", "crashes", "completion_pct", "autonomy_pct"]
    for row in report["results"]:
        assert list(row)[: len(keys)] == keys
        assert row["episodes"] == 2 and len(row["per_episode"]["mean_abs_cross_track_m"]) == 2
        assert row["distance_m"] == pytest.approx(2 * 40 * 0.1 * 10, rel=0.02)
    assert [(r["corruption"], r["severity"]) for r in report["results"]] == [
        ("none", 0), ("fog", 1), ("fog", 5), ("dropped_frames", 1), ("dropped_frames", 5)]
    assert report["reference"]["policy"] == "expert"
    assert report["reference"]["results"][0]["crashes"] == 0
    md = (tmp_path / "ev" / "report.md").read_text()
    assert "| fog | 5 |" in md and "expert" in md
    for f in ("contact_sheet.png", "robustness.png", "plots/mean_abs_cross_track_m.png", "plots/autonomy_pct.png"):
        assert (tmp_path / "ev" / f).stat().st_size > 1000


def test_same_seed_same_report_across_workers(tmp_path):
    spec = _spec(corruptions=("none", "noise", "jitter"), severities=(3,), steps=30)
    a = evaluate(spec, tmp_path / "a", workers=1, progress=False, plots=False)
    b = evaluate(spec, tmp_path / "b", workers=2, progress=False, plots=False)
    assert (tmp_path / "a" / "report.json").read_bytes() == (tmp_path / "b" / "report.json").read_bytes()
    c = evaluate(_spec(corruptions=("none", "noise", "jitter"), severities=(3,), steps=30, seed=4),
                 tmp_path / "c", workers=1, progress=False, plots=False)
    assert a == b and c["results"] != a["results"]


def test_crash_counting_through_evaluate(tmp_path):
    spec = _spec(policy_factory=_left_policy, corruptions=("none",), episodes=1, steps=100,
                 intervention="lenient")
    report = evaluate(spec, tmp_path / "ev", workers=1, progress=False, plots=False)
    assert report["settings"]["intervention"] == "lenient"
    env = ToyLaneEnv()
    run_episode(env, PolicyDriver(ScriptedPolicy(1.0, uses_time=False)), "none", 0, 100,
                report["settings"]["episode_seeds"][0], np.random.default_rng(0), rule=LENIENT)
    assert report["results"][0]["crashes"] == env.offroad_events > 5


# ------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--corruptions", "none,smog"], "unknown corruption"),
        (["--severities", "1,6"], "severity"),
        (["--severities", "-1"], "severity"),
        (["--episodes", "0"], "episodes must be an integer >= 1"),
        (["--batch-episodes", "0"], "batch_episodes must be"),
        (["--corruptions", "noise:3-9"], "out of range"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, capsys, extra, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    argv = ["eval", "--checkpoint", str(run), "--env", "liquid_drive/LaneKeeping-v0", "--out", str(tmp_path / "o"), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_not_a_checkpoint_exits_2(tmp_path, capsys):
    argv = ["eval", "--checkpoint", str(tmp_path), "--env", "liquid_drive/LaneKeeping-v0", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "not a checkpoint" in capsys.readouterr().err


def test_camera_mismatch_is_rejected(tmp_path):
    class Small(ImagePolicy):
        image_hw = (78, 200)

    with pytest.raises(ValueError, match="78x200"):
        evaluate(_spec(policy_factory=partial(Small)), tmp_path / "x", progress=False)


def test_compare_two_reports(tmp_path, capsys):
    base = dict(corruptions=("none", "noise"), severities=(2, 5), steps=40, episodes=3)
    evaluate(_spec(**base), tmp_path / "img", progress=False, plots=False)
    evaluate(_spec(policy_factory=_left_policy, **base), tmp_path / "left", progress=False, plots=False)
    assert main(["compare", str(tmp_path / "img"), str(tmp_path / "left"), "--out", str(tmp_path / "cmp")]) == 0
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["policies"] == ["image-p", "scripted"] and data["paired_episodes"]
    rows = {(r["policy"], r["corruption"], r["severity"]): r for r in data["table"]}
    assert len(rows) == 2 * 3
    img, left = rows[("image-p", "none", 0)], rows[("scripted", "none", 0)]
    assert img["crashes"]["mean"] == 0 and left["crashes"]["mean"] > 2
    lo, hi = img["mean_abs_cross_track_m"]["ci95"]
    assert lo <= img["mean_abs_cross_track_m"]["mean"] <= hi
    summ = {(r["policy"], r["corruption"]): r for r in data["summary"]}
    n2 = rows[("scripted", "noise", 2)]["crashes"]["mean"]
    n5 = rows[("scripted", "noise", 5)]["crashes"]["mean"]
    assert summ[("scripted", "noise")]["crashes"]["mean"] == pytest.approx((n2 + n5) / 2)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "image-p" in md and "scripted" in md and "paired" in md
    assert (tmp_path / "cmp" / "compare_crashes.png").stat().st_size > 1000
    assert main(["compare", str(tmp_path / "nothing"), "--out", str(tmp_path / "c2")]) == 2
    assert "no report.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------ real env + policy


def _real_env(**kw):
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("envs.highway")
    import envs  # noqa: F401

    return gym.make("liquid_drive/LaneKeeping-v0", **kw)


def test_real_env_crash_counting_matches_recoveries():
    env = _real_env()

    class HardLeft(ScriptedPolicy):
        image_hw = (78, 200)

    out = run_episode(env, PolicyDriver(HardLeft(1.0)), "none", 0, 80, 11, np.random.default_rng(0))
    # strict rule: the car is taken over on lane invasion, and each intervention recovered once
    assert out["crashes"] == env.unwrapped.recoveries > 2
    assert out["steps"] == 80 and out["completion_pct"] < 50
    expert = run_episode(env, ExpertDriver(), "none", 0, 80, 11, np.random.default_rng(0))
    assert expert["crashes"] == 0 and expert["mean_abs_cross_track_m"] < 0.5


def test_real_checkpoint_cli_eval(tmp_path, capsys):
    pytest.importorskip("envs.highway")
    from policies.checkpoint import save_checkpoint
    from policies.factory import build_policy

    run = tmp_path / "run"
    save_checkpoint(run, build_policy("ncp-cfc"), {})
    argv = ["eval", "--checkpoint", str(run), "--env", "liquid_drive/LaneKeeping-v0", "--episodes", "1",
            "--steps", "30", "--corruptions", "none,fog,jitter", "--severities", "5", "--seed", "2"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["policy"] == "ncp-cfc" and report["env"] == "liquid_drive/LaneKeeping-v0"
    assert [(r["corruption"], r["severity"]) for r in report["results"]] == [("none", 0), ("fog", 5), ("jitter", 5)]
    assert all(20 < r["distance_m"] < 35 for r in report["results"])  # 8-10 m/s for ~3 s
    assert report["reference"]["results"][0]["crashes"] == 0
    assert (tmp_path / "a" / "contact_sheet.png").stat().st_size > 10_000
    # Same seed, two workers: the same bytes.
    assert main([*argv, "--out", str(tmp_path / "b"), "--workers", "2", "--no-plots"]) == 0
    assert (tmp_path / "a" / "report.json").read_bytes() == (tmp_path / "b" / "report.json").read_bytes()
    # The checkpoint's 78x200 camera against a 64x160 env: exit 2 with the fix in the message.
    bad = [*argv, "--out", str(tmp_path / "c"), "--env-config", '{"camera": {"height": 64, "width": 160}}']
    capsys.readouterr()
    assert main(bad) == 2
    assert "78x200" in capsys.readouterr().err


def test_cli_invalid_checkpoint_config_exits_2(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"format": "something-else"}')
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    argv = ["eval", "--checkpoint", str(tmp_path), "--env", "liquid_drive/LaneKeeping-v0", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "--checkpoint" in capsys.readouterr().err


# ------------------------------------------------------------------------------ lock-step batching


class BatchImagePolicy(ImagePolicy):
    """ImagePolicy for (B,H,W,3) frames, with a per-row step counter as its recurrent state."""

    name = "image-b"

    def initial_state(self, batch: int):
        import torch

        return torch.zeros(batch, 1)

    def step(self, image, h, dt=None):
        import torch

        img = np.asarray(image)
        frames = img[None] if img.ndim == 3 else img
        out = [float(ImagePolicy.step(self, f, None)[0][0]) for f in frames]
        # the state counts delivered frames; steering leans on it a little so that a state
        # mix-up between rows (or a state moved on a dropped frame) changes the drive
        h = h + 1
        steer = torch.tensor(out) + 0.001 * torch.sin(h[:, 0])
        return steer.clamp(-1, 1), h


def _batch_policy():
    return BatchImagePolicy()


def test_batched_equals_sequential_exactly_for_a_row_independent_policy(tmp_path):
    base = dict(policy_factory=_batch_policy, corruptions=("none", "noise:4", "dropped_frames:5", "jitter:4"),
                episodes=5, steps=60)
    seq = evaluate(_spec(**base), tmp_path / "seq", progress=False, plots=False)
    for k in (2, 3):
        bat = evaluate(_spec(**base, batch_episodes=k), tmp_path / f"b{k}", progress=False, plots=False)
        assert bat["settings"]["batch_episodes"] == k
        assert bat["results"] == seq["results"]  # every episode's every metric, bit for bit
    a = evaluate(_spec(**base, batch_episodes=3), tmp_path / "w1", progress=False, plots=False)
    b = evaluate(_spec(**base, batch_episodes=3), tmp_path / "w2", workers=2, progress=False, plots=False)
    assert (tmp_path / "w1" / "report.json").read_bytes() == (tmp_path / "w2" / "report.json").read_bytes()
    assert a == b


def test_batched_rows_keep_their_own_state_and_held_frames():
    from driving.evaluate import EvalSpec as Spec
    from driving.evaluate import Task, run_chunk_batched

    spec = Spec(checkpoint=None, env_id="toy", episodes=4, corruptions=("dropped_frames",), severities=(5,),
                steps=50, seed=1, batch_episodes=2)
    chunk = [Task("policy", "dropped_frames", 5, i) for i in range(4)]
    envs = [ToyLaneEnv(), ToyLaneEnv()]
    batched = run_chunk_batched(envs, BatchImagePolicy(), chunk, spec)
    from driving.evaluate import PolicyDriver, episode_seed, fault_rng

    single = [run_episode(ToyLaneEnv(), PolicyDriver(BatchImagePolicy()), "dropped_frames", 5, 50,
                          episode_seed(1, t.episode), fault_rng(1, t)) for t in chunk]
    assert batched == single
    assert all(r["held_frames"] > 10 for r in batched)


def test_batched_real_policy_agrees_with_sequential_within_intervals(tmp_path):
    pytest.importorskip("envs.highway")
    spec = EvalSpec(checkpoint="pretrained:ncp-cfc", env_id="liquid_drive/Racetrack-v0", episodes=4,
                    corruptions=("none", "noise:3"), steps=60, seed=5, expert_reference=False,
                    batch_episodes=1)
    from policies.checkpoint import resolve_run_dir

    spec = EvalSpec(**{**spec.__dict__, "checkpoint": str(resolve_run_dir("pretrained:ncp-cfc"))})
    seq = evaluate(spec, tmp_path / "s", progress=False, plots=False)
    bat = evaluate(EvalSpec(**{**spec.__dict__, "batch_episodes": 4}), tmp_path / "b", progress=False,
                   plots=False)
    for a, b in zip(seq["results"], bat["results"]):
        for k in ("mean_abs_cross_track_m", "completion_pct"):
            lo_a, hi_a = a["ci95"][k] or (a[k], a[k])
            lo_b, hi_b = b["ci95"][k] or (b[k], b[k])
            assert lo_a - 1e-9 <= b[k] <= hi_a + 1e-9 or lo_b - 1e-9 <= a[k] <= hi_b + 1e-9, (k, a[k], b[k])
        assert a["distance_m"] == pytest.approx(b["distance_m"], rel=0.02)


def test_intervention_settings_and_bad_spec_values():
    for kw, word in [({"intervention": "gentle"}, "strict or lenient"), ({"batch_episodes": 0}, "batch_episodes"),
                     ({"lane_invasion_m": -1.0}, "lane_invasion_m"), ({"corruptions": ("fog:9",)}, "out of range"),
                     ({"precision": "fp8"}, "fp32 or bf16"), ({"device": "tpu"}, "cpu, cuda or auto")]:
        with pytest.raises(ValueError, match=word):
            _spec(**kw).validate()
    assert [c.label() for c in _spec(corruptions=("none", "noise:3-4", "fog")).conditions] == [
        "none", "noise:3", "noise:4", "fog:1", "fog:5"]
