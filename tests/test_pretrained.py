"""The agents shipped in assets/pretrained load by name and drive the control step."""

import json

import numpy as np
import pytest
import torch

from policies.checkpoint import PRETRAINED_DIR, load_policy, pretrained_names, resolve_run_dir


def test_shipped_agents_are_listed():
    names = pretrained_names()
    assert {"ncp-cfc", "ncp-ltc"} <= set(names), f"expected both NCP agents in {PRETRAINED_DIR}"


@pytest.mark.parametrize("name", ["ncp-cfc", "ncp-ltc"])
def test_pretrained_agent_loads_and_steps(name):
    policy, config = load_policy(f"pretrained:{name}")
    assert config["policy"] == name
    recipe = (PRETRAINED_DIR / name / "TRAINED_WITH.md").read_text()
    assert "driving train" in recipe and "driving collect" in recipe  # how to regenerate it
    h, w = config["image_hw"]
    frame = np.full((h, w, 3), 128, np.uint8)
    state = policy.initial_state(1)
    with torch.no_grad():
        steering, state = policy.step(frame, state, 0.1)
    value = float(np.asarray(steering).reshape(-1)[0])
    assert -1.0 <= value <= 1.0 and np.isfinite(value)
    assert json.loads((PRETRAINED_DIR / name / "config.json").read_text())["policy"] == name


def test_unknown_pretrained_name_is_a_clear_error():
    with pytest.raises(ValueError, match="no pretrained agent 'nope'"):
        resolve_run_dir("pretrained:nope")


@pytest.mark.parametrize("name", ["ncp-cfc", "ncp-ltc"])
def test_pretrained_agent_drives_a_held_out_road_without_intervention(name):
    """A short clean drive on a RandomRoad test-split road (odd road seed, a test look,
    never trained on): no intervention under the strict rule, and the car makes progress."""
    from driving.rollout import PolicyActor, drive
    from envs.contract import make_env

    policy, config = load_policy(f"pretrained:{name}")
    h, w = config["image_hw"]
    env = make_env("liquid_drive/RandomRoad-v0", {"split": "test"}, {"height": h, "width": w},
                   max_steps=120)
    try:
        assert env.config["split"] == "test"
        steps = list(drive(env, PolicyActor(policy), 120, seed=7))
    finally:
        env.close()
    causes = [s.intervention for s in steps if s.intervention is not None]
    assert len(steps) == 120 and causes == []
    assert sum(s.distance_m for s in steps) > 60.0  # 12 s at 8-10 m/s
    assert max(abs(float(s.next_info["cross_track_m"])) for s in steps) < 1.5
