"""`policies.from_ncps`: same function as ncps 1.0.1 (max abs diff <= 1e-5, float32)."""

from __future__ import annotations

import pytest
import torch

nt = pytest.importorskip("ncps.torch")
nw = pytest.importorskip("ncps.wirings")

from policies import LTC, CfC, from_ncps  # noqa: E402
from policies.ncps_compat import NcpsModel  # noqa: E402

TOL = 1e-5

WIRINGS = {
    "paper-ncp": lambda: nw.NCP(12, 6, 1, 6, 4, 6, 6, seed=22222),
    "autoncp-10-3": lambda: nw.AutoNCP(10, 3, seed=7),
    "autoncp-16-2": lambda: nw.AutoNCP(16, 2, sparsity_level=0.3, seed=3),
    "full-7-2": lambda: nw.FullyConnected(7, 2),
    "random-9-2": lambda: nw.Random(9, 2, sparsity_level=0.5, random_seed=5),
    "int-6": lambda: 6,
}


def inputs(F: int, N: int, B: int = 3, T: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, F, generator=g) * 1.5, torch.randn(B, N, generator=g) * 0.5)


def maxdiff(a, b) -> float:
    if isinstance(a, tuple):
        return max(maxdiff(p, q) for p, q in zip(a, b))
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", list(WIRINGS))
def test_ltc_parity(name: str) -> None:
    torch.manual_seed(1)
    F = 32 if name == "paper-ncp" else 7
    theirs = nt.LTC(F, WIRINGS[name]())
    with torch.no_grad():  # move parameters away from their init so every one matters
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    ours = from_ncps(theirs)
    assert isinstance(ours, LTC)
    x, h = inputs(F, theirs.state_size)
    with torch.no_grad():
        assert maxdiff(theirs(x, h), ours(x, h)) <= TOL
        assert maxdiff(theirs(x), ours(x)) <= TOL
        ts = torch.rand(1, 6) + 0.2  # ncps handles per-step times only for batch 1 (its #81)
        assert maxdiff(theirs(x[:1], h[:1], ts), ours(x[:1], h[:1], ts)) <= TOL
    # also the same gradients with respect to the inputs
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    theirs(xa, h)[0].sum().backward()
    ours(xb, h)[0].sum().backward()
    assert maxdiff(xa.grad, xb.grad) <= 1e-4


@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
@pytest.mark.parametrize("name", list(WIRINGS))
def test_cfc_parity(name: str, mode: str) -> None:
    torch.manual_seed(2)
    F = 32 if name == "paper-ncp" else 7
    theirs = nt.CfC(F, WIRINGS[name](), mode=mode)
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    ours = from_ncps(theirs)
    assert isinstance(ours, CfC)
    x, h = inputs(F, theirs.state_size)
    with torch.no_grad():
        assert maxdiff(theirs(x, h), ours(x, h)) <= TOL
        ts = torch.rand(1, 6) + 0.2
        assert maxdiff(theirs(x[:1], h[:1], ts), ours(x[:1], h[:1], ts)) <= TOL


def test_cfc_backbone_variants() -> None:
    torch.manual_seed(3)
    for kw in ({"backbone_layers": 2, "backbone_units": 16, "activation": "silu"},
               {"backbone_layers": 0}, {"mode": "pure", "backbone_units": 8},
               {"activation": "relu", "backbone_units": 12}):
        theirs = nt.CfC(7, 10, **kw)
        ours = from_ncps(theirs)
        x, h = inputs(7, 10)
        with torch.no_grad():
            assert maxdiff(theirs(x, h), ours(x, h)) <= TOL, kw


