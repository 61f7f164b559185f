"""Policies (CNN + core → steering), the baselines and the factory."""

import math

import numpy as np
import pytest
import torch

from policies.baselines import CTRNN
from policies.factory import POLICY_NAMES, REGISTRY, build_policy, rebuild
from policies.wiring import Wiring

HW = (24, 40)  # tiny frames keep the suite fast; the CNN's sizes follow the input
LIQUID = ("ncp-cfc", "ncp-ltc", "ncp-random", "ncp-full", "ltc-random", "ltc-full", "cfc-random",
          "cfc-full")
# policies whose output depends on the elapsed time (the EMA controls filter with the real Δt;
# the time-blind LTC integrates one nominal interval per frame whatever it is given)
USES_TIME = (*LIQUID, "ctrnn", "cnn-ema", "lstm-ema")


def frames(b, t, seed=0, hw=HW):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, *hw, 3), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def policies():
    return {n: build_policy(n, image_hw=HW, seed=3) for n in POLICY_NAMES}


def test_names_and_registry():
    assert POLICY_NAMES == ("ncp-cfc", "ncp-ltc", "lstm", "gru", "ctrnn", "cnn", "ncp-random", "ncp-full",
                            "ltc-random", "ltc-full", "cfc-random", "cfc-full", "cnn-ema", "lstm-ema",
                            "ncp-ltc-timeblind")  # the controls of issue 16 (policies/controls.py)
    assert tuple(REGISTRY) == POLICY_NAMES


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as exc:
        build_policy("transformer")
    for n in POLICY_NAMES:
        assert n in str(exc.value)


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="accepted"):
        build_policy("lstm", image_hw=HW, hidden=3)
    with pytest.raises(ValueError, match="ltc"):
        build_policy("ncp-cfc", image_hw=HW, core="ltc")


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_forward_shapes_bounds_and_step_parity(policies, name):
    p = policies[name]
    assert p.name == name
    x = frames(2, 4)
    ts = torch.tensor([[0.1, 0.12, 0.09, 0.25], [0.1, 0.1, 0.3, 0.05]])
    with torch.no_grad():
        steer, h = p(x, timespans=ts)
    assert steer.shape == (2, 4)
    assert bool(torch.isfinite(steer).all()) and float(steer.abs().max()) <= 1.0
    # closed-loop steps over the same frames give the same steering and final state
    hs = p.initial_state(2)
    outs = []
    for t in range(4):
        s, hs = p.step(x[:, t], hs, dt=ts[:, t])
        assert s.shape == (2,)
        outs.append(s)
    assert torch.allclose(torch.stack(outs, 1), steer, atol=1e-5)
    flat = lambda s: torch.cat([v.reshape(-1) for v in s]) if isinstance(s, tuple) else s.reshape(-1)  # noqa: E731
    assert torch.allclose(flat(hs), flat(h), atol=1e-5)
    # continuing from a carried state equals running the whole sequence at once
    s_a, h_a = p(x[:, :2], timespans=ts[:, :2])
    s_b, _ = p(x[:, 2:], h_a, timespans=ts[:, 2:])
    assert torch.allclose(torch.cat([s_a, s_b], 1), steer, atol=1e-5)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_neuron_states(policies, name):
    p = policies[name]
    states = p.neuron_states(frames(2, 3))
    assert states.shape == (2, 3, p.units)
    expected_units = {"lstm": 64, "gru": 64, "ctrnn": 64, "cnn": 10, "lstm-ema": 64,
                      "cnn-ema": 10}.get(name, 19)
    assert p.units == expected_units
    steer, _, st2 = p(frames(2, 3), return_states=True)
    assert torch.allclose(st2, states)
    assert torch.allclose(steer, p(frames(2, 3))[0])


def test_single_unbatched_numpy_frame_steps(policies):
    p = policies["ncp-cfc"]
    img = frames(1, 1)[0, 0].numpy()
    s, h = p.step(img, None, dt=0.1)
    assert s.shape == (1,) and h.shape == (1, 19)
    assert s.numpy().dtype == np.float32  # usable as the env's float32 (1,) action


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_elapsed_time_matters_only_for_continuous_time_cores(policies, name):
    p = policies[name]
    x = frames(1, 3)
    a, _ = p(x, timespans=torch.full((1, 3), 0.1))
    b, _ = p(x, timespans=torch.full((1, 3), 0.4))
    expect = name in USES_TIME
    assert p.uses_time == expect
    if expect:
        assert not torch.allclose(a, b, atol=1e-7)
    else:
        assert torch.equal(a, b)
    # no timespans = one nominal interval (time_unit_s)
    c, _ = p(x)
    d, _ = p(x, timespans=torch.full((1, 3), p.time_unit_s))
    assert torch.allclose(c, d, atol=1e-6)


