"""ONNX export of one policy step; onnxruntime must agree with PyTorch (≤ 1e-5)."""

import json

import numpy as np
import pytest
import torch

from driving.cli import main
from policies.checkpoint import save_checkpoint
from policies.export import PolicyStep, check_onnx, example_inputs, export_onnx
from policies.factory import POLICY_NAMES, build_policy

HW = (24, 40)

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - dev dependency
    ort = None
needs_ort = pytest.mark.skipif(ort is None, reason="onnxruntime not installed (pip install onnxruntime)")


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_step_module_equals_policy_step(name):
    p = build_policy(name, image_hw=HW, seed=2).eval()
    step = PolicyStep(p)
    args = example_inputs(p, batch=3)
    with torch.no_grad():
        out = step(*args)
    out = out if isinstance(out, tuple) else (out,)
    n_state = len(step.input_names()) - 1 - int(step.uses_time)
    h = None
    if n_state:
        h = tuple(args[1:1 + n_state]) if n_state == 2 else args[1]
    dt = args[-1] if step.uses_time else None
    s, h2 = p.step(args[0], h, dt=dt)
    assert torch.allclose(out[0], s, atol=1e-6)
    if n_state:
        h2 = h2 if isinstance(h2, tuple) else (h2,)
        for a, b in zip(out[1:], h2):
            assert torch.allclose(a, b, atol=1e-6)


@needs_ort
@pytest.mark.parametrize("name", POLICY_NAMES)
def test_onnxruntime_matches_torch(tmp_path, name):
    p = build_policy(name, image_hw=HW, seed=1).eval()
    path = export_onnx(p, tmp_path / f"{name}.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    step = PolicyStep(p)
    assert [i.name for i in sess.get_inputs()] == step.input_names()
    assert [o.name for o in sess.get_outputs()] == step.output_names()
    assert sess.get_inputs()[0].type == "tensor(uint8)"
    # chained steps, each runtime carrying its own state; batch sizes other than the traced one
    assert check_onnx(p, path, steps=4, batch=3) <= 1e-5
    assert check_onnx(p, path, steps=2, batch=1, seed=7) <= 1e-5
    # the graph follows the inputs (not constants baked in at trace time)
    if step.uses_time:
        args = example_inputs(p, batch=1)
        feed = {n: a.numpy() for n, a in zip(step.input_names(), args)}
        a = sess.run(None, feed)[1]
        feed["dt"] = feed["dt"] * 3
        b = sess.run(None, feed)[1]
        assert not np.allclose(a, b)


@needs_ort
def test_cli_export(tmp_path, capsys):
    p = build_policy("ncp-ltc", image_hw=HW, seed=0)
    save_checkpoint(tmp_path / "run", p, {})
    out = tmp_path / "step.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert out.is_file() and summary["policy"] == "ncp-ltc"
    assert summary["inputs"] == ["image", "h", "dt"]
    assert summary["max_abs_diff_vs_torch"] <= 1e-5
    # existing output is not overwritten without --force
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_cli_export_bad_input(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "a.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "a.txt")]) == 2
    assert ".onnx" in capsys.readouterr().err
    torch.save({"w": torch.ones(1)}, tmp_path / "model.pt")
    assert main(["export", "--checkpoint", str(tmp_path / "model.pt"), "--out", str(tmp_path / "a.onnx")]) == 2
    assert "pickled checkpoints are not loaded for safety" in capsys.readouterr().err
    assert not (tmp_path / "a.onnx").exists()


@pytest.mark.filterwarnings("ignore:The tensor attributes")  # torch's LSTM flat weights
@pytest.mark.parametrize("name", ["ncp-cfc", "ncp-ltc", "lstm"])
def test_torch_export_of_the_step(name):
    p = build_policy(name, image_hw=HW, seed=5).eval()
    step = PolicyStep(p)
    args = example_inputs(p, batch=2)
    program = torch.export.export(step, args)
    new_args = example_inputs(p, batch=2, seed=3)
    got, want = program.module()(*new_args), step(*new_args)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6)