def test_options_mixed_memory_projection_layout() -> None:
    torch.manual_seed(4)
    x, h = inputs(7, 13)
    c = torch.randn_like(h) * 0.3
    cases = [
        nt.CfC(7, nw.AutoNCP(13, 3, seed=1), mixed_memory=True),
        nt.LTC(7, nw.AutoNCP(13, 3, seed=1), mixed_memory=True),
        nt.CfC(7, nw.AutoNCP(13, 3, seed=1), proj_size=4, return_sequences=False),
        nt.LTC(7, nw.AutoNCP(13, 3, seed=1), return_sequences=False),
        nt.CfC(7, 13, proj_size=2),
    ]
    for theirs in cases:
        ours = from_ncps(theirs)
        assert isinstance(ours, NcpsModel)
        hx = (h, c) if theirs.use_mixed else h
        with torch.no_grad():
            assert maxdiff(theirs(x, hx), ours(x, hx)) <= TOL
    tm = nt.LTC(7, nw.AutoNCP(13, 3, seed=1), batch_first=False)
    ours = from_ncps(tm)
    with torch.no_grad():
        xt = x.transpose(0, 1)
        assert maxdiff(tm(xt, h), ours(xt, h)) <= TOL
        assert maxdiff(tm(x[0], h[0]), ours(x[0], h[0])) <= TOL  # unbatched (T, F)


def test_per_sample_times_work_where_ncps_crashes() -> None:
    theirs = nt.LTC(7, nw.AutoNCP(13, 3, seed=1))
    ours = from_ncps(theirs)
    x, h = inputs(7, 13, B=4)
    ts = torch.rand(4, 6) + 0.2
    with pytest.raises(RuntimeError):
        theirs(x, h, ts)
    with torch.no_grad():
        y, _ = ours(x, h, ts)
        for b in range(4):  # each sample equals ncps run on that sample alone
            yb, _ = theirs(x[b:b + 1], h[b:b + 1], ts[b:b + 1])
            assert maxdiff(y[b:b + 1], yb) <= TOL


def test_rejects_other_modules() -> None:
    with pytest.raises(ValueError, match="ncps.torch.LTC or ncps.torch.CfC"):
        from_ncps(torch.nn.LSTM(3, 4))


def test_wired_cfc_default_differs_from_ncps_by_design() -> None:
    """ncps #53: our default wired CfC honours the wiring; ncps_compat=True reproduces ncps."""
    theirs = nt.CfC(32, nw.NCP(12, 6, 1, 6, 4, 6, 6))
    ours = from_ncps(theirs)
    assert ours.ncps_compat
    ours_default = CfC(ours.wiring)
    assert int(ours_default.mask_old.sum()) < int(ours.mask_old.sum())  # sparse vs dense blocks


# ------------------------------------------------------------- parameter gradients
def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Float32 agreement relative to the gradient's scale (ncps and ours sum differently)."""
    assert a.shape == b.shape, what
    scale = 1.0 + float(b.abs().max())
    assert float((a - b).abs().max()) <= 2e-5 * scale, (what, float((a - b).abs().max()), scale)


def backprop(model, x, h, seed: int):
    y, hl = model(x, h)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    ((y * g).sum() + (hl ** 2).sum()).backward()


@pytest.mark.parametrize("batch", [3, 9])  # 9: our 16-lane training kernels
@pytest.mark.parametrize("name", ["paper-ncp", "autoncp-10-3", "full-7-2", "int-6"])
def test_ltc_parameter_gradients_match_ncps(name: str, batch: int) -> None:
    torch.manual_seed(5)
    F = 32 if name == "paper-ncp" else 7
    theirs = nt.LTC(F, WIRINGS[name]())
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    ours = from_ncps(theirs)
    x, h = inputs(F, theirs.state_size, B=batch)
    backprop(theirs, x, h, 1)
    backprop(ours, x, h, 1)
    p = theirs.rnn_cell._params
    checked = set()
    for n in ("gleak", "vleak", "cm", "input_w", "input_b", "output_w", "output_b"):
        if getattr(ours, n) is not None:
            close(getattr(ours, n).grad, p[n].grad, n)
            checked.add(n)
    for n in ("w", "mu", "sigma", "erev"):
        close(getattr(ours, n).grad, p[n].grad[ours.src, ours.dst], n)
        s = "sensory_" + n
        close(getattr(ours, s).grad, p[s].grad[ours.sensory_src, ours.sensory_dst], s)
        checked |= {n, s}
    assert checked == {n for n, q in ours.named_parameters() if q.requires_grad}


