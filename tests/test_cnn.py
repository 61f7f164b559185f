"""Perception CNN: the paper's architecture and parameter count, whitening, per-map heads."""

import pytest
import torch
from torch.nn import functional as F

from policies.cnn import CONV_SPEC, PerceptionCNN, conv_output_hw, whiten


def test_paper_parameter_count_and_map_size():
    cnn = PerceptionCNN((78, 200))
    assert cnn.parameter_count() == 79_420  # Lechner et al. 2020, Table 2
    assert cnn.map_hw == (10, 25)
    assert cnn.output_dim == 32
    convs = sum(p.numel() for p in cnn.conv_layers.parameters())
    assert convs == 71_388
    assert cnn.parameter_count() - convs == 8 * (10 * 25 * 4 + 4)


def test_activation_shapes_follow_same_padding():
    cnn = PerceptionCNN((78, 200))
    x = torch.randint(0, 256, (2, 78, 200, 3), dtype=torch.uint8)
    feats, acts = cnn.forward_with_activations(x)
    assert feats.shape == (2, 32)
    assert [tuple(a.shape[1:]) for a in acts] == [
        (24, 39, 100), (36, 20, 50), (48, 10, 25), (64, 10, 25), (8, 10, 25)]
    assert all(bool((a >= 0).all()) for a in acts)  # post-ReLU maps
    assert len(cnn.conv_layers) == 5 and all(isinstance(c, torch.nn.Conv2d) for c in cnn.conv_layers)


@pytest.mark.parametrize("hw", [(64, 128), (39, 100), (17, 33)])
def test_input_size_is_configurable(hw):
    cnn = PerceptionCNN(hw)
    mh, mw = conv_output_hw(hw)
    assert cnn.map_hw == (mh, mw)
    convs = sum(o * i * k * k + o for (o, k, _), i in zip(CONV_SPEC, (3, 24, 36, 48, 64)))
    assert cnn.parameter_count() == convs + 8 * (4 * mh * mw + 4)
    out = cnn(torch.randint(0, 256, (3, *hw, 3), dtype=torch.uint8))
    assert out.shape == (3, 32) and bool(torch.isfinite(out).all())


def test_whitening_is_per_image_and_removes_brightness_and_contrast():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 20, 30) * 255
    w = whiten(x)
    flat = w.reshape(4, -1)
    assert torch.allclose(flat.mean(1), torch.zeros(4), atol=1e-5)
    assert torch.allclose(flat.std(1, unbiased=False), torch.ones(4), atol=1e-4)
    # each image is normalised on its own: scaling one image does not change another
    y = x.clone()
    y[1] = y[1] * 0.3 + 40
    assert torch.allclose(whiten(y), w, atol=1e-4)
    # a blank frame stays finite (std floor 1/sqrt(n))
    assert torch.equal(whiten(torch.full((1, 3, 5, 5), 7.0)), torch.zeros(1, 3, 5, 5))


def test_uint8_input_equals_whitened_float_input():
    cnn = PerceptionCNN((32, 48))
    x = torch.randint(0, 256, (2, 32, 48, 3), dtype=torch.uint8)
    pre = whiten(x.permute(0, 3, 1, 2).float())
    assert torch.allclose(cnn(x), cnn(pre), atol=1e-6)


def test_matches_an_independent_reference_with_eight_separate_linears():
    torch.manual_seed(1)
    cnn = PerceptionCNN((40, 60))
    x = torch.randint(0, 256, (3, 40, 60, 3), dtype=torch.uint8)
    h = x.permute(0, 3, 1, 2).float()
    h = (h - h.mean(dim=(1, 2, 3), keepdim=True)) / h.std(dim=(1, 2, 3), unbiased=False, keepdim=True)
    for conv, (_, k, s) in zip(cnn.conv_layers, CONV_SPEC):
        h = F.relu(F.conv2d(h, conv.weight, conv.bias, stride=s, padding=k // 2))
    feats = []
    for m in range(8):
        lin = torch.nn.Linear(h.shape[2] * h.shape[3], 4)
        with torch.no_grad():
            lin.weight.copy_(cnn.head_weight[m])
            lin.bias.copy_(cnn.head_bias[m])
        feats.append(lin(h[:, m].flatten(1)))
    assert torch.allclose(cnn(x), torch.cat(feats, 1), atol=1e-5)


def test_each_map_feeds_only_its_own_four_features():
    cnn = PerceptionCNN((32, 48))
    x = torch.randint(0, 256, (1, 32, 48, 3), dtype=torch.uint8)
    feats, acts = cnn.forward_with_activations(x)
    last = acts[-1]
    for m in (0, 5):
        (g,) = torch.autograd.grad(feats[0, 4 * m: 4 * m + 4].sum(), last, retain_graph=True)
        per_map = g.abs().sum(dim=(0, 2, 3))
        assert per_map[m] > 0
        assert torch.count_nonzero(per_map) == 1


@pytest.mark.parametrize(
    "bad, words",
    [
        (torch.zeros(1, 78, 201, 3, dtype=torch.uint8), "(N, 78, 200, 3)"),
        (torch.zeros(78, 200, 3, dtype=torch.uint8), "(N, 78, 200, 3)"),
        (torch.zeros(1, 78, 200, 3), "(N, 3, 78, 200)"),
        (torch.zeros(1, 78, 200, 3, dtype=torch.int32), "int32"),
    ],
)
def test_bad_input_names_what_was_expected(bad, words):
    with pytest.raises(ValueError) as exc:
        PerceptionCNN((78, 200))(bad)
    assert words in str(exc.value)


def test_too_small_image_is_rejected():
    with pytest.raises(ValueError, match="at least 8"):
        PerceptionCNN((4, 100))
