"""policies/controls.py: the wiring, smoothing and time controls of the paper's comparison."""

import math

import numpy as np
import pytest
import torch

from policies.checkpoint import load_policy, save_checkpoint
from policies.controls import (
    effective_parameter_count,
    ema_alpha,
    layered_full_wiring,
    layered_random_wiring,
    parameter_table,
    steering_rate,
)
from policies.factory import POLICY_NAMES, build_policy
from policies.wiring import Wiring

LAYERED = ("ncp-ltc", "ncp-cfc", "ltc-random", "ltc-full", "cfc-random", "cfc-full",
           "ncp-ltc-timeblind")
NEW = ("ltc-random", "ltc-full", "cfc-random", "cfc-full", "cnn-ema", "lstm-ema",
       "ncp-ltc-timeblind")
HW = (78, 200)


def _frames(b: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, *HW, 3), dtype=torch.uint8, generator=g)


def test_every_control_is_registered():
    for name in NEW:
        assert name in POLICY_NAMES


def _blocks(w: Wiring) -> dict[str, int]:
    g = w.groups
    a, s = np.abs(w.adjacency), np.abs(w.sensory_adjacency)
    return {"si": int(s[:, g["inter"]].sum()), "s_other": int(s.sum() - s[:, g["inter"]].sum()),
            "ic": int(a[np.ix_(g["inter"], g["command"])].sum()),
            "cc": int(a[np.ix_(g["command"], g["command"])].sum()),
            "cm": int(a[np.ix_(g["command"], g["motor"])].sum()), "all": int(a.sum())}


def test_random_layered_wiring_keeps_the_ncp_layers_and_block_counts():
    ncp = Wiring.ncp(input_dim=32, seed=3)
    rnd = layered_random_wiring(input_dim=32, seed=3)
    assert rnd.layers == ncp.layers and rnd.groups == ncp.groups
    assert _blocks(rnd) == _blocks(ncp) == {"si": 192, "s_other": 0, "ic": 48, "cc": 6, "cm": 6,
                                            "all": 60}
    assert rnd.synapse_count == ncp.synapse_count and rnd.kind == "layered_random"
    assert not np.array_equal(np.abs(rnd.adjacency), np.abs(ncp.adjacency))  # another graph
    assert layered_random_wiring(input_dim=32, seed=3) == rnd  # seeded
    assert layered_random_wiring(input_dim=32, seed=4) != rnd


def test_full_layered_wiring_is_dense_between_layers_with_the_ncp_recurrence():
    ncp = Wiring.ncp(input_dim=32, seed=1)
    full = layered_full_wiring(input_dim=32, seed=1)
    g = full.groups
    assert full.layers == ncp.layers
    assert _blocks(full) == {"si": 32 * 12, "s_other": 0, "ic": 12 * 6, "cc": 6, "cm": 6,
                             "all": 72 + 6 + 6}
    cc = np.ix_(g["command"], g["command"])
    assert np.array_equal(full.adjacency[cc], ncp.adjacency[cc])


def test_parameter_counts_effective_and_storage():
    t = {n: parameter_table(build_policy(n)) for n in POLICY_NAMES}
    cnn = 79420
    assert all(r["cnn"] == cnn for r in t.values())
    # LTC stores only live synapses: effective == storage; 4 per synapse + 3 per neuron +
    # 2 per input (affine input map) + 2 (affine output map)
    ltc = 4 * (60 + 192) + 3 * 19 + 2 * 32 + 2
    assert t["ncp-ltc"]["core_effective"] == t["ncp-ltc"]["core_storage"] == ltc == 1131
    assert t["ltc-random"]["core_effective"] == ltc
    assert t["ltc-full"]["core_effective"] == 4 * (84 + 384) + 3 * 19 + 2 * 32 + 2
    # CfC: dense storage (32 + 19 + 19) x 4·19 + 4·19 biases, whatever the wiring
    storage = (32 + 19 + 19) * 76 + 76
    for n in ("ncp-cfc", "ncp-full", "cfc-random", "cfc-full"):
        assert t[n]["core_storage"] == storage == 5396
    assert t["ncp-cfc"]["core_effective"] == 1148  # issue 16: 1,148 vs ncp-full's 3,952
    assert t["ncp-full"]["core_effective"] == 3952
    assert t["ncp-cfc"]["effective"] == cnn + 1148 + 2
    for n in ("lstm", "gru", "cnn", "cnn-ema", "lstm-ema"):
        assert t[n]["effective"] == t[n]["storage"]
    assert t["cnn-ema"]["storage"] == t["cnn"]["storage"]  # the filter has no weights
    assert t["lstm-ema"]["storage"] == t["lstm"]["storage"]
    p = build_policy("cfc-full")
    assert effective_parameter_count(p) == t["cfc-full"]["effective"] < p.parameter_count()


@pytest.mark.parametrize("name", LAYERED)
def test_inter_perturbation_reaches_the_motor_within_one_frame(name):
    core = build_policy(name, seed=2).core
    w = core.wiring
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 32, generator=g)
    h0 = torch.randn(1, 19, generator=g) * 0.3
    with torch.no_grad():
        base = core(x, h0)[0][0, 0]
        for i in w.groups["inter"]:
            h1 = h0.clone()
            h1[0, i] += 0.5
            moved = (core(x, h1)[0][0, 0] - base).abs().max().item()
            assert moved > 1e-7, f"{name}: inter neuron {i} does not reach the motor in one frame"


