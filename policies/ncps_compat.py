"""Convert trained ``ncps`` 1.0.1 modules (``ncps.torch.LTC`` / ``ncps.torch.CfC``) into ours.

`from_ncps(module)` returns a module called the same way (``y, h = m(x, hx, timespans)``)
that computes the same function (parity ≤ 1e-5 in float32, see tests/test_ncps_parity.py).
With ncps's default options (batch-first, return_sequences, no mixed memory, no projection)
it is a plain `policies.LTC` / `policies.CfC`; otherwise an `NcpsModel` wrapper adds the
LSTM memory cell, the projection layer, last-step readout or time-major layout.

A wired ncps CfC becomes ``CfC(..., ncps_compat=True)``: it reproduces ncps's wired CfC
(dense intra-layer recurrence, unmasked time gates, layer-major state), see `policies.cfc`.
ncps itself is only needed to *call* this function (it is a test/dev dependency).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from policies.cfc import CfC
from policies.ltc import LTC
from policies.wiring import Wiring

__all__ = ["from_ncps", "NcpsModel", "NcpsLSTMCell"]


class NcpsLSTMCell(nn.Module):
    """The LSTM "mixed memory" cell ncps runs before the liquid cell (forget-gate bias +1)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_map = nn.Linear(input_size, 4 * hidden_size)
        self.recurrent_map = nn.Linear(hidden_size, 4 * hidden_size, bias=False)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        i, ig, fg, og = (self.input_map(x) + self.recurrent_map(h)).chunk(4, 1)
        c = c * torch.sigmoid(fg + 1.0) + torch.tanh(i) * torch.sigmoid(ig)
        return torch.tanh(c) * torch.sigmoid(og), c


