"""scripts/reproduce_paper.py: planning, resume, aggregation over seeds, and a tiny real run."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("reproduce_paper", ROOT / "scripts" / "reproduce_paper.py")
rp = importlib.util.module_from_spec(_spec)
sys.modules["reproduce_paper"] = rp
_spec.loader.exec_module(rp)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Relative defaults (docs/results.md, results/paper) must never land in the checkout."""
    monkeypatch.chdir(tmp_path)


def test_plan_is_seed_major_and_ssim_only_on_ssim_seeds(tmp_path):
    p = rp.Plan(out=str(tmp_path), policies=("ncp-cfc", "lstm"), seeds=(0, 1), ssim=("noise:3",),
                ssim_seeds=(1,), conditions=("none", "noise:3", "fog:2"))
    pipes = rp.plan_pipelines(p)
    firsts = [pipe[0].name for pipe in pipes]
    assert firsts == ["train ncp-cfc seed 0", "train lstm seed 0", "train ncp-cfc seed 1",
                      "train lstm seed 1"]
    # train, one eval over every condition; SSIM only for seed 1
    assert [len(x) for x in pipes] == [2, 2, 3, 3]
    ev0 = pipes[0][1].argv
    assert "--no-expert-reference" not in ev0  # the expert drives once, on the first run
    assert "--no-expert-reference" in pipes[1][1].argv
    assert ev0[ev0.index("--corruptions") + 1] == "none,noise:3,fog:2"  # parsed once, by eval
    assert json.loads(ev0[ev0.index("--env-config") + 1]) == {"split": "test"}
    assert pipes[2][-1].argv[:2] == ["explain", "--ssim"]
    assert pipes[0][0].argv[pipes[0][0].argv.index("--data") + 1] == str(tmp_path / "data")


def test_a_second_sweep_can_share_the_dataset(tmp_path):
    p = rp.Plan(out=str(tmp_path / "b"), data=str(tmp_path / "a" / "data"), policies=("gru",),
                seeds=(3,), train_extra=("--lr", "0.001"))
    assert rp.collect_stage(p).argv[rp.collect_stage(p).argv.index("--out") + 1] == str(tmp_path / "a" / "data")
    train = rp.pipeline(p, "gru", 3)[0].argv
    assert train[train.index("--data") + 1] == str(tmp_path / "a" / "data")
    assert train[train.index("--out") + 1] == str(tmp_path / "b" / "runs" / "gru-s3")
    assert train[train.index("--lr") + 1] == "0.001"


@pytest.mark.parametrize("argv, words", [
    (["--policies", "ncp-cfc,transformer"], "transformer"),
    (["--conditions", "none,noise:7"], "noise:7"),
    (["--conditions", "none,smoke:2"], "smoke:2"),
    (["--ssim", "dropped_frames:2"], "image corruption"),
    (["--epochs", "0"], "--epochs"),
])
def test_bad_input_exits_2_naming_the_problem(tmp_path, capsys, argv, words):
    code = rp.main(["--out", str(tmp_path / "o"), "--docs", str(tmp_path / "r.md"), *argv])
    assert code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "o" / "data").exists()  # nothing ran


def test_resume_with_other_settings_is_refused(tmp_path):
    p = rp.Plan(out=str(tmp_path), epochs=3)
    rp.load_or_store_plan(p)
    rp.load_or_store_plan(rp.Plan(out=str(tmp_path), epochs=3, policies=("cnn",), seeds=(5,)))
    with pytest.raises(rp.UserError, match="epochs: 3 -> 4"):
        rp.load_or_store_plan(rp.Plan(out=str(tmp_path), epochs=4))


def _fake_report(path: Path, policy: str, completion: float, crashes: int, episodes: int = 2):
    rows = []
    for corr, sev, delta in (("none", 0, 0.0), ("noise", 3, -10.0)):
        rows.append({"corruption": corr, "severity": sev, "episodes": episodes,
                     "distance_m": 100.0, "mean_abs_cross_track_m": 0.5, "lane_departures_per_km": 1.0,
                     "crashes": crashes, "completion_pct": completion + delta, "autonomy_pct": 90.0,
                     "per_episode": {"completion_pct": [completion + delta] * episodes,
                                     "crashes": [crashes / episodes] * episodes}})
    path.mkdir(parents=True)
    (path / "report.json").write_text(json.dumps({"policy": policy, "results": rows}))


