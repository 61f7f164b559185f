"""The sweep's passive test (issue 16 items 3-4): fingerprints, the held-out recording, the
task body on real recorded drives (derived controls included) and the report's offline table."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from driving.errors import UserError
from driving.sweep import report
from driving.sweep import tasks as T
from driving.sweep.protocol import (
    Layout,
    check_or_store_fingerprint,
    passive_conditions,
    passive_done,
    passive_settings,
    protocol,
)

#: fingerprint_id() of these protocols computed before the passive knobs existed: an OUT
#: made then (OUT/protocol.json) must stay resumable.
IDS_BEFORE = {"v2": "d12664ec03c6", "smoke": "9c3a7f9cfcd9"}


def test_default_passive_knobs_keep_the_fingerprint_of_existing_sweeps(tmp_path):
    for name, fid in IDS_BEFORE.items():
        p = protocol(name)
        assert p.fingerprint_id() == fid
        assert not {"passive_episodes", "passive_steps", "passive_seed", "ssim_frames"} & set(p.fingerprint())
    # the test sweep's protocol (tests/test_ray_sweep.py), also from before
    p = protocol("smoke", policies=("ncp-ltc", "cnn-ema"), seeds=(0,), conditions=("none", "dropped_frames:2"))
    assert p.fingerprint_id() == "11f3eb1bee2c"
    v2 = protocol("v2")
    assert (v2.passive_episodes, v2.passive_steps, v2.passive_seed, v2.ssim_frames) == (8, 300, 6000, 16)
    sm = protocol("smoke")
    assert (sm.passive_episodes, sm.passive_steps, sm.ssim_frames) == (2, 12, 2)
    # any other value joins the fingerprint, so one OUT never mixes passive settings
    other = protocol("v2", passive_episodes=9)
    assert other.fingerprint()["passive_episodes"] == 9 and other.fingerprint_id() != IDS_BEFORE["v2"]
    assert protocol("smoke", ssim_frames=16).fingerprint()["ssim_frames"] == 16  # v2's value, not smoke's
    lay = Layout.of(tmp_path / "out")
    check_or_store_fingerprint(v2, lay)
    check_or_store_fingerprint(protocol("v2"), lay)
    with pytest.raises(UserError, match="passive_episodes: None -> 9"):
        check_or_store_fingerprint(other, lay)
    assert lay.passive("cnn-ema", 3) == tmp_path / "out" / "passive" / "cnn-ema-s3.json"
    assert lay.passive_data == tmp_path / "out" / "passive_data"
    assert passive_conditions(v2) == [c for c in v2.conditions if not c.startswith("jitter")]
    with pytest.raises(UserError, match="passive_steps"):
        protocol("smoke", passive_steps=0).validate()


def _run(tmp: Path, name: str, state: dict | None = None, **kw) -> tuple[dict, dict]:
    from policies.checkpoint import save_checkpoint
    from policies.factory import build_policy

    pol = build_policy(name, (78, 200), 0, **kw)
    if state is not None:
        pol.load_state_dict(state, strict=True)
    save_checkpoint(tmp / name, pol, {})
    return {"files": T._files(tmp / name)}, pol.state_dict()


def test_passive_task_on_recorded_test_drives_and_derived_controls(tmp_path):
    from driving.dataset import Dataset

    p = protocol("smoke", conditions=("none", "noise:3", "fog:3", "jitter:2", "dropped_frames:2"))
    data = tmp_path / "passive_data"
    T.ensure_test_dataset(p, str(data))
    stamp = (data / "COMPLETE").stat().st_mtime_ns
    T.ensure_test_dataset(p, str(data))  # complete: not recorded again
    assert (data / "COMPLETE").stat().st_mtime_ns == stamp
    ds = Dataset(data)
    assert len(ds.episodes) == 2 and all(e.meta.get("has_depth") for e in ds.episodes)
    assert ds.attrs["env_config"].get("split") == "test"
    assert [e.length for e in ds.episodes] == [12, 12]
    # deterministic: the same settings record the same drives
    T.ensure_test_dataset(p, str(tmp_path / "again"))
    again = Dataset(tmp_path / "again")
    assert np.array_equal(again.frames(1), ds.frames(1))
    assert np.array_equal(again.steps(1, "steering"), ds.steps(1, "steering"))

    ltc, ltc_w = _run(tmp_path, "ncp-ltc")
    res = T.passive_task(p, "ncp-ltc", 0, str(data), ltc)
    assert res["kind"] == "passive" and res["settings"] == passive_settings(p)
    rep = res["report"]
    assert rep["split"] == "all" and rep["frames"] == 24 and rep["settings"]["depth_for_fog"] == "stored"
    rows = {T.condition_of(r): r for r in rep["results"]}
    assert sorted(rows) == sorted(["none", "noise:3", "fog:3", "dropped_frames:2"])  # no jitter
    assert all(math.isfinite(r["steering_mse"]) for r in rows.values())
    assert rows["none"]["attention_ssim"] == 1.0 and rows["dropped_frames:2"]["attention_ssim"] is None
    for c in ("noise:3", "fog:3"):
        assert rows[c]["ssim_frames"] == 2 and 0.0 < rows[c]["attention_ssim"] < 1.0
    labels = np.concatenate([ds.steps(i, "steering") for i in range(2)])
    assert rep["reference"]["constant_mse"] == pytest.approx(float(np.var(labels)))

    # derived controls are evaluated from their own checkpoint: the same weights with the
    # filter (cnn-ema) or without elapsed time (ncp-ltc-timeblind) give other steering
    q = protocol("smoke", conditions=("none", "dropped_frames:4"))
    cnn, cnn_w = _run(tmp_path, "cnn")
    ema, _ = _run(tmp_path, "cnn-ema", cnn_w, ema_tau_s=0.5)
    blind, _ = _run(tmp_path, "ncp-ltc-timeblind", ltc_w)
    mse = {name: {T.condition_of(r): r["steering_mse"]
                  for r in T.passive_task(q, name, 0, str(data), run)["report"]["results"]}
           for name, run in (("cnn", cnn), ("cnn-ema", ema), ("ncp-ltc", ltc), ("ncp-ltc-timeblind", blind))}
    assert mse["cnn-ema"]["none"] != pytest.approx(mse["cnn"]["none"], rel=1e-6)
    # recorded at the nominal Δt, the time-blind LTC is the LTC; with frames lost it is not
    assert mse["ncp-ltc-timeblind"]["none"] == pytest.approx(mse["ncp-ltc"]["none"], rel=1e-5)
    assert mse["ncp-ltc-timeblind"]["dropped_frames:4"] != pytest.approx(mse["ncp-ltc"]["dropped_frames:4"],
                                                                         rel=1e-6)
    with pytest.raises(RuntimeError, match="rebuilds 'cnn'"):
        T.passive_task(q, "cnn-ema", 0, str(data), cnn)


def _fake(lay: Layout, p, pol: str, seed: int, mse: dict, ssim: float, settings=None) -> None:
    rows = [{"corruption": c.partition(":")[0], "severity": int(c.partition(":")[2] or 0),
             "steering_mse": v, "steering_mae": v / 2, "steering_corr": 0.5,
             "attention_ssim": 1.0 if c == "none" else (ssim if c.startswith("noise") else None)}
            for c, v in mse.items()]
    f = lay.passive(pol, seed)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"kind": "passive", "policy": pol, "seed": seed, "seconds": 2.0,
                             "cpu_seconds": 1.5, "settings": settings or passive_settings(p),
                             "report": {"results": rows, "reference": {"constant_mse": 0.02}}}))


def test_report_means_over_seeds_and_leaves_out_other_settings(tmp_path):
    p = protocol("smoke", policies=("ncp-ltc", "cnn"), seeds=(0, 1))
    lay = Layout.of(tmp_path / "out")
    _fake(lay, p, "ncp-ltc", 0, {"none": 0.01, "noise:3": 0.02, "dropped_frames:2": 0.03}, 0.8)
    _fake(lay, p, "ncp-ltc", 1, {"none": 0.03, "noise:3": 0.04, "dropped_frames:2": 0.05}, 0.6)
    _fake(lay, p, "cnn", 0, {"none": 0.05, "noise:3": 0.06, "dropped_frames:2": 0.07}, 0.5)
    _fake(lay, p, "cnn", 1, {"none": 9.0, "noise:3": 9.0, "dropped_frames:2": 9.0}, 0.1,
          settings=dict(passive_settings(p), episodes=99))
    assert passive_done(p, lay, "ncp-ltc", 1) and not passive_done(p, lay, "cnn", 1)
    ps = report.passive_summary(p, lay)
    assert ps["runs_done"] == 3 and ps["runs_planned"] == 4 and ps["stale"] == ["cnn-s1"]
    clean = ps["steering_mse"]["ncp-ltc"]["none"]
    half = 12.706204736174705 * math.sqrt(2) * 0.01 / math.sqrt(2)  # t(0.975, 1) · sd / √n
    assert clean["mean"] == pytest.approx(0.02) and clean["n"] == 2
    assert clean["ci95"] == pytest.approx([0.02 - half, 0.02 + half], rel=1e-4)
    one = ps["steering_mse"]["cnn"]["noise:3"]
    assert one["mean"] == pytest.approx(0.06) and one["n"] == 1 and one["ci95"] is None
    assert ps["image_conditions"] == ["noise:3"] and ps["constant_mse"] == pytest.approx(0.02)
    assert ps["attention_ssim"]["ncp-ltc"]["noise:3"]["mean"] == pytest.approx(0.7)
    s = report.summarise(p, lay, noise=False)
    assert s["passive"]["runs_done"] == 3 and s["task_seconds"]["passive cpu"]["n"] == 3
    text = report.write_page(p, s, tmp_path / "page.md", "cmd")
    assert "## Passive test (held-out recorded test drives)" in text
    assert "### Attention SSIM on test roads" in text
    assert "| ncp-ltc | 0.0200 ± 0.1271 (n=2) | 0.0300 ± 0.1271 (n=2) | 0.0400 ± 0.1271 (n=2) |" in text
    assert "| cnn | 0.0500 (n=1) |" in text and "constant prediction (floor) | 0.0200 |" in text
    assert "| ncp-ltc | 0.700 ± 1.271 (n=2) |" in text
    assert "Left out (made with other passive settings): cnn-s1." in text