class NcpsModel(nn.Module):
    """ncps-style wrapper: optional mixed memory, projection, last-step readout, time-major."""

    def __init__(self, core: LTC | CfC, mixed_memory: bool = False, proj_size: int | None = None,
                 return_sequences: bool = True, batch_first: bool = True) -> None:
        super().__init__()
        self.core = core
        self.lstm = NcpsLSTMCell(core.input_size, core.state_size) if mixed_memory else None
        self.fc = nn.Linear(core.output_size, proj_size) if proj_size is not None else None
        self.return_sequences = return_sequences
        self.batch_first = batch_first
        self.state_size = core.state_size
        self.output_size = proj_size if proj_size is not None else core.output_size

    def forward(self, x: torch.Tensor, hx: Any = None, timespans: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        batched = x.dim() == 3
        if not batched:
            x = x.unsqueeze(0)
            timespans = timespans.unsqueeze(0) if timespans is not None else None
        elif not self.batch_first:
            x = x.transpose(0, 1)
            timespans = timespans.transpose(0, 1) if timespans is not None else None
        B, T = x.shape[0], x.shape[1]
        c = None
        if self.lstm is not None:
            if hx is None:
                h = torch.zeros(B, self.state_size, dtype=x.dtype)
                c = torch.zeros_like(h)
            elif isinstance(hx, torch.Tensor):
                raise ValueError("mixed_memory=True needs hx=(h0, c0), got a single tensor")
            else:
                h, c = hx
                if not batched:
                    h, c = h.unsqueeze(0), c.unsqueeze(0)
            ys = []
            for t in range(T):
                dt = (timespans[:, t:t + 1] if timespans is not None
                      else torch.ones(B, 1, dtype=x.dtype))
                h, c = self.lstm(x[:, t], (h, c))
                y, h = self.core.step_exportable(x[:, t], h, dt)
                ys.append(y)
            y = torch.stack(ys, 1)
        else:
            if hx is not None and not batched:
                hx = hx.unsqueeze(0)
            y, h = self.core(x, hx, timespans)
        if self.fc is not None:
            y = self.fc(y)
        if not self.return_sequences:
            y = y[:, -1]
        elif not self.batch_first and batched:
            y = y.transpose(0, 1)
        if not batched:
            y = y[0]
            h = h[0]
            c = c[0] if c is not None else None
        return y, ((h, c) if self.lstm is not None else h)


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    with torch.no_grad():
        dst.copy_(src.detach().to(dst.dtype))


def _ltc_from_cell(cell: Any) -> LTC:
    wiring = Wiring.from_ncps(cell._wiring)
    m = LTC(wiring, ode_unfolds=int(cell._ode_unfolds), epsilon=float(cell._epsilon),
            input_mapping=cell._input_mapping, output_mapping=cell._output_mapping,
            implicit_constraints=bool(cell._implicit_param_constraints))
    p = cell._params
    for name in ("gleak", "vleak", "cm"):
        _copy(getattr(m, name), p[name])
    for name in ("w", "mu", "sigma", "erev"):
        _copy(getattr(m, name), p[name][m.src, m.dst])
        _copy(getattr(m, "sensory_" + name), p["sensory_" + name][m.sensory_src, m.sensory_dst])
    for name in ("input_w", "input_b", "output_w", "output_b"):
        if getattr(m, name) is not None:
            _copy(getattr(m, name), p[name])
    return m


def _act_name(backbone: nn.Module) -> str:
    for mod in backbone.modules():
        name = type(mod).__name__
        if name == "LeCun":
            return "lecun_tanh"
        for key, cls in (("silu", nn.SiLU), ("relu", nn.ReLU), ("tanh", nn.Tanh), ("gelu", nn.GELU)):
            if isinstance(mod, cls):
                return key
    return "lecun_tanh"


def _cfc_from_cell(cell: Any, input_size: int) -> CfC:
    heads = ("ff1",) if cell_mode(cell) == "pure" else ("ff1", "ff2", "time_a", "time_b")
    if hasattr(cell, "_layers"):  # WiredCfCCell
        wiring = Wiring.from_ncps(cell._wiring)
        m = CfC(wiring, mode=cell_mode(cell), ncps_compat=True)
        assert m.weight_x is not None and m.weight_new is not None
        assert m.weight_old is not None and m.bias is not None
        with torch.no_grad():
            m.weight_x.zero_()
            m.weight_new.zero_()
            m.weight_old.zero_()
            for k, layer_cell in enumerate(cell._layers):
                o, n = m.layer_offsets[k], m.layer_sizes[k]
                n_in = input_size if k == 0 else m.layer_sizes[k - 1]
                for q, head in enumerate(heads):
                    lin = getattr(layer_cell, head)
                    cols = m._col(k, q)
                    W = lin.weight.detach()
                    if k == 0:
                        m.weight_x[:, cols] = W[:, :n_in].t()
                    else:
                        po = m.layer_offsets[k - 1]
                        m.weight_new[po:po + n_in, cols] = W[:, :n_in].t()
                    m.weight_old[o:o + n, cols] = W[:, n_in:].t()
                    m.bias[cols] = lin.bias.detach()
                if m.mode == "pure":
                    m.w_tau[o:o + n] = layer_cell.w_tau.detach().reshape(-1)
                    m.A[o:o + n] = layer_cell.A.detach().reshape(-1)
        return m
    units = int(cell.hidden_size)
    layers = int(cell.backbone_layers)
    if layers > 0:
        lin0 = cell.backbone[0]
        m = CfC(units, input_size=input_size, mode=cell_mode(cell), backbone_units=lin0.out_features,
                backbone_layers=layers, backbone_activation=_act_name(cell.backbone))
        assert m.backbone is not None and m.head is not None
        ours = [mod for mod in m.backbone if isinstance(mod, nn.Linear)]
        theirs = [mod for mod in cell.backbone if isinstance(mod, nn.Linear)]
        for a, b in zip(ours, theirs):
            _copy(a.weight, b.weight)
            _copy(a.bias, b.bias)
        with torch.no_grad():
            m.head.weight.copy_(torch.cat([getattr(cell, h).weight for h in heads], 0))
            m.head.bias.copy_(torch.cat([getattr(cell, h).bias for h in heads], 0))
    else:
        m = CfC(units, input_size=input_size, mode=cell_mode(cell), backbone_layers=0)
        assert m.weight_x is not None and m.weight_old is not None and m.bias is not None
        with torch.no_grad():
            W = torch.cat([getattr(cell, h).weight for h in heads], 0)  # (H·N, F+N)
            m.weight_x.copy_(W[:, :input_size].t())
            m.weight_old.copy_(W[:, input_size:].t())
            m.bias.copy_(torch.cat([getattr(cell, h).bias for h in heads], 0))
    if m.mode == "pure":
        _copy(m.w_tau, cell.w_tau.reshape(-1))
        _copy(m.A, cell.A.reshape(-1))
    return m


def cell_mode(cell: Any) -> str:
    if hasattr(cell, "_layers"):
        return str(cell._layers[0].mode)
    return str(cell.mode)


def from_ncps(module: Any) -> nn.Module:
    """Our equivalent of an ``ncps.torch.LTC`` or ``ncps.torch.CfC`` (weights copied).

    Raises ValueError for anything else. The result is in training mode iff the input was.
    """
    kind = type(module).__name__
    mod_name = type(module).__module__
    if not mod_name.startswith("ncps") or kind not in ("LTC", "CfC"):
        raise ValueError(f"from_ncps expects an ncps.torch.LTC or ncps.torch.CfC module, got "
                         f"{mod_name}.{kind}")
    cell = module.rnn_cell
    input_size = int(module.input_size)
    core: LTC | CfC
    if kind == "LTC":
        core = _ltc_from_cell(cell)
        proj = None
    else:
        core = _cfc_from_cell(cell, input_size)
        proj = module.fc.out_features if isinstance(module.fc, nn.Linear) else None
    mixed = bool(getattr(module, "use_mixed", False))
    simple = (not mixed and proj is None and module.return_sequences and module.batch_first)
    out: nn.Module
    if simple:
        out = core
    else:
        wrap = NcpsModel(core, mixed, proj, bool(module.return_sequences), bool(module.batch_first))
        if mixed:
            assert wrap.lstm is not None
            wrap.lstm.load_state_dict(module.lstm.state_dict())
        if proj is not None:
            assert wrap.fc is not None
            wrap.fc.load_state_dict(module.fc.state_dict())
        out = wrap
    out.train(module.training)
    return out