def test_same_seed_same_weights_other_seed_differs():
    a = build_policy("ncp-random", image_hw=HW, seed=5)
    b = build_policy("ncp-random", image_hw=HW, seed=5)
    c = build_policy("ncp-random", image_hw=HW, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.core.wiring == b.core.wiring and a.core.wiring != c.core.wiring
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    # building does not disturb the caller's RNG stream
    torch.manual_seed(0)
    r1 = torch.rand(3)
    torch.manual_seed(0)
    build_policy("gru", image_hw=HW)
    assert torch.equal(torch.rand(3), r1)


def test_wirings_of_the_ablations(policies):
    ncp = policies["ncp-cfc"].core.wiring
    assert (ncp.units, ncp.input_dim, ncp.output_dim) == (19, 32, 1)
    assert ncp.kind == "ncp" and policies["ncp-ltc"].core.wiring == ncp
    rnd = policies["ncp-random"].core.wiring
    assert rnd.kind == "random" and rnd.units == 19
    assert rnd.synapse_count == ncp.synapse_count
    assert rnd.sensory_synapse_count == ncp.sensory_synapse_count
    full = policies["ncp-full"].core.wiring
    assert full.synapse_count == 19 * 19 and full.sensory_synapse_count == 32 * 19
    assert type(policies["ncp-random"].core).__name__ == "CfC"
    assert type(build_policy("ncp-full", image_hw=HW, core="ltc").core).__name__ == "LTC"


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_parameter_counts_and_spec_rebuild(policies, name):
    p = policies[name]
    br = p.parameter_breakdown()
    assert br["total"] == p.parameter_count() == sum(v.numel() for v in p.parameters())
    assert br["cnn"] + br["core"] + br["readout"] == br["total"]
    assert br["cnn"] == p.cnn.parameter_count()
    q = rebuild(p.spec)
    assert q.name == name and q.spec == p.spec
    assert {k: v.shape for k, v in q.state_dict().items()} == {k: v.shape for k, v in p.state_dict().items()}
    if name in LIQUID:
        assert q.core.wiring == p.core.wiring


def test_paper_size_cnn_in_every_policy():
    p = build_policy("lstm")
    assert p.cnn.parameter_count() == 79_420
    assert p.parameter_breakdown()["core"] == 4 * (64 * 32 + 64 * 64 + 2 * 64)


def test_lstm_state_is_a_tuple(policies):
    h = policies["lstm"].initial_state(3)
    assert isinstance(h, tuple) and [t.shape for t in h] == [(3, 64), (3, 64)]
    assert policies["cnn"].initial_state(2).shape == (2, 0)


def test_ctrnn_matches_a_plain_reference_and_stays_bounded():
    torch.manual_seed(0)
    m = CTRNN(5, units=4, unfolds=3)
    with torch.no_grad():
        m.tau_raw.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))
    x = torch.randn(2, 6, 5)
    ts = torch.rand(2, 6) * 2 + 0.1
    y, h = m(x, timespans=ts)
    W, b, U = m.input_map.weight, m.input_map.bias, m.recurrent.weight
    tau = torch.log1p(torch.exp(m.tau_raw)) + 0.05
    ref = torch.zeros(2, 4)
    for t in range(6):
        for i in range(2):
            d = float(ts[i, t]) / 3
            for _ in range(3):
                target = torch.tanh(W @ x[i, t] + b + U @ ref[i])
                ref[i] = ref[i] + (1 - torch.exp(-d / tau)) * (target - ref[i])
        assert torch.allclose(y[:, t], ref, atol=1e-5)
    # small steps: the explicit Euler step of τ dh/dt = −h + tanh(Wx + Uh + b)
    h0 = torch.randn(1, 4) * 0.3
    d = 1e-3
    y1, _ = m(x[:1, :1], h0, timespans=torch.full((1, 1), 3 * d))
    rhs = (-h0 + torch.tanh(x[0, 0] @ W.T + b + h0 @ U.T)) / tau
    assert torch.allclose((y1[0, 0] - h0[0]) / (3 * d), rhs[0], rtol=2e-2, atol=1e-3)
    # a very long gap (dropped frames) does not blow up
    with torch.no_grad():
        yl, _ = m(x * 10, timespans=torch.full((2, 6), 1e4))
    assert float(yl.abs().max()) <= 1.0


