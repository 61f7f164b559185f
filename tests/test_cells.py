"""LTC and CfC: agreement of the fast paths with plain references, gradients, semantics, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from policies import _ckernel
from policies.cfc import CfC
from policies.ltc import LTC
from policies.wiring import Wiring

D64 = torch.float64


def tiny(seed: int = 1) -> Wiring:
    return Wiring.ncp(inter=4, command=3, motor=2, sensory_fanout=2, inter_fanout=2,
                      recurrent_command_synapses=3, motor_fanin=2, input_dim=5, seed=seed)


def data(w: Wiring, B: int = 3, T: int = 4, dtype: torch.dtype = D64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, w.input_dim, generator=g, dtype=dtype)
    h = 0.4 * torch.randn(B, w.units, generator=g, dtype=dtype)
    ts = torch.rand(B, T, generator=g, dtype=dtype) + 0.3
    return x, h, ts


@pytest.fixture
def no_ckernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ckernel, "func", lambda name, dtype: None)


# ----------------------------------------------------------------------------- LTC
def ltc_loop_reference(m: LTC, x: torch.Tensor, h: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Plain per-neuron loop over the wiring's synapses (independent of the module's vectorisation)."""
    w = m.wiring
    sp = F.softplus
    N, Fd = w.units, w.input_dim
    dense = {}
    for name in ("w", "mu", "sigma", "erev"):
        d = torch.zeros(N, N, dtype=x.dtype)
        d[m.src, m.dst] = getattr(m, name).detach()
        dense[name] = d
        s = torch.zeros(Fd, N, dtype=x.dtype)
        s[m.sensory_src, m.sensory_dst] = getattr(m, "sensory_" + name).detach()
        dense["s_" + name] = s
    gl, vl, cm = sp(m.gleak.detach()), m.vleak.detach(), sp(m.cm.detach())
    B, T, _ = x.shape
    out = torch.zeros(B, T, N, dtype=x.dtype)
    for b in range(B):
        v = h[b].clone()
        for t in range(T):
            xm = x[b, t] * m.input_w.detach() + m.input_b.detach()
            c = cm / (ts[b, t] / m.ode_unfolds)
            for _ in range(m.ode_unfolds):
                new = torch.zeros(N, dtype=x.dtype)
                for i in range(N):
                    num = c[i] * v[i] + gl[i] * vl[i]
                    den = c[i] + gl[i] + m.epsilon
                    for k in range(Fd):
                        if w.sensory_adjacency[k, i]:
                            a = sp(dense["s_w"][k, i]) * torch.sigmoid(
                                dense["s_sigma"][k, i] * (xm[k] - dense["s_mu"][k, i]))
                            num, den = num + a * dense["s_erev"][k, i], den + a
                    for j in range(N):
                        if w.adjacency[j, i]:
                            a = sp(dense["w"][j, i]) * torch.sigmoid(
                                dense["sigma"][j, i] * (v[j] - dense["mu"][j, i]))
                            num, den = num + a * dense["erev"][j, i], den + a
                    new[i] = num / den
                v = new
            out[b, t] = v
    return out


def test_ltc_matches_per_neuron_loop() -> None:
    w = tiny()
    m = LTC(w, ode_unfolds=3, seed=0).double()
    x, h, ts = data(w, B=2, T=3)
    with torch.no_grad():
        ys, hl = m(x, h, ts, return_states=True)
        y, _ = m(x, h, ts)
    ref = ltc_loop_reference(m, x, h, ts)
    assert torch.allclose(ys, ref, atol=1e-12)
    assert torch.allclose(hl, ref[:, -1], atol=1e-12)
    assert torch.allclose(y, ref[..., : w.output_dim] * m.output_w + m.output_b, atol=1e-12)