def cfc_grad_pairs(ours: CfC, theirs_cell, input_size: int):
    """(our gradient block, ncps's gradient block, name) for every parameter, as from_ncps maps them."""
    heads = ("ff1",) if ours.mode == "pure" else ("ff1", "ff2", "time_a", "time_b")
    pairs = []
    if ours.wired:
        for k, layer in enumerate(theirs_cell._layers):
            o, n = ours.layer_offsets[k], ours.layer_sizes[k]
            n_in = input_size if k == 0 else ours.layer_sizes[k - 1]
            for q, head in enumerate(heads):
                cols = ours._col(k, q)
                W = getattr(layer, head).weight.grad
                if k == 0:
                    pairs.append((ours.weight_x.grad[:, cols], W[:, :n_in].t(), f"x{k}{head}"))
                else:
                    po = ours.layer_offsets[k - 1]
                    pairs.append((ours.weight_new.grad[po:po + n_in, cols], W[:, :n_in].t(),
                                  f"new{k}{head}"))
                pairs.append((ours.weight_old.grad[o:o + n, cols], W[:, n_in:].t(), f"old{k}{head}"))
                pairs.append((ours.bias.grad[cols], getattr(layer, head).bias.grad, f"b{k}{head}"))
            if ours.mode == "pure":
                pairs.append((ours.w_tau.grad[o:o + n], layer.w_tau.grad.reshape(-1), f"wtau{k}"))
                pairs.append((ours.A.grad[o:o + n], layer.A.grad.reshape(-1), f"A{k}"))
        return pairs
    mine = [m for m in ours.backbone if isinstance(m, torch.nn.Linear)]
    their = [m for m in theirs_cell.backbone if isinstance(m, torch.nn.Linear)]
    for i, (a, b) in enumerate(zip(mine, their)):
        pairs += [(a.weight.grad, b.weight.grad, f"bb{i}w"), (a.bias.grad, b.bias.grad, f"bb{i}b")]
    pairs.append((ours.head.weight.grad,
                  torch.cat([getattr(theirs_cell, h).weight.grad for h in heads]), "head.w"))
    pairs.append((ours.head.bias.grad,
                  torch.cat([getattr(theirs_cell, h).bias.grad for h in heads]), "head.b"))
    if ours.mode == "pure":
        pairs += [(ours.w_tau.grad, theirs_cell.w_tau.grad.reshape(-1), "w_tau"),
                  (ours.A.grad, theirs_cell.A.grad.reshape(-1), "A")]
    return pairs


@pytest.mark.parametrize("batch", [3, 9])
@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
@pytest.mark.parametrize("name", ["paper-ncp", "autoncp-10-3", "plain-10"])
def test_cfc_parameter_gradients_match_ncps(name: str, mode: str, batch: int) -> None:
    torch.manual_seed(6)
    F = 32 if name == "paper-ncp" else 7
    wiring = 10 if name == "plain-10" else WIRINGS[name]()
    kw = {"backbone_units": 12} if name == "plain-10" else {}
    theirs = nt.CfC(F, wiring, mode=mode, **kw)
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    ours = from_ncps(theirs)
    x, h = inputs(F, theirs.state_size, B=batch)
    backprop(theirs, x, h, 2)
    backprop(ours, x, h, 2)
    pairs = cfc_grad_pairs(ours, theirs.rnn_cell, F)
    for a, b, what in pairs:
        close(a, b, what)
    # every ncps parameter was compared: as many trainable numbers on both sides
    n_theirs = sum(q.numel() for q in theirs.parameters() if q.requires_grad)
    assert sum(b.numel() for _, b, _ in pairs) == n_theirs
