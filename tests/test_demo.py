"""`driving demo` on a tiny recipe: records on the train split, judges on held-out envs."""

import json

import pytest

from driving.demo import (
    CONDITIONS,
    HELD_OUT_ENVS,
    DemoConfig,
    commands,
    format_table,
    resolve_precision,
    run_demo,
)
from driving.errors import UserError


def test_default_recipe_trains_on_train_split_and_judges_on_held_out_envs():
    cfg = DemoConfig(out="/tmp/x")
    collect, = commands(cfg)["collect"]
    assert collect[collect.index("--env") + 1] == "liquid_drive/RandomRoad-v0"
    kwargs = json.loads(collect[collect.index("--env-kwargs") + 1])
    assert kwargs["split"] == "train"
    assert kwargs["track_kwargs"]["radius_m"] == [10, 60]  # bends as tight as the racetrack's
    train, = commands(cfg)["train"]
    assert "--stateful" in train and train[train.index("--seq-len") + 1] == "8"
    assert train[train.index("--precision") + 1] in ("fp32", "bf16")
    ev, = commands(cfg)["eval"]
    assert ev[ev.index("--envs") + 1].split(",") == list(HELD_OUT_ENVS)
    assert ev[ev.index("--intervention") + 1] == "strict"
    conds = ev[ev.index("--corruptions") + 1].split(",")
    for name in ("fog", "rain", "noise", "snow", "night", "glare"):  # two severities each
        assert len({c for c in conds if c.startswith(name + ":")}) == 2, name
    assert "dropped_frames:3" in conds and "jitter:3" in conds and conds[0] == "none"
    assert tuple(conds) == CONDITIONS


def test_precision_auto_follows_the_cpu_and_bad_values_are_refused(monkeypatch):
    import policies.policy

    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(policies.policy, "supports_bf16", lambda device="cpu", n=native: n)
        assert resolve_precision("auto") == want
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    with pytest.raises(UserError, match="auto, fp32 or bf16"):
        resolve_precision("fp16")


def test_demo_refuses_to_record_on_the_test_split(tmp_path):
    with pytest.raises(UserError, match="train split"):
        run_demo(DemoConfig(out=str(tmp_path), env_kwargs={"split": "test"}))


def test_tiny_demo_runs_every_stage(tmp_path, capsys):
    cfg = DemoConfig(out=str(tmp_path / "demo"), episodes=2, steps=24, epochs=1, max_frames=48,
                     seq_len=6, burn_in=3, cnn_warmup_steps=2, dagger_rounds=0,
                     eval_envs=("liquid_drive/RandomRoad-v0", "liquid_drive/LaneKeeping-v0"),
                     eval_conditions=("none", "fog:4"), eval_episodes=1, eval_steps=12,
                     video_steps=6, workers=1, threads=1)
    summary = run_demo(cfg)
    out = tmp_path / "demo"
    index = json.loads((out / "data" / "index.json").read_text())["episodes"]
    assert len(index) == 2 and all(e["env_config"]["split"] == "train" for e in index)
    rr = json.loads((out / "eval" / "RandomRoad-v0" / "report.json").read_text())
    assert rr["settings"]["env_kwargs"]["split"] == "test"  # held-out roads
    assert rr["settings"]["intervention"] == "strict"
    rows = summary["held_out"]
    assert [(r["env"], r["corruption"]) for r in rows] == [
        (e, c) for e in cfg.eval_envs for c in ("none", "fog")]
    assert all(r["episodes"] == 1 and 0.0 <= r["completion_pct"] <= 100.0 for r in rows)
    assert (out / "explain_fog.mp4").stat().st_size > 0 and (out / "explain_fog.png").exists()
    assert set(summary["times"]) == {"collect_s", "train_s", "eval_s", "explain_s", "total_s"}
    printed = capsys.readouterr().out
    assert format_table(rows) in printed and "held out" in printed
    assert json.loads((out / "demo_summary.json").read_text())["held_out"] == rows