def test_aggregate_is_mean_and_t_interval_over_seeds(tmp_path):
    p = rp.Plan(out=str(tmp_path), policies=("ncp-cfc", "cnn"), seeds=(0, 1, 2), ssim=(),
                docs=str(tmp_path / "results.md"))
    for seed, comp in zip((0, 1, 2), (60.0, 70.0, 80.0)):
        _fake_report(rp.eval_dir(p, "ncp-cfc", seed), "ncp-cfc", comp, crashes=seed)
    _fake_report(rp.eval_dir(p, "cnn", 0), "cnn", 95.0, crashes=0)  # a partial run: one seed
    agg = rp.aggregate(p)
    assert agg["conditions"] == ["clean", "noise:3"]
    assert agg["seeds_done"] == {"ncp-cfc": [0, 1, 2], "cnn": [0]}
    s = agg["table"]["ncp-cfc"]["clean"]["completion_pct"]
    assert s["mean"] == pytest.approx(70.0)
    half = 4.302652729911275 * 10.0 / math.sqrt(3)  # t(0.975, 2) · sd / sqrt(n)
    assert s["ci95"] == pytest.approx([70.0 - half, 70.0 + half], rel=1e-4)
    assert agg["table"]["ncp-cfc"]["noise:3"]["completion_pct"]["mean"] == pytest.approx(60.0)
    crashes = agg["table"]["ncp-cfc"]["clean"]["crashes_per_episode"]
    assert crashes["mean"] == pytest.approx((0 + 0.5 + 1.0) / 3)
    assert agg["table"]["cnn"]["clean"]["completion_pct"]["ci95"] is None
    text = rp.write_results_md(p, agg, [], None, [], {"x": 60.0}, "cmd")
    assert "70.0 ± 24.8" in text  # 4.303 · 10 / √3 = 24.84
    assert "95.0 (n=1)" in text
    assert "cnn seed 1" in text and "Not finished" in text
    assert "best cnn (95.0); ncp-cfc 70.0" in text  # the NCP's loss is stated, not hidden


def test_tiny_real_run_then_resume_skips_everything(tmp_path):
    out, docs, art = tmp_path / "paper", tmp_path / "results.md", tmp_path / "keep"
    argv = ["--out", str(out), "--docs", str(docs), "--policies", "ncp-cfc,cnn", "--seeds", "0",
            "--episodes", "2", "--steps", "20", "--epochs", "1", "--max-frames", "16",
            "--val-fraction", "0.5", "--eval-episodes", "1", "--eval-steps", "6",
            "--conditions", "none,noise:3,fog:2", "--ssim", "noise:3", "--ssim-steps", "3",
            "--workers", "1", "--artefacts", str(art)]
    assert rp.main(argv) == 0
    report = json.loads((out / "eval" / "ncp-cfc-s0" / "report.json").read_text())
    conds = [(r["corruption"], r["severity"]) for r in report["results"]]
    assert conds == [("none", 0), ("noise", 3), ("fog", 2)]
    assert report["settings"]["env_kwargs"] == {"split": "test"}
    assert report["reference"]  # the expert's clean run, on the first (policy, seed)
    summary = json.loads((art / "summary.json").read_text())
    params = {r["policy"]: r for r in summary["parameters"]}
    assert params["ncp-cfc"]["cnn"] == params["cnn"]["cnn"] == 79420
    assert params["ncp-cfc"]["total"] == params["ncp-cfc"]["cnn"] + params["ncp-cfc"]["core_and_readout"]
    ssim = json.loads((out / "ssim" / "cnn-s0-noise3.json").read_text())
    assert ssim["frames"] == 3 and 0.0 < ssim["ssim_mean"] <= 1.0
    text = docs.read_text()
    assert "| ncp-cfc (n=1) |" in text and "noise:3" in text and "79,420" in text
    assert (art / "compare" / "compare.md").is_file() and (art / "reports" / "cnn-s0.json").is_file()
    # resume: the same command finds every stage complete and reruns nothing
    stamp = (out / "runs" / "cnn-s0" / "model.safetensors").stat().st_mtime_ns
    report_stamp = (out / "eval" / "ncp-cfc-s0" / "report.json").stat().st_mtime_ns
    assert rp.main(argv) == 0
    assert (out / "eval" / "ncp-cfc-s0" / "report.json").stat().st_mtime_ns == report_stamp
    assert (out / "runs" / "cnn-s0" / "model.safetensors").stat().st_mtime_ns == stamp
    # a lost evaluation part is redone, and only it
    (out / "eval" / "cnn-s0" / "report.json").unlink()
    assert rp.main(argv) == 0
    assert (out / "eval" / "cnn-s0" / "report.json").is_file()
    assert (out / "runs" / "cnn-s0" / "model.safetensors").stat().st_mtime_ns == stamp


