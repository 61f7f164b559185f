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
