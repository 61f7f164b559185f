"""Export of the cells: torch.export of the sequence modules, ONNX of one step (onnxruntime)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from policies import LTC, CfC, Wiring


class _Step(torch.nn.Module):
    def __init__(self, cell: torch.nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor, h: torch.Tensor, dt: torch.Tensor):
        return self.cell.step_exportable(x, h, dt)


def cells():
    w = Wiring.ncp(seed=1)
    return [LTC(w, seed=0), CfC(w, seed=0), CfC(w, mode="pure", seed=0)]


@pytest.mark.parametrize("idx", [0, 1, 2])
def test_torch_export_sequence(idx: int) -> None:
    cell = cells()[idx].eval()
    x, h = torch.randn(2, 3, 32), torch.randn(2, 19) * 0.3
    ts = torch.rand(2, 3) + 0.2
    ep = torch.export.export(cell, (x, h, ts))
    x2, h2, ts2 = torch.randn(2, 3, 32), torch.randn(2, 19) * 0.3, torch.rand(2, 3) + 0.2
    got = ep.module()(x2, h2, ts2)
    ref = cell(x2, h2, ts2)
    assert all((a - b).abs().max() < 1e-5 for a, b in zip(got, ref))


@pytest.mark.parametrize("idx", [0, 1, 2])
def test_onnx_step_matches_onnxruntime(idx: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    cell = cells()[idx].eval()
    step = _Step(cell)
    x, h, dt = torch.randn(1, 32), torch.randn(1, 19) * 0.3, torch.full((1, 1), 0.1)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(step, (x, h, dt), buf, input_names=["x", "h", "dt"],
                          output_names=["y", "h_out"], dynamo=False, opset_version=17,
                          dynamic_axes={"x": {0: "b"}, "h": {0: "b"}, "dt": {0: "b"}})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for B in (1, 3):
        x, h, dt = torch.randn(B, 32), torch.randn(B, 19) * 0.3, torch.rand(B, 1) + 0.05
        y, h_out = sess.run(None, {"x": x.numpy(), "h": h.numpy(), "dt": dt.numpy()})
        with torch.no_grad():
            ry, rh = cell.step(x, h, dt[:, 0])
        assert np.abs(y - ry.numpy()).max() <= 1e-5
        assert np.abs(h_out - rh.numpy()).max() <= 1e-5