def test_the_one_layer_v1_control_does_not_propagate_within_a_frame():
    """The confound the layered controls remove: ncp-random's CfC reads old states only."""
    core = build_policy("ncp-random", seed=2).core
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 32, generator=g)
    h0 = torch.randn(1, 19, generator=g) * 0.3
    silent = 0
    with torch.no_grad():
        base = core(x, h0)[0][0, 0]
        for i in core.wiring.groups["inter"]:
            h1 = h0.clone()
            h1[0, i] += 0.5
            silent += int((core(x, h1)[0][0, 0] - base).abs().max().item() < 1e-9)
    assert silent > 0


@pytest.mark.parametrize("name", ["cnn-ema", "lstm-ema"])
def test_ema_step_equals_sequence_forward(name):
    p = build_policy(name, seed=1, ema_tau_s=0.25).eval()
    frames = _frames(2, 6)
    dt = torch.tensor([[0.1, 0.1, 0.2, 0.05, 0.3, 0.1], [0.1, 0.15, 0.1, 0.1, 0.4, 0.1]])
    with torch.no_grad():
        seq, h_seq = p(frames, None, dt)
        h = None
        steps = []
        for k in range(6):
            s, h = p.step(frames[:, k], h, dt[:, k])
            steps.append(s)
    assert torch.allclose(torch.stack(steps, 1), seq, atol=1e-5)
    assert torch.allclose(h, h_seq, atol=1e-5)
    assert h.shape == (2, p.state_size)


def test_ema_is_the_base_policy_filtered_with_the_true_dt():
    tau = 0.3
    ema = build_policy("cnn-ema", seed=4, ema_tau_s=tau).eval()
    cnn = build_policy("cnn", seed=4).eval()
    # same weights as the unsmoothed policy of the same seed: a trained cnn run can be smoothed
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), cnn.state_dict().values()))
    frames = _frames(1, 4, seed=5)
    dt = torch.tensor([[0.1, 0.1, 0.5, 0.05]])
    with torch.no_grad():
        raw = cnn(frames)[0][0].double().numpy()
        got = ema(frames, None, dt)[0][0].double().numpy()
    want, y = [], 0.0  # the filter starts at 0, like every recurrent state
    for k in range(4):
        y = y + (1.0 - math.exp(-float(dt[0, k]) / tau)) * (raw[k] - y)
        want.append(y)
    assert np.allclose(got, want, atol=1e-6)
    assert ema_alpha(0.1, tau) == pytest.approx(1 - math.exp(-1 / 3))
    # a long gap moves the output further towards the raw command than a short one
    with torch.no_grad():
        short = ema(frames[:, :1], None, torch.tensor([[0.01]]))[0][0, 0]
        long = ema(frames[:, :1], None, torch.tensor([[2.0]]))[0][0, 0]
    assert abs(float(long) - raw[0]) < abs(float(short) - raw[0])


def test_ema_rejects_bad_tau_and_bad_state():
    with pytest.raises(ValueError, match="ema_tau_s"):
        build_policy("cnn-ema", ema_tau_s=0.0)
    p = build_policy("lstm-ema")
    with pytest.raises(ValueError, match="129"):
        p.step(_frames(1, 1)[:, 0], torch.zeros(1, 64), 0.1)


def test_time_blind_ltc_ignores_dt_and_the_true_ltc_does_not():
    blind = build_policy("ncp-ltc-timeblind", seed=0).eval()
    ltc = build_policy("ncp-ltc", seed=0).eval()
    assert not blind.uses_time and ltc.uses_time
    frames = _frames(1, 5, seed=1)
    short, long = torch.full((1, 5), 0.05), torch.full((1, 5), 0.4)
    with torch.no_grad():
        b1, b2 = blind(frames, None, short)[0], blind(frames, None, long)[0]
        nominal = blind(frames)[0]
        l1, l2 = ltc(frames, None, short)[0], ltc(frames, None, long)[0]
        s1 = blind.step(frames[:, 0], None, 0.05)[0]
        s2 = blind.step(frames[:, 0], None, 0.4)[0]
    assert torch.equal(b1, b2) and torch.equal(b1, nominal) and torch.equal(s1, s2)
    assert (l1 - l2).abs().max() > 1e-4
    assert torch.allclose(nominal, ltc(frames)[0].detach(), atol=1e-6)  # same cell at nominal Δt


@pytest.mark.parametrize("name", NEW)
def test_checkpoints_round_trip(tmp_path, name):
    p = build_policy(name, seed=7).eval()
    save_checkpoint(tmp_path / name, p, {})
    q, cfg = load_policy(tmp_path / name)
    assert cfg["policy"] == name and type(q) is type(p)
    frames = _frames(1, 3, seed=2)
    dt = torch.tensor([[0.1, 0.2, 0.1]])
    with torch.no_grad():
        assert torch.equal(p(frames, None, dt)[0], q(frames, None, dt)[0])
    assert q.uses_time == p.uses_time and getattr(q, "ema_tau_s", None) == getattr(p, "ema_tau_s", None)
    if hasattr(p.core, "wiring"):
        assert q.core.wiring == p.core.wiring


def test_steering_rate():
    assert steering_rate(np.array([0.0, 0.1, -0.1]), 0.1) == pytest.approx((1.0 + 2.0) / 2)
    assert steering_rate(np.array([0.0, 0.2]), np.array([0.1, 0.5])) == pytest.approx(0.4)
    assert steering_rate(np.array([0.3]), 0.1) == 0.0
