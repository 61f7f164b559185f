"""The v2 sweep on a real local Ray cluster (2 CPUs): tasks, pairing, derived controls, resume."""

import json
import math

import pytest

ray = pytest.importorskip("ray")

from driving.errors import UserError  # noqa: E402
from driving.sweep import engine, report  # noqa: E402
from driving.sweep.protocol import (  # noqa: E402
    Layout,
    passive_settings,
    protocol,
    runs,
    select_part,
    trainings_needed,
)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_parts_share_the_runs_and_pull_in_the_trainings_they_need():
    p = protocol("smoke", policies=("ncp-ltc", "cnn", "cnn-ema", "ncp-ltc-timeblind"), seeds=(0, 1))
    rs = runs(p)
    assert rs[:4] == [("ncp-ltc", 0), ("cnn", 0), ("cnn-ema", 0), ("ncp-ltc-timeblind", 0)]
    parts = [select_part(rs, f"{k}/3") for k in (1, 2, 3)]
    assert sorted(x for part in parts for x in part) == sorted(rs)  # a partition
    assert parts[0] == [rs[0], rs[3], rs[6]]
    # cnn-ema seed 1 needs the trained cnn and, for its time constant, NCP-LTC of seed 1
    assert trainings_needed(p, [("cnn-ema", 1)]) == [("cnn", 1), ("ncp-ltc", 1)]
    assert trainings_needed(p, [("ncp-ltc-timeblind", 0)]) == [("ncp-ltc", 0)]
    for bad in ("0/3", "4/3", "x"):
        with pytest.raises(UserError, match="K/N"):
            select_part(rs, bad)


def test_tiny_sweep_on_a_local_ray_cluster_then_resume(tmp_path, cluster):
    p = protocol("smoke", policies=("ncp-ltc", "cnn-ema"), seeds=(0,),
                 conditions=("none", "dropped_frames:2"))
    out = tmp_path / "sweep"
    r = engine.run_sweep(p, out)
    assert r.cluster_cpus == 2 and not r.failed
    assert r.submitted == {"train": 2, "derive": 1, "eval": 8, "passive": 2}  # cnn trained, not evaluated
    lay = Layout.of(out)
    # one passive test per run, on the recorded held-out test drives
    passive = {run: json.loads(lay.passive(*run).read_text()) for run in runs(p)}
    for (pol, seed), res in passive.items():
        assert res["kind"] == "passive" and (res["policy"], res["seed"]) == (pol, seed)
        assert res["settings"] == passive_settings(p)
        rep = res["report"]
        assert rep["policy"] == pol and rep["frames"] == 2 * 12 and rep["split"] == "all"
        assert [(x["corruption"], x["severity"]) for x in rep["results"]] == [("none", 0), ("dropped_frames", 2)]
        assert all(math.isfinite(x["steering_mse"]) for x in rep["results"])
    assert (lay.passive_data / "COMPLETE").is_file()
    cells = sorted((out / "cells").rglob("road*.json"))
    assert len(cells) == 2 * 2 * 2
    seeds = {}
    for f in cells:
        c = json.loads(f.read_text())
        assert c["row"]["episodes"] == 1 and c["road_seed"] == 5000 + c["road"]
        assert len(c["weights_sha256"]) == 16  # which weights made the cell
        seeds.setdefault((c["condition"], c["road"]), set()).add(tuple(c["row"]["per_episode"]["seed"]))
    assert all(len(v) == 1 for v in seeds.values())  # paired: same env seed for every policy
    # the smoothing control is the trained cnn's weights with the calibrated time constant
    from policies.checkpoint import load_policy

    ema, cfg = load_policy(lay.run("cnn-ema", 0))
    cnn, _ = load_policy(lay.run("cnn", 0))
    calib = json.loads(lay.calibration("cnn-ema", 0).read_text())
    assert ema.ema_tau_s == calib["ema_tau_s"] == cfg["derived"]["ema_tau_s"] > 0
    assert all((a == b).all() for a, b in zip(ema.state_dict().values(), cnn.state_dict().values()))
    # resume: nothing is submitted again, nothing is rewritten
    done = cells + [lay.passive(*run) for run in runs(p)]
    stamps = {f: f.stat().st_mtime_ns for f in done}
    r2 = engine.run_sweep(p, out)
    assert r2.submitted == {} and r2.skipped == {"train": 2, "derive": 1, "eval": 8, "passive": 2}
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items())
    # an interrupted sweep: only what has no result file is submitted
    cells[3].unlink()
    lay.passive("cnn-ema", 0).unlink()
    r3 = engine.run_sweep(p, out)
    assert r3.submitted == {"eval": 1, "passive": 1} and cells[3].is_file()
    again = json.loads(lay.passive("cnn-ema", 0).read_text())["report"]
    assert again["results"] == passive[("cnn-ema", 0)]["report"]["results"]  # deterministic
    sessions = json.loads((out / "timings" / "sessions.json").read_text())["sessions"]
    assert len(sessions) == 3 and sessions[0]["cluster_cpus"] == 2
    assert sessions[0]["finished"]["passive"] == 2 and sessions[2]["submitted"]["passive"] == 1
    # the page and its statistics
    page = tmp_path / "art" / "results.md"
    s = report.report(p, lay, page, "cmd", noise=False)
    assert s["cells_done"] == 8 == s["cells_planned"]
    assert s["task_seconds"]["eval cpu"]["n"] == 8 and s["task_seconds"]["train"]["n"] == 2
    d = s["paired_interventions"]["ncp-ltc"]["cnn-ema"]["none"]
    assert d["cells"] == 2 and d["wins"] + d["ties"] + d["losses"] == 2
    assert s["passive"]["runs_done"] == 2 and s["task_seconds"]["passive"]["n"] == 2
    clean = s["passive"]["steering_mse"]["ncp-ltc"]["none"]
    assert clean["n"] == 1 and clean["mean"] == passive[("ncp-ltc", 0)]["report"]["results"][0]["steering_mse"]
    text = page.read_text()
    assert "policy − ncp-ltc" in text and "| cnn-ema |" in text and "(storage)" in text
    assert "## Passive test (held-out recorded test drives)" in text
    assert f"| ncp-ltc | {clean['mean']:.4f} (n=1) |" in text and "constant prediction (floor)" in text
    # another recipe in the same OUT is refused
    with pytest.raises(UserError, match="epochs"):
        engine.run_sweep(protocol("smoke", policies=("ncp-ltc",), seeds=(0,), epochs=2,
                                  conditions=("none", "dropped_frames:2")), out)