BAD_INPUTS = [
    (lambda p: p(frames(1, 2, hw=(24, 41))), "(B, T, 24, 40, 3)"),
    (lambda p: p(frames(1, 2)[0]), "(B, T, 24, 40, 3)"),
    (lambda p: p(frames(1, 2).to(torch.int16)), "int16"),
    (lambda p: p(frames(1, 2).float()), "(B, T, 3, 24, 40)"),
    (lambda p: p(frames(2, 3), timespans=torch.ones(2, 4)), "(2, 3)"),
    (lambda p: p(frames(2, 3), timespans=torch.ones(3)), "(2, 3)"),
    (lambda p: p(frames(1, 2), timespans=torch.tensor([[0.1, -0.1]])), "> 0"),
    (lambda p: p(frames(1, 2), timespans=torch.tensor([[0.1, math.nan]])), "finite"),
    (lambda p: p(frames(2, 2), hx=p.initial_state(3)), "(2, "),
    (lambda p: p.step(frames(1, 1)[0, 0, :10], None), "(B, 24, 40, 3)"),
    (lambda p: p.step(frames(1, 1)[0, 0], None, dt=torch.ones(3)), "(1,)"),
    (lambda p: p.step([[1, 2]], None), "numpy"),
]


@pytest.mark.parametrize("name", ["ncp-cfc", "lstm", "ctrnn"])
@pytest.mark.parametrize("case", range(len(BAD_INPUTS)))
def test_bad_input_raises_valueerror_naming_expectation(policies, name, case):
    fn, words = BAD_INPUTS[case]
    with pytest.raises(ValueError) as exc:
        fn(policies[name])
    assert words in str(exc.value)


def test_wiring_must_match_cnn_features():
    with pytest.raises(ValueError, match="input_dim=32"):
        build_policy("ncp-cfc", image_hw=HW, wiring=Wiring.ncp(input_dim=16))
    p = build_policy("ncp-cfc", image_hw=HW, wiring=Wiring.ncp(inter=6, command=4, sensory_fanout=3, inter_fanout=2, recurrent_command_synapses=2, motor_fanin=2, seed=2).to_dict())
    assert p.core.wiring.units == 11


def test_gradients_reach_cnn_and_core(policies):
    p = build_policy("ncp-ltc", image_hw=HW)
    steer, _ = p(frames(2, 3), timespans=torch.full((2, 3), 0.1))
    steer.pow(2).sum().backward()
    assert p.cnn.conv_layers[0].weight.grad.abs().sum() > 0
    assert all(q.grad is not None for q in p.core.parameters() if q.requires_grad)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_float_dt_and_tensor_dt_steps_agree(policies, name):
    p = policies[name]
    x = frames(1, 3, seed=4)
    dts = [0.15, 0.05, 0.3]
    steer, _ = p(x, timespans=torch.tensor([dts]))
    ha = hb = None
    for t, d in enumerate(dts):
        sa, ha = p.step(x[0, t], ha, dt=d)
        sb, hb = p.step(x[:, t], hb, dt=torch.tensor([d]))
        assert torch.allclose(sa, steer[:, t], atol=1e-5)
        assert torch.allclose(sb, steer[:, t], atol=1e-5)
    with pytest.raises(ValueError, match="> 0"):
        p.step(x[0, 0], None, dt=-0.1)
    s32, _ = p.step(x[0, 0], None, dt=np.float32(0.15))  # an env's numpy dt
    assert torch.allclose(s32, steer[:, 0], atol=1e-5)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_core_satisfies_the_core_protocol_and_one_step_function(policies, name):
    """Policy.step (fast paths) and the pure exported step give the same steering and state."""
    from policies.core import Core

    p = policies[name]
    assert p.core is None or isinstance(p.core, Core)
    x = frames(2, 1, seed=9)[:, 0]
    h0 = p.initial_state(2)
    dt = torch.tensor([0.1, 0.25])
    with torch.no_grad():
        s_fast, h_fast = p.step(x, h0, dt=dt)
        feats = p.cnn(x)
        s_pure, h_pure = p.step_exportable(feats, h0, (dt / p.time_unit_s).reshape(2, 1)
                                           if p.uses_time else torch.ones(2, 1))
    flat = lambda s: torch.cat([v.reshape(-1) for v in s]) if isinstance(s, tuple) else s.reshape(-1)  # noqa: E731
    assert torch.allclose(s_fast, s_pure, atol=1e-6)
    assert torch.allclose(flat(h_fast), flat(h_pure), atol=1e-6)


