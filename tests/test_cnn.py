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


# ---------------------------------------------------------------- whitening and the fused path


def _whiten_std_mean(x):
    """The original formula: torch.std_mean over (C,H,W), std floored at 1/sqrt(n)."""
    std, mean = torch.std_mean(x, dim=(1, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.clamp(std, min=1.0 / x[0].numel() ** 0.5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_whiten_equals_the_std_mean_formula_and_keeps_the_layout(channels_last):
    g = torch.Generator().manual_seed(3)
    u8 = torch.randint(0, 256, (5, 78, 200, 3), dtype=torch.uint8, generator=g)
    u8[2] = 128  # a blank frame: the std floor
    u8[3] = u8[3] // 16 + 100  # low contrast, large mean: where a one-pass E[x²]−m² would cancel
    x = u8.permute(0, 3, 1, 2).float()
    if not channels_last:
        x = x.contiguous()
    w = whiten(x)
    assert w.shape == x.shape
    assert w.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert (w - _whiten_std_mean(x)).abs().max() < 1e-5
    assert torch.equal(w[2], torch.zeros_like(w[2]))


def test_whiten_gradient_is_finite_at_a_blank_frame():
    x = torch.full((2, 3, 8, 9), 50.0)
    x[1] += torch.linspace(0, 1, 9)
    x.requires_grad_(True)
    whiten(x).pow(2).sum().backward()
    assert bool(torch.isfinite(x.grad).all())


def _plain(cnn, x):
    before = cnn.fast_inference
    cnn.fast_inference = False
    try:
        return cnn(x)
    finally:
        cnn.fast_inference = before


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_fused_inference_equals_the_plain_modules(batch):
    torch.manual_seed(4)
    cnn = PerceptionCNN((78, 200)).eval()
    x = torch.randint(0, 256, (batch, 78, 200, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert cnn._fast_dtype(x) == torch.float32 or not cnn_fast_available()
        fast, plain = cnn(x), _plain(cnn, x)
    assert fast.dtype == torch.float32 and fast.shape == (batch, 32)
    assert (fast - plain).abs().max() < 1e-4
    # and both equal the independent reference (whitening by std_mean, nn.Conv2d, einsum heads)
    h = _whiten_std_mean(x.permute(0, 3, 1, 2).float())
    for conv in cnn.conv_layers:
        h = F.relu(conv(h))
    with torch.no_grad():
        assert (cnn._heads(h) - fast).abs().max() < 1e-4


def cnn_fast_available() -> bool:
    from policies import cnn as C

    return C._FUSED_CONV


def test_fused_path_only_where_it_applies():
    cnn = PerceptionCNN((32, 48))
    x = torch.randint(0, 256, (2, 32, 48, 3), dtype=torch.uint8)
    if not cnn_fast_available():
        pytest.skip("oneDNN's fused convolution is not in this torch build")
    assert cnn._fast_dtype(x) is None  # grad mode with trainable weights: training
    with torch.no_grad():
        assert cnn._fast_dtype(x) == torch.float32
        assert cnn._fast_dtype(x.permute(0, 3, 1, 2).float()) is None  # float frames may hold NaN
        cnn.fast_inference = False
        assert cnn._fast_dtype(x) is None
        cnn.fast_inference = True
    with torch.inference_mode():
        assert cnn._fast_dtype(x) == torch.float32
    seen = []
    handle = cnn.conv_layers[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    try:
        with torch.no_grad():
            assert cnn._fast_dtype(x) is None
            cnn(x)
        assert seen == [(2, 3, 32, 48)]  # hooks on the convolutions still fire
    finally:
        handle.remove()
    for p in cnn.parameters():
        p.requires_grad_(False)
    assert cnn._fast_dtype(x) == torch.float32  # a frozen CNN needs no graph


def test_fused_path_follows_weight_changes_and_copies():
    import copy
    import pickle

    torch.manual_seed(5)
    cnn = PerceptionCNN((32, 48)).eval()
    x = torch.randint(0, 256, (2, 32, 48, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert cnn._fast_dtype(x) == torch.float32 or not cnn_fast_available()
        first = cnn(x)
        other = PerceptionCNN((32, 48))
        cnn.load_state_dict(other.state_dict())  # in-place copy_: the packed weights go stale
        assert (cnn(x) - _plain(other, x)).abs().max() < 1e-5
        assert (cnn(x) - first).abs().max() > 1e-3
        cnn.conv_layers[1].weight.mul_(0.5)  # an optimizer-style in-place update
        assert (cnn(x) - _plain(cnn, x)).abs().max() < 1e-5
        cnn.conv_layers[2].bias.fill_(float("nan"))  # broken weights still show as NaN
        assert bool(torch.isnan(cnn(x)).all())
        cnn.load_state_dict(other.state_dict())
        twin = copy.deepcopy(cnn)  # packed oneDNN tensors are not copied
        again = pickle.loads(pickle.dumps(cnn))
        assert torch.equal(twin(x), cnn(x)) and torch.equal(again(x), cnn(x))


def test_fused_bf16_autocast_stays_close_to_fp32():
    from policies.policy import supports_bf16

    if not supports_bf16("cpu"):
        pytest.skip("no native bf16 on this CPU")
    torch.manual_seed(6)
    cnn = PerceptionCNN((78, 200)).eval()
    x = torch.randint(0, 256, (4, 78, 200, 3), dtype=torch.uint8)
    with torch.no_grad():
        fp32 = _plain(cnn, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert cnn._fast_dtype(x) in (torch.bfloat16, None)
            fast = cnn(x)
            plain = _plain(cnn, x)
    assert fast.dtype == torch.float32
    scale = float(fp32.abs().max())
    # bf16 keeps 8 bits of mantissa: the fused and the plain autocast agree with fp32 alike
    assert float((fast - fp32).abs().max()) < 0.02 * scale
    assert float((fast - fp32).abs().max()) < 3 * float((plain.float() - fp32).abs().max()) + 1e-6
