"""The shared closed-loop drive: interventions by cause, recovery, held actions, and the
same trajectory whichever stage (evaluate, collect, DAgger, explain) drives."""

from __future__ import annotations

import numpy as np
import pytest

from driving.conditions import Condition
from driving.interventions import LENIENT, STRICT, InterventionRule, lane_invasion_depth
from driving.rollout import Episode, ExpertActor, MixtureActor, PolicyActor, drive


class ScriptedEnv:
    """Replays a script of infos (one per step) so that each intervention cause is exact."""

    nominal_dt = 0.1
    image_hw = (4, 6)
    camera = {"height": 4, "width": 6}

    def __init__(self, script: list[dict]) -> None:
        self.script = script
        self.config = {"policy_frequency": 10}
        self.recoveries = 0

    def _info(self, extra: dict) -> dict:
        info = {"cross_track_m": 0.0, "on_road": True, "collision": False, "crashed": False,
                "distance_m": float(self.t), "expert_steering": 0.0, "dt_s": 0.1, "time_s": 0.1 * self.t,
                "lane_width_m": 4.0, "car_width_m": 2.0, "depth": np.ones(self.image_hw, np.float32)}
        info.update(extra)
        return info

    def _obs(self) -> dict:
        return {"image": np.full((*self.image_hw, 3), self.t, np.uint8), "speed": np.array([10.0], np.float32)}

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._obs(), self._info({})

    def advance(self, action, dt_s):
        self.t += 1
        extra = self.script[self.t - 1] if self.t - 1 < len(self.script) else {}
        return self._obs(), 0.0, False, False, self._info(extra)

    def step(self, action):
        return self.advance(action, self.nominal_dt)

    def recover(self):
        self.recoveries += 1
        return self._obs(), self._info({})

    def expert_action(self) -> float:
        return 0.0


class Constant:
    def __init__(self, value: float = 0.0) -> None:
        self.value, self.calls = value, []

    def reset(self) -> None:
        self.calls.clear()

    def act(self, frame, dt_s, info) -> float:
        self.calls.append(dt_s)
        return self.value


SCRIPT = [
    {},
    {"collision": True, "crashed": True},  # 1: collision
    {"on_road": False, "crashed": True, "cross_track_m": 2.3},  # 2: off the road
    {"cross_track_m": -1.6},  # 3: edge 0.6 m into the oncoming lane: lane invasion (strict)
    {"cross_track_m": 1.45},  # 4: edge 0.45 m over the line: within the 0.5 m allowance
    {"cross_track_m": -1.2},
]


@pytest.mark.parametrize("rule, causes", [
    (STRICT, [None, "collision", "off_road", "lane_invasion", None, None]),
    (LENIENT, [None, "collision", "off_road", None, None, None]),
    (InterventionRule("strict", lane_invasion_m=0.4), [None, "collision", "off_road", "lane_invasion",
                                                       "lane_invasion", None]),
])
def test_each_intervention_cause_on_a_scripted_drive(rule, causes):
    env = ScriptedEnv(SCRIPT)
    steps = list(drive(env, Constant(), len(SCRIPT), seed=0, rule=rule))
    assert [s.intervention for s in steps] == causes
    assert [s.recovered for s in steps] == [c is not None for c in causes]
    assert env.recoveries == sum(c is not None for c in causes)


def test_lane_invasion_depth_from_widths_or_from_the_env():
    assert lane_invasion_depth({"cross_track_m": -1.6, "lane_width_m": 4.0, "car_width_m": 2.0}) == pytest.approx(0.6)
    assert lane_invasion_depth({"cross_track_m": 0.0, "lane_width_m": 3.0, "car_width_m": 1.8}) == pytest.approx(-0.6)
    assert lane_invasion_depth({"lane_invasion_m": 0.7, "cross_track_m": 0.0}) == 0.7
    with pytest.raises(ValueError, match="strict or lenient"):
        InterventionRule("gentle")
    with pytest.raises(ValueError, match="lane_invasion_m"):
        InterventionRule("strict", lane_invasion_m=float("nan"))


def test_dropped_frames_hold_the_action_and_give_the_true_gap():
    env = ScriptedEnv([])
    actor = Constant(0.25)
    steps = list(drive(env, actor, 200, seed=1, condition=Condition("dropped_frames", 5)))
    held = [s for s in steps if not s.delivered]
    assert len(held) > 60 and all(s.commanded == 0.25 and s.frame is None for s in held)
    # each delivered frame comes with the time since the previous delivered one (the first
    # with one nominal interval), so the gaps add up to the time of the last delivered frame
    last = max(s.index for s in steps if s.delivered)
    assert sum(actor.calls) == pytest.approx(0.1 * (last + 1), abs=1e-9)
    assert max(actor.calls) >= 0.3 - 1e-9 and min(actor.calls) == pytest.approx(0.1)


