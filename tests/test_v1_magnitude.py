"""scripts/v1_magnitude.py: the grid it drives, what it reads back, and its bad-input error."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("v1_magnitude", ROOT / "scripts" / "v1_magnitude.py")
vm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vm)


def _fake_report(d: Path, completion: list[float], per_ep: list[float]) -> None:
    d.mkdir(parents=True)
    rows = [{"corruption": c, "severity": s, "completion_pct": comp, "crashes_per_episode": k,
             "intervention_causes": {"collision": 0, "off_road": 0, "lane_invasion": 0}}
            for (c, s), comp, k in zip(vm.CONDITIONS, completion, per_ep, strict=True)]
    (d / "report.json").write_text(json.dumps({"results": rows}))


def test_grid_crosses_v1_and_v2_choices_and_skips_points_with_reports(tmp_path, monkeypatch):
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"")
    out = tmp_path / "out"
    for rule in vm.RULES:
        for steps in vm.STEPS:
            for seed in vm.SEEDS:
                lenient_short = rule == "lenient" and steps == 200
                _fake_report(vm.point_dir(out, "ncp-ltc", rule, steps, seed),
                             [100.0, 90.0 if lenient_short else 12.5, 80.0, 70.0], [0.0, 0.3, 1.0, 2.0])
    called = []
    monkeypatch.setattr(vm.subprocess, "run", lambda *a, **k: called.append(a))
    assert vm.main(["--checkpoint", f"ncp-ltc={ckpt}", "--out", str(out)]) == 0
    assert called == []  # every point had its report: nothing re-run
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 8  # 2 rules x 2 lengths x 2 road sets
    assert {(p["rule"], p["steps"], p["seed"]) for p in summary} == {
        (r, s, e) for r in ("lenient", "strict") for s in (200, 450) for e in (1000, 5000)}
    v1_like = [p for p in summary if p["rule"] == "lenient" and p["steps"] == 200]
    assert all(p["results"]["noise:3"]["completion_pct"] == 90.0 for p in v1_like)
    table = (out / "table.md").read_text()
    assert "| ncp-ltc | lenient | 200 | 1000 | 100 % | 90 % | 80 % | 70 % | 0.3 / 1.0 / 2.0 |" in table
    assert "| ncp-ltc | strict | 450 | 5000 | 100 % | 12 % | 80 % | 70 % |" in table


def test_a_checkpoint_without_weights_is_refused_with_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        vm.main(["--checkpoint", f"ncp-ltc={tmp_path}", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "NAME=RUN where RUN holds model.safetensors" in capsys.readouterr().err