def test_a_core_without_the_protocol_is_refused():
    from policies.cnn import PerceptionCNN
    from policies.policy import Policy

    with pytest.raises(ValueError, match="policies.core.Core"):
        Policy("x", PerceptionCNN(HW), torch.nn.GRU(32, 8), torch.nn.Linear(8, 1), uses_time=False)


# ------------------------------------------------------- batched steps, non-finite input
@pytest.mark.parametrize("name", POLICY_NAMES)
def test_batched_step_equals_single_steps(policies, name):
    """Lock-step batched evaluation: a (B,H,W,3) step with per-sample dt (B,) equals B steps."""
    p = policies[name]
    B = 4
    x = frames(B, 3, seed=11)
    dts = torch.tensor([[0.1, 0.05, 0.3, 0.12], [0.2, 0.1, 0.1, 0.07], [0.1, 0.4, 0.05, 0.1]])
    hb = p.initial_state(B)
    hs = [p.initial_state(1) for _ in range(B)]
    for t in range(3):
        sb, hb = p.step(x[:, t], hb, dt=dts[t])
        for i in range(B):
            si, hs[i] = p.step(x[i, t], hs[i], dt=float(dts[t, i]))
            assert torch.allclose(sb[i:i + 1], si, atol=1e-5), (t, i)
    flat = lambda s, i: torch.cat([v[i].reshape(-1) for v in s]) if isinstance(s, tuple) else s[i]  # noqa: E731
    for i in range(B):
        assert torch.allclose(flat(hb, i), flat(hs[i], 0), atol=1e-5)


def _whitened(x):
    from policies.cnn import whiten

    return whiten(x.permute(0, 3, 1, 2).float())


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_nonfinite_frames_raise_or_hold_the_last_action(policies, name):
    """Issue 12 item 11: NaN frames used to pass through and give NaN steering."""
    p = policies[name]
    x = frames(3, 2, seed=12)
    h0 = p.initial_state(3)
    s1, h1 = p.step(x[:, 0], h0, dt=0.1)
    bad = _whitened(x[:, 1])
    bad[1, 2, 5, 7] = math.nan
    with pytest.raises(ValueError, match=r"image holds NaN/inf .* at sample 1"):
        p.step(bad, h1, dt=0.1)
    with pytest.raises(ValueError, match=r"at batch 1, time 0"):
        p(bad.unsqueeze(1))
    good, good_h = p.step(_whitened(x[:, 1]), h1, dt=0.1)
    s2, h2 = p.step(bad, h1, dt=0.1, nan_policy="hold", last_action=s1)
    assert p.held.tolist() == [False, True, False]
    assert torch.equal(s2[1], s1[1])  # the held sample repeats its last action
    assert torch.allclose(s2[[0, 2]], good[[0, 2]], atol=1e-6)  # the others drive on
    rows = lambda s, i: [v[i] for v in s] if isinstance(s, tuple) else [s[i]]  # noqa: E731
    for a, b in zip(rows(h2, 1), rows(h1, 1)):
        assert torch.equal(a, b)  # and keeps its state
    for a, b in zip(rows(h2, 0), rows(good_h, 0)):
        assert torch.allclose(a, b, atol=1e-6)
    p.step(x[:, 1], h1, dt=0.1)
    assert p.held is None
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        p.step(x[:, 1], h1, dt=0.1, nan_policy="ignore")