@pytest.mark.parametrize("path", ["c", "torch"])
def test_ltc_fast_paths_equal_reference_and_gradients(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "torch":
        monkeypatch.setattr(_ckernel, "func", lambda name, dtype: None)
    elif _ckernel.lib() is None:
        pytest.skip("no C compiler: the pure-torch path is tested instead")
    w = tiny()
    m = LTC(w, ode_unfolds=3, seed=0).double()
    x, h, ts = data(w)

    def run(fused: bool):
        m.fused = fused
        m.zero_grad()
        xx, hh, tt = (t.clone().requires_grad_() for t in (x, h, ts))
        ys, hl = m(xx, hh, tt, return_states=True)
        y, _ = m(xx, hh, tt)
        ((ys ** 2).sum() + y.sum() + hl.sum()).backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        return ys.detach(), grads, xx.grad, hh.grad, tt.grad

    fast, ref = run(True), run(False)
    assert torch.allclose(fast[0], ref[0], atol=1e-12)
    for n in ref[1]:
        assert torch.allclose(fast[1][n], ref[1][n], atol=1e-10), n
    for a, b in zip(fast[2:], ref[2:]):
        assert torch.allclose(a, b, atol=1e-10)
    m.fused = True
    assert torch.autograd.gradcheck(
        lambda a, b, c: m(a, b, c, return_states=True)[0],
        (x[:2, :2].clone().requires_grad_(), h[:2].clone().requires_grad_(),
         ts[:2, :2].clone().requires_grad_()))


def test_ltc_float32_and_step_match_sequence() -> None:
    w = Wiring.ncp(seed=2)
    m = LTC(w, seed=1)
    x, h, ts = data(w, B=4, T=5, dtype=torch.float32)
    with torch.no_grad():
        ys, hl = m(x, h, ts, return_states=True)
        m.fused = False
        ref, _ = m(x, h, ts, return_states=True)
        m.fused = True
        v = h
        for t in range(x.shape[1]):
            y, v = m.step(x[:, t], v, ts[:, t])
            assert torch.allclose(v, ys[:, t], atol=1e-5)
        y1, v1 = m.step(x[:1, 0], h[:1], 0.7)  # scalar-dt fast path
        y2, v2 = m.step_exportable(x[:1, 0], h[:1], torch.full((1, 1), 0.7))
    assert (ys - ref).abs().max() < 1e-5
    assert torch.allclose(v1, v2, atol=1e-5) and torch.allclose(y1, y2, atol=1e-5)
    assert y.shape == (4, 1)


def test_ltc_per_sample_timespans_batch_gt_1() -> None:
    """ncps #81: per-sample (B,T) elapsed times crash there; here each sample uses its own."""
    w = tiny()
    m = LTC(w, seed=0).double()
    x, h, ts = data(w, B=3, T=4)
    with torch.no_grad():
        y, _ = m(x, h, ts)
        for b in range(3):
            yb, _ = m(x[b:b + 1], h[b:b + 1], ts[b:b + 1])
            assert torch.allclose(y[b:b + 1], yb, atol=1e-12)
        y1, _ = m(x, h, torch.ones(3, 4, dtype=D64))
        y0, _ = m(x, h)
        assert torch.allclose(y1, y0) and not torch.allclose(y, y0)


def test_ltc_states_bounded_and_tau_eff() -> None:
    w = Wiring.ncp(seed=4)
    m = LTC(w, seed=4).double()
    g = torch.Generator().manual_seed(1)
    x = 10 * torch.randn(2, 30, 32, generator=g, dtype=D64)
    ts = torch.rand(2, 30, generator=g, dtype=D64) * 5 + 0.01
    with torch.no_grad():
        s, _ = m(x, None, ts, return_states=True)
        lo = min(-1.0, float(m.vleak.min()))
        hi = max(1.0, float(m.vleak.max()))
        assert s.min() >= lo - 1e-9 and s.max() <= hi + 1e-9  # convex combination of reversal potentials
        tau = m.tau_eff(x, None, ts)
    assert tau.shape == (2, 30, 19) and (tau > 0).all()
    cm, gl = F.softplus(m.cm.detach()), F.softplus(m.gleak.detach())
    assert (tau <= cm / gl + 1e-12).all()
    # independent check at one (b, t, neuron): c_m / (g_leak + active sensory + recurrent conductance)
    b, t, i = 1, 7, w.groups["command"][0]
    xm = x[b, t] * m.input_w + m.input_b
    cond = gl[i].clone()
    for e in range(len(m.sensory_src)):
        if m.sensory_dst[e] == i:
            k = m.sensory_src[e]
            cond += F.softplus(m.sensory_w[e]) * torch.sigmoid(m.sensory_sigma[e] * (xm[k] - m.sensory_mu[e]))
    for e in range(len(m.src)):
        if m.dst[e] == i:
            cond += F.softplus(m.w[e]) * torch.sigmoid(m.sigma[e] * (s[b, t, m.src[e]] - m.mu[e]))
    assert torch.isclose(tau[b, t, i], cm[i] / cond, atol=1e-12)


# ----------------------------------------------------------------------------- CfC
def cfc_loop_reference(m: CfC, x: torch.Tensor, h: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Wired CfC as specified (not as implemented): per neuron, per head, only the wiring's
    synapses plus the neuron's own previous state; earlier layers read after their update."""
    w = m.wiring
    pos = {int(n): p for p, n in enumerate(m.perm.tolist())}  # wiring index → internal position
    layer_of = w.layer_of()
    Wx, Wn, Wo, bias = (t.detach() for t in (m.weight_x, m.weight_new, m.weight_old, m.bias))
    B, T, _ = x.shape
    out = torch.zeros(B, T, w.units, dtype=x.dtype)
    for b in range(B):
        old = h[b].clone()
        for t in range(T):
            new = torch.full((w.units,), float("nan"), dtype=x.dtype)
            for layer in w.layers:
                for i in layer:
                    z = []
                    for q in range(m.heads):
                        k_l = layer_of[i]
                        col = m._col(k_l, q).start + (pos[i] - m.layer_offsets[k_l])
                        acc = bias[col].clone()
                        for k in range(w.input_dim):
                            if w.sensory_adjacency[k, i]:
                                acc += x[b, t, k] * Wx[k, col]
                        for j in range(w.units):
                            if w.adjacency[j, i] and layer_of[j] < layer_of[i]:
                                acc += new[j] * Wn[pos[j], col]
                            elif w.adjacency[j, i] or j == i:
                                acc += old[j] * Wo[pos[j], col]
                        z.append(acc)
                    d = ts[b, t]
                    if m.mode == "pure":
                        A, wt = m.A.detach()[pos[i]], m.w_tau.detach()[pos[i]]
                        new[i] = -A * torch.exp(-d * (wt.abs() + z[0].abs())) * z[0] + A
                    else:
                        f1, f2 = torch.tanh(z[0]), torch.tanh(z[1])
                        s = torch.sigmoid(z[2] * d + z[3])
                        new[i] = f1 + s * f2 if m.mode == "no_gate" else f1 * (1 - s) + s * f2
            out[b, t] = new
            old = new
    return out


@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
def test_wired_cfc_matches_per_neuron_reference(mode: str) -> None:
    w = tiny(seed=3)
    assert np.abs(w.adjacency[np.ix_(w.groups["command"], w.groups["command"])]).sum() == 3
    m = CfC(w, mode=mode, seed=0).double()
    with torch.no_grad():  # fill masked-out weights too: a mask that leaks would change the output
        for p in (m.weight_x, m.weight_new, m.weight_old, m.bias):
            p.copy_(torch.randn_like(p))
        if mode == "pure":
            m.w_tau.copy_(torch.randn_like(m.w_tau))
            m.A.copy_(torch.randn_like(m.A))
    x, h, ts = data(w, B=2, T=3)
    with torch.no_grad():
        ys, hl = m(x, h, ts, return_states=True)
        y, _ = m(x, h, ts)
    ref = cfc_loop_reference(m, x, h, ts)
    assert torch.allclose(ys, ref, atol=1e-12)
    assert torch.allclose(y, ref[..., : w.output_dim], atol=1e-12)
    assert torch.allclose(hl, ref[:, -1], atol=1e-12)


def test_wired_cfc_command_recurrence_is_honoured() -> None:
    w = tiny(seed=3)
    m = CfC(w, seed=0).double()
    x, h, ts = data(w, B=1, T=1)
    cmd = w.groups["command"]
    for j in cmd:
        h2 = h.clone()
        h2[0, j] += 0.5
        with torch.no_grad():
            d = (m(x, h2, ts, return_states=True)[0] - m(x, h, ts, return_states=True)[0])[0, 0]
        for i in cmd:
            connected = bool(w.adjacency[j, i]) or i == j
            assert (abs(float(d[i])) > 1e-9) == connected, (j, i)


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
def test_cfc_c_path_equals_torch_path_with_gradients(mode: str, compat: bool) -> None:
    if _ckernel.lib() is None:
        pytest.skip("no C compiler")
    w = tiny()
    m = CfC(w, mode=mode, ncps_compat=compat, seed=0).double()
    if mode == "pure":
        with torch.no_grad():
            m.w_tau.normal_()
            m.A.normal_()
    x, h, ts = data(w)

    def run(fused: bool):
        m.fused = fused
        m.zero_grad()
        xx, hh, tt = (t.clone().requires_grad_() for t in (x, h, ts))
        ys, hl = m(xx, hh, tt, return_states=True)
        ((ys ** 2).sum() + hl.sum()).backward()
        return ys.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}, xx.grad, hh.grad, tt.grad

    fast, ref = run(True), run(False)
    assert torch.allclose(fast[0], ref[0], atol=1e-12)
    for n in ref[1]:
        assert torch.allclose(fast[1][n], ref[1][n], atol=1e-10), n
    for a, b in zip(fast[2:], ref[2:]):
        assert torch.allclose(a, b, atol=1e-10)
    m.fused = True
    assert torch.autograd.gradcheck(
        lambda a, b, c: m(a, b, c, return_states=True)[0],
        (x[:2, :2].clone().requires_grad_(), h[:2].clone().requires_grad_(),
         ts[:2, :2].clone().requires_grad_()))


@pytest.mark.parametrize("mode", ["default", "pure"])
def test_cfc_step_matches_sequence(mode: str) -> None:
    w = Wiring.ncp(seed=5)
    m = CfC(w, mode=mode, seed=2)
    x, h, ts = data(w, B=3, T=4, dtype=torch.float32)
    with torch.no_grad():
        ys, _ = m(x, h, ts, return_states=True)
        v = h
        for t in range(4):
            y, v = m.step(x[:, t], v, ts[:, t])
            assert torch.allclose(v, ys[:, t], atol=1e-5)
            assert torch.allclose(y, ys[:, t, :1], atol=1e-5)
        a = m.step(x[:1, 0], h[:1], 0.5)
        b = m.step_exportable(x[:1, 0], h[:1], torch.full((1, 1), 0.5))
    assert all(torch.allclose(p, q, atol=1e-5) for p, q in zip(a, b))


def test_plain_int_unit_forms() -> None:
    x = torch.randn(2, 3, 5)
    for cls in (LTC, CfC):
        m = cls(8, input_size=5)
        y, h = m(x)
        assert y.shape == (2, 3, 8) and h.shape == (2, 8)
        with pytest.raises(ValueError, match="input_size"):
            cls(8)
    assert CfC(8, input_size=5, backbone_layers=0)(x)[0].shape == (2, 3, 8)


@pytest.mark.parametrize("cls", [LTC, CfC])
def test_torch_fallback_without_compiler(cls, no_ckernel: None) -> None:
    w = tiny()
    m = cls(w, seed=0)
    x, h, ts = data(w, dtype=torch.float32)
    y, hl = m(x, h, ts)
    y.sum().backward()
    with torch.no_grad():
        y2, _ = m.step(x[:, 0], h, 0.5)
    assert y.shape == (3, 4, 2) and y2.shape == (3, 2) and torch.isfinite(y).all()


@pytest.mark.parametrize("cls", [LTC, CfC])
def test_bad_input_raises(cls) -> None:
    w = tiny()
    m = cls(w)
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="5"):
        m(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="batch, time"):
        m(torch.randn(3, 5))
    with pytest.raises(ValueError, match="hx must have shape"):
        m(x, torch.zeros(2, w.units + 1))
    with pytest.raises(ValueError, match="hx must have shape"):
        m(x, torch.zeros(w.units))
    with pytest.raises(ValueError, match="timespans must have shape"):
        m(x, None, torch.ones(2, 1))  # no silent broadcasting
    with pytest.raises(ValueError, match="timespans must have shape"):
        m(x, None, torch.ones(3))
    with pytest.raises(ValueError, match="> 0"):
        m(x, None, -torch.ones(2, 3))
    with pytest.raises(ValueError, match="finite"):
        m(x, None, torch.full((2, 3), float("nan")))
    with torch.no_grad():
        with pytest.raises(ValueError, match="dt must be"):
            m.step(x[:, 0], None, -1.0)
        with pytest.raises(ValueError, match="dt must be"):
            m.step(x[:, 0], None, float("nan"))
        with pytest.raises(ValueError, match="h must have shape"):
            m.step(x[:, 0], torch.zeros(3, w.units))
        with pytest.raises(ValueError, match="x must be"):
            m.step(torch.randn(2, 4))
        with pytest.raises(ValueError, match="dt must have shape"):
            m.step(x[:, 0], None, torch.ones(3))