def test_request_advance_state_machine_refuses_misuse():
    ep = Episode(ScriptedEnv([]), 2, seed=0)
    with pytest.raises(ValueError, match="needs an action"):
        ep.advance(None)
    with pytest.raises(ValueError, match="non-finite"):
        ep.advance(float("nan"))
    ep.advance(3.0)  # clipped to 1
    st = ep.advance(-0.5)
    assert ep.done and st.commanded == -0.5
    with pytest.raises(RuntimeError, match="over"):
        ep.request()


# ------------------------------------------------------------------------------ real env

def _env():
    pytest.importorskip("highway_env")
    from envs.contract import make_env

    return make_env("liquid_drive/Racetrack-v0", {"traffic": 0}, max_steps=400)


class OncomingLane:
    """Tracks the centre of the oncoming (left) lane from privileged state: on the road all
    the time, and wholly in the wrong lane."""

    def reset(self) -> None:
        pass

    def act(self, frame, dt_s, info) -> float:
        target = -float(info["lane_width_m"])
        return float(np.clip(-0.35 * (info["cross_track_m"] - target) - 1.2 * info["heading_error_rad"], -1, 1))


def test_driving_in_the_oncoming_lane_is_a_lane_invasion_only_under_strict():
    env = _env()
    lenient = list(drive(env, OncomingLane(), 150, seed=3, rule=LENIENT))
    assert all(s.intervention is None for s in lenient)  # on the road, no collision: never stopped
    assert min(s.next_info["cross_track_m"] for s in lenient) < -3.0  # it did reach the other lane
    strict = list(drive(env, OncomingLane(), 150, seed=3, rule=STRICT))
    causes = [s.intervention for s in strict if s.intervention]
    assert causes and set(causes) == {"lane_invasion"}
    first = next(s for s in strict if s.intervention)
    assert first.next_info["lane_invasion_m"] > 0.5 and first.next_info["on_road"]
    expert = list(drive(env, ExpertActor(), 150, seed=3, rule=STRICT))
    assert not any(s.intervention for s in expert)


def test_every_stage_drives_the_same_trajectory(tmp_path):
    """Evaluate, collect, DAgger and explain share `drive`: same seed and actor → same steps."""
    from driving.collect import record_episode
    from driving.dataset import Dataset, DatasetWriter
    from driving.evaluate import lane_threshold, run_episode
    from driving.explain.drive import drive as explain_drive
    from driving.metrics import fold_steps
    from policies.factory import build_policy

    env = _env()
    policy = build_policy("ncp-cfc", seed=4)
    policy.eval()
    n, seed = 40, 7
    ref = list(drive(env, PolicyActor(policy), n, seed=seed))
    assert len(ref) == n
    # evaluate: the episode's metrics are the fold of exactly these steps
    ev = run_episode(env, PolicyActor(policy), "none", 0, n, seed, np.random.default_rng(0))
    want = fold_steps(ref, lambda info: lane_threshold(info))
    assert {k: ev[k] for k in want} == want
    # collect (a policy actor) and DAgger (the mixture with beta 0): the stored rows
    writer = DatasetWriter(tmp_path / "ds", "liquid_drive/Racetrack-v0", env.config, env.camera)
    record_episode(env, writer, seed=seed, max_steps=n, actor=PolicyActor(policy), source="policy")
    record_episode(env, writer, seed=seed, max_steps=n, source="dagger",
                   actor=MixtureActor(PolicyActor(policy), 0.0, np.random.default_rng(0)))
    ds = Dataset(tmp_path / "ds")
    for i in range(2):
        np.testing.assert_allclose(ds.steps(i, "action"), [s.executed for s in ref], atol=1e-6)
        np.testing.assert_allclose(ds.steps(i, "cross_track_m"), [s.info["cross_track_m"] for s in ref], atol=1e-5)
        np.testing.assert_allclose(ds.steps(i, "steering"), [s.expert for s in ref], atol=1e-6)
        np.testing.assert_array_equal(ds.frames(i)[5], ref[5].obs["image"])
    # explain: the same drive through the sequence path of the policy (float noise only)
    ex = list(explain_drive(policy, env, n, seed=seed))
    np.testing.assert_allclose([s.steering for s in ex], [s.commanded for s in ref], atol=1e-4)
    np.testing.assert_allclose([s.cross_track_m for s in ex], [s.info["cross_track_m"] for s in ref], atol=1e-3)
    assert ex[-1].crashes == sum(s.intervention is not None for s in ref[:-1])