# ------------------------------------------------------- device and bf16 (issue 14)
def test_supports_bf16_and_resolve_device_follow_torch():
    from policies.policy import available_precisions, resolve_device, supports_bf16

    cpu_native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert supports_bf16("cpu") is cpu_native
    assert available_precisions("cpu") == (("fp32", "bf16") if cpu_native else ("fp32",))
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert supports_bf16("cuda") is False
        with pytest.raises(ValueError, match="CUDA is not available here.*available: cpu"):
            resolve_device("cuda")


@pytest.mark.parametrize("name", ["ncp-ltc", "ncp-cfc", "lstm", "cnn"])
def test_bf16_autocast_is_for_the_cnn_only(policies, name, monkeypatch):
    from policies import policy as policy_mod

    monkeypatch.setattr(policy_mod, "supports_bf16", lambda device="cpu": True)  # emulated is fine here
    p = policies[name]
    x = frames(2, 3, seed=13)
    seen = {}
    p.cnn.conv_layers[0].register_forward_hook(lambda m, i, o: seen.__setitem__("conv", o.dtype))
    if p.core is not None:
        real = p.core.step
        monkeypatch.setattr(p.core, "step", lambda f, h, dt: (seen.__setitem__("core", f.dtype), real(f, h, dt))[1])
    with torch.no_grad():
        ref, _ = p(x)
        s32, _ = p.step(x[:, 0], None, dt=0.1)
        assert seen["conv"] == torch.float32
        with p.autocast("bf16"):
            assert p.precision == "bf16"
            s16, _ = p.step(x[:, 0], None, dt=0.1)
            assert seen["conv"] == torch.bfloat16
            seq16, _ = p(x)
        assert p.precision == "fp32"
    assert s16.dtype == torch.float32
    if p.core is not None:
        assert seen["core"] == torch.float32  # the liquid cores stay fp32
    assert float((s16 - s32).abs().max()) < 0.05 and float((seq16 - ref).abs().max()) < 0.05
    p._forward_hooks.clear()
    p.cnn.conv_layers[0]._forward_hooks.clear()


def test_bf16_is_refused_where_not_native(monkeypatch):
    from policies import policy as policy_mod

    monkeypatch.setattr(policy_mod, "supports_bf16", lambda device="cpu": False)
    p = build_policy("ncp-cfc", image_hw=HW)
    with pytest.raises(ValueError, match="not supported natively.*available: fp32"):
        p.set_precision("bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        p.set_precision("fp16")
    assert p.precision == "fp32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine (CPU-only torch)")
@pytest.mark.parametrize("name", ["ncp-ltc", "ncp-cfc", "lstm", "ctrnn", "cnn"])
def test_policy_on_cuda_equals_cpu(name):
    p = build_policy(name, image_hw=HW, seed=3)
    q = build_policy(name, image_hw=HW, seed=3).to("cuda")
    assert q.device.type == "cuda"
    x = frames(2, 3, seed=14)
    ts = torch.full((2, 3), 0.1)
    s_cpu, _ = p(x, timespans=ts)
    s_gpu, _ = q(x, timespans=ts)  # frames follow the policy's device
    assert s_gpu.device.type == "cuda"
    assert torch.allclose(s_cpu, s_gpu.cpu(), atol=1e-4)
    s_gpu.sum().backward()
    with torch.no_grad():
        a, _ = p.step(x[:, 0], None, dt=torch.tensor([0.1, 0.2]))
        b, _ = q.step(x[:, 0].numpy(), None, dt=torch.tensor([0.1, 0.2]))
    assert torch.allclose(a, b.cpu(), atol=1e-4)


@pytest.mark.parametrize("name", ["ncp-ltc", "ncp-cfc", "lstm", "cnn", "lstm-ema"])
def test_reset_state_restarts_only_the_marked_rows(policies, name):
    p = policies[name]
    x = frames(3, 1, seed=15)[:, 0]
    _, h = p.step(x, None, dt=0.1)
    r = p.reset_state(h, [False, True, False])
    fresh = p.initial_state(3)
    rows = lambda s, i: [v[i] for v in s] if isinstance(s, tuple) else [s[i]]  # noqa: E731
    for i in range(3):
        for a, b, c in zip(rows(r, i), rows(h, i), rows(fresh, i)):
            assert torch.equal(a, c if i == 1 else b)
    with pytest.raises(ValueError, match=r"rows must be a \(3,\) bool mask"):
        p.reset_state(h, [True])