def test_backbone_dropout_applies_with_one_layer() -> None:
    """ncps 1.0.1 ignores backbone_dropout with a single backbone layer; we do not."""
    torch.manual_seed(0)
    m = CfC(8, input_size=5, backbone_layers=1, backbone_dropout=0.5)
    x = torch.randn(2, 3, 5)
    m.train()
    assert not torch.allclose(m(x)[0], m(x)[0])
    m.eval()
    assert torch.allclose(m(x)[0], m(x)[0])


# ------------------------------------------------------- 16-lane kernels (training batches)
def _spy_lanes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record which C kernels run with which block width."""
    calls: list[tuple[str, int]] = []
    real = _ckernel.func

    def spy(name, dtype, lanes=_ckernel.LANES):
        calls.append((name, lanes))
        return real(name, dtype, lanes)

    monkeypatch.setattr(_ckernel, "func", spy)
    return calls


def _grads_fast_vs_reference(m, x, h, ts, loss):
    def run(fused: bool):
        m.fused = fused
        m.zero_grad()
        xx, hh, tt = (t.clone().requires_grad_() for t in (x, h, ts))
        ys, hl = m(xx, hh, tt, return_states=True)
        y, _ = m(xx, hh, tt)  # the motor outputs (output map) too
        loss(ys, hl, y).backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        return ys.detach(), grads, (xx.grad, hh.grad, tt.grad)

    return run(True), run(False)


B_LANES = 19  # one full 16-lane block and a padded partial block of 3


def test_ltc_16_lane_kernels_equal_reference_output_and_every_gradient(monkeypatch) -> None:
    if _ckernel.lib() is None:
        pytest.skip("no C compiler: the pure-torch path is tested instead")
    calls = _spy_lanes(monkeypatch)
    w = tiny()
    m = LTC(w, ode_unfolds=3, seed=0).double()
    with torch.no_grad():  # input/output maps away from identity so their gradients matter
        m.input_w.normal_()
        m.input_b.normal_()
    x, h, ts = data(w, B=B_LANES, T=5, seed=3)
    weights = torch.randn(B_LANES, 5, w.units, generator=torch.Generator().manual_seed(4), dtype=D64)
    fast, ref = _grads_fast_vs_reference(
        m, x, h, ts, lambda ys, hl, y: (ys * weights).sum() + (hl ** 2).sum() + (y ** 3).sum())
    assert ("ltc_fwd", _ckernel.LANES) in calls and ("ltc_bwd", _ckernel.LANES) in calls
    assert torch.allclose(fast[0], ref[0], atol=1e-12)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert set(fast[1]) == set(ref[1]) == names  # every parameter gets a gradient
    for n in names:
        assert torch.allclose(fast[1][n], ref[1][n], atol=1e-10, rtol=1e-9), n
        assert float(ref[1][n].abs().max()) > 0, n
    for a, b in zip(fast[2], ref[2]):
        assert torch.allclose(a, b, atol=1e-10)
    # the 16-lane step kernel (closed loop with many episodes) equals the sequence
    with torch.no_grad():
        v = h
        for t in range(5):
            y, v = m.step(x[:, t], v, ts[:, t])
            assert torch.allclose(v, fast[0][:, t], atol=1e-12)


@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
def test_cfc_16_lane_kernels_equal_reference_output_and_every_gradient(mode, monkeypatch) -> None:
    if _ckernel.lib() is None:
        pytest.skip("no C compiler")
    calls = _spy_lanes(monkeypatch)
    w = tiny()
    m = CfC(w, mode=mode, seed=0).double()
    if mode == "pure":
        with torch.no_grad():
            m.w_tau.normal_()
            m.A.normal_()
    x, h, ts = data(w, B=B_LANES, T=5, seed=5)
    weights = torch.randn(B_LANES, 5, w.units, generator=torch.Generator().manual_seed(6), dtype=D64)
    fast, ref = _grads_fast_vs_reference(
        m, x, h, ts, lambda ys, hl, y: (ys * weights).sum() + (hl ** 2).sum() + (y ** 3).sum())
    assert ("cfc_fwd", _ckernel.LANES) in calls and ("cfc_bwd", _ckernel.LANES) in calls
    assert torch.allclose(fast[0], ref[0], atol=1e-12)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert set(fast[1]) == set(ref[1]) == names
    for n in names:
        assert torch.allclose(fast[1][n], ref[1][n], atol=1e-10, rtol=1e-9), n
        assert float(ref[1][n].abs().max()) > 0, n
    for a, b in zip(fast[2], ref[2]):
        assert torch.allclose(a, b, atol=1e-10)
    with torch.no_grad():
        v = h
        for t in range(5):
            y, v = m.step(x[:, t], v, ts[:, t])
            assert torch.allclose(v, fast[0][:, t], atol=1e-12)


# ------------------------------------------------------- non-finite input (issue 12 item 11)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("cls", [LTC, CfC])
def test_nonfinite_input_is_refused_on_every_path(cls, value) -> None:
    """One NaN feature used to leave 13/19 LTC or 19/19 CfC neurons NaN for good, and CfC turned
    ±inf into NaN (inf × a masked 0 weight); now every path refuses it and says where."""
    w = Wiring.ncp(seed=0)
    m = cls(w, seed=0)
    x = torch.randn(3, 4, 32)
    x[2, 1, 7] = value
    for fused in (True, False):
        m.fused = fused
        with pytest.raises(ValueError, match=r"x holds NaN/inf \(1 value\(s\), first at batch 2, time 1, feature 7\)"):
            m(x)
        with torch.no_grad(), pytest.raises(ValueError, match="x holds NaN/inf .*batch 2, feature 7"):
            m.step(x[:, 1], None, 0.5)  # the C step (fused) or the PyTorch step
        with pytest.raises(ValueError, match="x holds NaN/inf .*batch 2, feature 7"):
            m.step(x[:, 1], None, torch.full((3,), 0.5))  # with autograd on: the PyTorch step
    m.fused = True
    h = torch.zeros(3, w.units)
    h[0, 4] = value
    with pytest.raises(ValueError, match="hx holds NaN/inf"):
        m(x[:, :1].nan_to_num(0.0), h)
    with torch.no_grad(), pytest.raises(ValueError, match="h holds NaN/inf .*batch 0, neuron 4"):
        m.step(torch.zeros(3, 32), h, 0.5)
    with torch.no_grad():  # large but finite input stays finite
        y, hl = m(torch.full((2, 3, 32), 1e30))
    assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(hl).all())
