"""VisualBackProp against hand-computed maps; exact properties of per-neuron gradient saliency."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from driving.explain.saliency import (
    MOTOR,
    _InputCapture,
    integrated_gradients_raw,
    neuron_saliency,
    upsample_like_conv,
    visual_backprop,
    visual_backprop_from_maps,
)

# --------------------------------------------------------------------------- stand-ins


class TinyCNN(nn.Module):
    """Two convolutions; feature (m, b) = mean of deep map m over column block b.

    Input (8, 16): conv1 3→2 k3 s1 p1 → (8, 16); conv2 2→2 k3 s2 p1 → (4, 8); 4 column
    blocks of 2 map columns → 2 maps × 4 blocks = 8 features. Feature index = 4·m + b.
    Block b reads map columns 2b, 2b+1 → conv1 columns 4b−1 … 4b+3 → pixel columns
    4b−2 … 4b+4: the receptive field of a block-b feature.
    """

    image_hw = (8, 16)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv_layers = nn.ModuleList([nn.Conv2d(3, 2, 3, 1, 1), nn.Conv2d(2, 2, 3, 2, 1)])
        with torch.no_grad():  # positive biases keep the ReLUs active (non-zero gradients)
            for c in self.conv_layers:
                c.bias.fill_(0.5)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.permute(0, 3, 1, 2).float()
            flat = x.flatten(1)
            x = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)).view(x.shape)
        return x

    def forward_with_activations(self, x):
        x = self.prepare(x)
        acts = []
        for c in self.conv_layers:
            x = torch.relu(c(x))
            acts.append(x)
        feats = x.view(x.shape[0], 2, 4, 4, 2).mean(dim=(2, 4))  # (N, maps, blocks)
        return feats.reshape(x.shape[0], 8), acts

    def forward(self, x):
        return self.forward_with_activations(x)[0]


class TinyCore(nn.Module):
    """One-step wired RNN, h' = tanh(W_in·(mask⊙x) + W_rec·h): 4 units, 8 sensory inputs.

    Sensory synapses: unit 1 ← block-0 features (0, 4); unit 2 ← block-3 features (3, 7);
    unit 3 ← every feature; unit 0 has none (only recurrent input from 1, 2).
    """

    state_size = 4

    def __init__(self) -> None:
        super().__init__()
        mask = torch.zeros(8, 4)
        mask[[0, 4], 1] = 1
        mask[[3, 7], 2] = 1
        mask[:, 3] = 1
        self.register_buffer("mask", mask)
        g = torch.Generator().manual_seed(1)
        self.w_in = nn.Parameter(torch.randn(8, 4, generator=g))
        rec = torch.zeros(4, 4)
        rec[1, 0], rec[2, 0], rec[3, 3] = 0.7, -0.5, 0.3
        self.w_rec = nn.Parameter(rec)

    def forward(self, x, h):
        out = []
        for t in range(x.shape[1]):
            h = torch.tanh(x[:, t] @ (self.w_in * self.mask) + h @ self.w_rec)
            out.append(h)
        return torch.stack(out, 1), h


class TinyPolicy(nn.Module):
    """Follows the Policy contract used by the saliency code (forward, neuron_states)."""

    name = "tiny"
    units = 4

    def __init__(self) -> None:
        super().__init__()
        self.cnn = TinyCNN()
        self.core = TinyCore()

    def initial_state(self, batch: int = 1):
        return torch.zeros(batch, 4)

    def forward(self, images, hx=None, timespans=None, return_states=False):
        b, t = images.shape[:2]
        feats = self.cnn(images.reshape(b * t, *images.shape[2:])).view(b, t, -1)
        hx = self.initial_state(b) if hx is None else hx
        states, h = self.core(feats, hx)
        steering = torch.tanh(states[..., 2] - 0.5 * states[..., 3])
        return (steering, h, states) if return_states else (steering, h)

    def neuron_states(self, images, hx=None, timespans=None):
        return self.forward(images, hx, timespans, return_states=True)[2]


def _frame(seed: int = 0, hw=(8, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- VisualBackProp


class _Stack(nn.Module):
    def __init__(self, convs):
        super().__init__()
        self.conv_layers = nn.ModuleList(convs)

    def forward_with_activations(self, x):
        acts = []
        for c in self.conv_layers:
            x = torch.relu(c(x))
            acts.append(x)
        return x.flatten(1), acts


def test_visual_backprop_literal_hand_example():
    """Two 2×2 convs of ones (stride 1, no padding) on a 3×3 image, computed on paper.

    x = [[1,2,0],[0,1,3],[2,0,1]] → a1 = window sums [[4,6],[3,5]] → a2 = [[18]].
    Up(a2) = 18 everywhere on 2×2; × a1 = [[72,108],[54,90]]; spreading each value over its
    2×2 input window gives [[72,180,108],[126,324,198],[54,144,90]]; min 54, max 324.
    """
    convs = [nn.Conv2d(1, 1, 2, 1, 0), nn.Conv2d(1, 1, 2, 1, 0)]
    with torch.no_grad():
        for c in convs:
            c.weight.fill_(1.0)
            c.bias.zero_()
    x = torch.tensor([[1.0, 2, 0], [0, 1, 3], [2, 0, 1]])[None, None]
    got = visual_backprop(_Stack(convs), x)
    raw = np.array([[72, 180, 108], [126, 324, 198], [54, 144, 90]], dtype=np.float64)
    np.testing.assert_allclose(got[0], (raw - 54) / 270, atol=1e-6)


def _numpy_vbp(maps: list[np.ndarray], geoms, input_hw) -> np.ndarray:
    """Reference by explicit loops: each cell adds its value to its k×k window (stride s, pad p)."""

    def spread(m, k, s, p, out_hw):
        out = np.zeros(out_hw)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                for di in range(k):
                    for dj in range(k):
                        y, x = i * s + di - p, j * s + dj - p
                        if 0 <= y < out_hw[0] and 0 <= x < out_hw[1]:
                            out[y, x] += m[i, j]
        return out

    avg = [m.mean(axis=0) for m in maps]
    mask = avg[-1]
    for layer in range(len(avg) - 1, 0, -1):
        mask = spread(mask, *geoms[layer], avg[layer - 1].shape) * avg[layer - 1]
    mask = spread(mask, *geoms[0], input_hw)
    return (mask - mask.min()) / (mask.max() - mask.min())


def test_visual_backprop_matches_numpy_loops_with_stride_and_padding():
    torch.manual_seed(3)
    convs = [nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 3, 3, 2, 1), nn.Conv2d(3, 2, 3, 1, 1)]
    with torch.no_grad():
        for c in convs:
            c.bias.fill_(0.2)
    cnn = _Stack(convs)
    x = torch.randn(2, 3, 9, 13)
    got = visual_backprop(cnn, x)
    assert got.shape == (2, 9, 13)
    _, acts = cnn.forward_with_activations(x)
    for n in range(2):
        ref = _numpy_vbp([a[n].detach().numpy() for a in acts],
                         [(3, 2, 1), (3, 2, 1), (3, 1, 1)], (9, 13))
        np.testing.assert_allclose(got[n], ref, atol=1e-5)
    assert got.min() == 0.0 and got.max() == pytest.approx(1.0)


@pytest.mark.parametrize("k,s,p,size,target", [(5, 2, 2, 20, 39), (3, 2, 1, 10, 20), (3, 1, 1, 10, 10),
                                              (5, 2, 2, 39, 78)])
def test_upsample_equals_conv_transpose_with_output_padding(k, s, p, size, target):
    conv = nn.Conv2d(1, 1, k, s, p)
    m = torch.rand(1, 1, size, size + 3)
    out_pad = target - ((size - 1) * s - 2 * p + k)
    ref = F.conv_transpose2d(m, torch.ones(1, 1, k, k), stride=s, padding=p,
                             output_padding=(out_pad, target + 3 * s - ((size + 2) * s - 2 * p + k)))
    got = upsample_like_conv(m, conv, (target, target + 3 * s))
    torch.testing.assert_close(got, ref)


def test_visual_backprop_on_perception_cnn_shapes():
    cnn_mod = pytest.importorskip("policies.cnn")
    cnn = cnn_mod.PerceptionCNN((78, 200))
    frames = np.random.default_rng(0).integers(0, 256, (2, 78, 200, 3), dtype=np.uint8)
    maps = visual_backprop(cnn, frames)
    assert maps.shape == (2, 78, 200) and maps.dtype == np.float32
    assert 0.0 <= maps.min() and maps.max() <= 1.0
    one = visual_backprop(cnn, frames[1])
    np.testing.assert_allclose(one, maps[1], atol=1e-6)  # per-image normalisation
    # deterministic and every layer's map was used (geometry matched at each level)
    _, acts = cnn.forward_with_activations(torch.as_tensor(frames))
    again = visual_backprop_from_maps(acts, list(cnn.conv_layers), (78, 200)).detach().numpy()
    np.testing.assert_allclose(again, maps, atol=1e-6)


# --------------------------------------------------------------------------- gradients


def test_zero_saliency_outside_receptive_field_and_without_sensory_path():
    """Exact zeros, from the wiring and the CNN geometry (see TinyCNN / TinyCore).

    - Unit 1 listens only to block-0 features, whose receptive field is pixel columns 0…4:
      its saliency is exactly 0 at columns ≥ 5 and non-zero somewhere inside.
    - Unit 2 listens only to block 3 (pixel columns 10…15): exactly 0 at columns ≤ 9.
    - Unit 0 has no sensory synapse; the state from the previous frame is held fixed, so its
      saliency is exactly 0 everywhere — even though the previous state came from a frame.
    - The motor output reads units 2 and 3, so it is non-zero on both sides.
    """
    policy = TinyPolicy()
    prev = _frame(1)
    _, h, _ = policy(torch.as_tensor(prev)[None, None], return_states=True)
    sal = neuron_saliency(policy, _frame(2), h=h, neurons=[0, 1, 2, 3])
    assert set(sal) == {0, 1, 2, 3, MOTOR}
    assert sal[1].shape == (8, 16)
    assert np.all(sal[1][:, 5:] == 0) and sal[1][:, :5].max() > 0
    assert np.all(sal[2][:, :10] == 0) and sal[2][:, 10:].max() > 0
    assert np.all(sal[0] == 0)
    assert sal[MOTOR][:, :5].max() > 0 and sal[MOTOR][:, 10:].max() > 0


def test_batched_saliency_equals_one_backward_per_neuron():
    """The batched computation (one row per neuron) equals plain autograd neuron by neuron."""
    policy = TinyPolicy()
    frame = _frame(5)
    h = torch.randn(1, 4) * 0.3
    sal = neuron_saliency(policy, frame, h=h, reduce="sum")
    x = policy.cnn.prepare(torch.as_tensor(frame)[None]).detach()
    for k in range(4):
        xi = x.clone().requires_grad_(True)
        feats = policy.cnn(xi)[:, None]
        states, _ = policy.core(feats, h)
        (g,) = torch.autograd.grad(states[0, -1, k], xi, allow_unused=True)
        ref = np.zeros((8, 16)) if g is None else g.abs().sum(1)[0].numpy()
        np.testing.assert_allclose(sal[k], ref, rtol=1e-5, atol=1e-7)
    xi = x.clone().requires_grad_(True)
    states, _ = policy.core(policy.cnn(xi)[:, None], h)
    steer = torch.tanh(states[0, -1, 2] - 0.5 * states[0, -1, 3])
    (g,) = torch.autograd.grad(steer, xi)
    np.testing.assert_allclose(sal[MOTOR], g.abs().sum(1)[0].numpy(), rtol=1e-5, atol=1e-7)


def test_integrated_gradients_completeness():
    """Σ IG ≈ f(x) − f(baseline 0) (Sundararajan et al.'s completeness axiom), up to the
    midpoint-rule error of 128 steps; IG keeps the exact zeros outside the receptive field."""
    policy = TinyPolicy()
    frame = _frame(7)
    h = torch.zeros(1, 4)
    attr, _ = integrated_gradients_raw(policy, frame, h, target=MOTOR, ig_steps=128)

    def f(scale: float) -> float:
        cap = _InputCapture(torch.tensor([scale]))
        hd = policy.cnn.conv_layers[0].register_forward_pre_hook(cap)
        try:
            with torch.no_grad():
                return float(policy(torch.as_tensor(frame)[None, None], h)[0][0, -1])
        finally:
            hd.remove()

    assert attr.sum() == pytest.approx(f(1.0) - f(0.0), rel=1e-2, abs=1e-4)
    sal = neuron_saliency(policy, frame, h, neurons=[1], motor=False, method="integrated",
                          ig_steps=8)
    assert np.all(sal[1][:, 5:] == 0) and sal[1].max() > 0


def test_bad_neuron_index_and_options():
    policy = TinyPolicy()
    with pytest.raises(ValueError, match="out of range"):
        neuron_saliency(policy, _frame(0), neurons=[4])
    with pytest.raises(ValueError, match="reduce"):
        neuron_saliency(policy, _frame(0), reduce="mean")
    with pytest.raises(ValueError, match="uint8"):
        neuron_saliency(policy, _frame(0).astype(np.float32))


@pytest.mark.parametrize("name", ["ncp-ltc", "lstm"])
def test_real_policy_saliency_equals_direct_autograd(name):
    """On the real Policy: the hook-based batched maps equal autograd of `neuron_states` /
    steering fed the whitened frame directly (the policy accepts whitened float frames)."""
    factory = pytest.importorskip("policies.factory")
    from policies.cnn import whiten

    torch.manual_seed(0)
    policy = factory.build_policy(name, image_hw=(32, 64))
    policy.eval()
    frame = np.random.default_rng(1).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    h = policy.initial_state(1)
    dt = 0.1
    sal = neuron_saliency(policy, frame, h, dt, neurons=[0, 3], reduce="sum")
    x = whiten(torch.as_tensor(frame).permute(2, 0, 1)[None].float())
    ts = torch.tensor([[dt]])
    for k in (0, 3, MOTOR):
        xi = x.clone().requires_grad_(True)
        if k == MOTOR:
            y = policy(xi[:, None], h, ts)[0][0, -1]
        else:
            y = policy.neuron_states(xi[:, None], h, ts)[0, -1, k]
        (g,) = torch.autograd.grad(y, xi)
        np.testing.assert_allclose(sal[k], g.abs().sum(1)[0].numpy(), rtol=1e-4, atol=1e-9)