def test_image_blind_run_and_best_val_mse(tmp_path):
    row = {"mean_abs_cross_track_m": 1.5, "crashes": 6, "completion_pct": 12.0}
    assert rp._image_blind([dict(row, corruption=c) for c in ("none", "fog", "rain")])
    assert rp._image_blind([dict(row), dict(row), dict(row, mean_abs_cross_track_m=1.5 + 1e-7)])
    assert not rp._image_blind([dict(row), dict(row), dict(row, crashes=5)])
    assert not rp._image_blind([dict(row), dict(row), dict(row, mean_abs_cross_track_m=1.51)])
    assert not rp._image_blind([dict(row)])  # one condition says nothing
    (tmp_path / "metrics.csv").write_text("round,epoch,val_mse\n0,1,0.04\n0,2,0.012\n0,3,0.02\n")
    assert rp.best_val_mse(tmp_path) == pytest.approx(0.012)
    assert rp.best_val_mse(tmp_path / "missing") is None


# ----------------------------------------------------------------------------- protocol v2


def test_v2_policies_come_from_the_factory():
    from policies.factory import POLICY_NAMES

    assert rp.ALL_POLICIES == tuple(POLICY_NAMES)
    assert {"ltc-random", "cfc-full", "cnn-ema", "ncp-ltc-timeblind"} <= set(rp.ALL_POLICIES)
    from driving.sweep.protocol import protocol

    p = protocol("v2")
    assert p.policies == tuple(POLICY_NAMES) and len(p.seeds) >= 5
    assert p.roads >= 10 and p.eval_steps >= 450 and p.intervention == "strict"
    conds = set(p.conditions)
    assert {"none", "noise:3", "noise:4", "noise:5", "fog:3", "rain:3", "snow:3", "night:3",
            "motion_blur:3", "glare:3", "dropped_frames:2", "dropped_frames:4", "jitter:2",
            "jitter:4"} == conds


@pytest.mark.parametrize("argv, words", [
    (["--policies", "ncp-ltc,transformer"], "transformer"),
    (["--part", "3/2"], "K/N"),
    (["--conditions", "none,smoke:2"], "smoke:2"),
    (["--conditions", "noise:3"], "'none'"),
])
def test_v2_bad_input_exits_2(tmp_path, capsys, argv, words):
    code = rp.main(["--protocol", "smoke", "--out", str(tmp_path / "o"), "--artefacts",
                    str(tmp_path / "a"), *argv])
    assert code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "o" / "cells").exists()


def test_v2_report_only_keeps_the_v1_history(tmp_path):
    results = tmp_path / "results.md"
    results.write_text("# Results: v1\n\nintro\n\n## What ran\n\nthe v1 history\n")
    argv = ["--protocol", "smoke", "--out", str(tmp_path / "o"), "--artefacts", str(tmp_path / "a"),
            "--results-md", str(results), "--report-only"]
    assert rp.main(argv) == 0
    assert rp.main(argv) == 0  # twice: one block, refreshed in place
    text = results.read_text()
    assert text.count("protocol-v2:begin") == 1 and "the v1 history" in text
    assert text.index("protocol-v2:begin") < text.index("## What ran")
    page = (tmp_path / "a" / "results.md").read_text()
    assert "No paired comparison has finished cells yet." in page
    assert "realised variance" in page and "(storage)" in page
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    noise = {r["severity"]: r for r in summary["noise"]}
    # clipping to [0, 1] makes the realised variance smaller than the nominal σ²
    for sev, nominal in ((3, 0.1), (4, 0.2), (5, 0.3)):
        assert noise[sev]["nominal_variance"] == pytest.approx(nominal)
        assert 0.3 * nominal < noise[sev]["realised_variance"] < nominal
    params = {r["policy"]: r for r in summary["parameters"]}
    assert params["ncp-ltc"]["core_effective"] == params["ncp-ltc"]["core_storage"] == 1131
    assert params["cnn-ema"]["storage"] == params["cnn-ema"]["effective"] == 88291


def test_a_v1_rewrite_keeps_the_v2_block(tmp_path):
    docs = tmp_path / "results.md"
    docs.write_text("# old\n\n<!-- protocol-v2:begin -->\nv2 says\n<!-- protocol-v2:end -->\nold v1\n")
    p = rp.Plan(out=str(tmp_path), policies=("cnn",), seeds=(0,), ssim=(), docs=str(docs))
    text = rp.write_results_md(p, rp.aggregate(p), [], None, [], {}, "cmd")
    assert text.startswith("# Results") and text.count("v2 says") == 1 and "old v1" not in text
    assert text.index("v2 says") < text.index("## What ran")
