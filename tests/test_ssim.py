"""SSIM: identity, constants, and agreement with scikit-image's independent implementation."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from driving.explain.ssim import ssim, ssim_batch, ssim_map


def _pair(seed: int, shape=(78, 200)):
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    b = np.clip(a + 0.15 * rng.standard_normal(shape), 0, 1)
    return a, b


def test_identical_maps_have_ssim_one():
    a, _ = _pair(0)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, a, window="uniform") == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(ssim_map(a, a), 1.0)


@pytest.mark.parametrize("seed", [1, 2])
def test_gaussian_window_matches_skimage(seed):
    a, b = _pair(seed)
    ref = structural_similarity(
        a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(a, b) == pytest.approx(ref, abs=1e-10)
    assert 0.0 < ssim(a, b) < 1.0


def test_uniform_window_and_data_range_match_skimage():
    a, b = _pair(3, (40, 60))
    assert ssim(a, b, window="uniform") == pytest.approx(
        structural_similarity(a, b, data_range=1.0), abs=1e-10
    )
    # L enters only through C1 = (0.01 L)^2, C2 = (0.03 L)^2: scaling maps and L together
    # leaves SSIM unchanged, and matches skimage at L = 255.
    s255 = ssim(255 * a, 255 * b, data_range=255.0)
    assert s255 == pytest.approx(ssim(a, b), abs=1e-10)
    assert s255 == pytest.approx(
        structural_similarity(255 * a, 255 * b, data_range=255.0, gaussian_weights=True,
                              sigma=1.5, use_sample_covariance=False), abs=1e-10)


def test_constants_by_hand_on_constant_maps():
    # constant maps: σ = 0, so SSIM = (2 μx μy + C1) / (μx² + μy² + C1) exactly
    a = np.full((20, 20), 0.2)
    b = np.full((20, 20), 0.6)
    c1 = (0.01 * 1.0) ** 2
    assert ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1), rel=1e-12)


def test_more_corruption_lowers_ssim_and_batch_agrees():
    rng = np.random.default_rng(4)
    a = rng.random((50, 80))
    mild = np.clip(a + 0.05 * rng.standard_normal(a.shape), 0, 1)
    strong = np.clip(a + 0.4 * rng.standard_normal(a.shape), 0, 1)
    s = ssim_batch(np.stack([a, a]), np.stack([mild, strong]))
    assert s[0] > s[1]
    assert s[0] == pytest.approx(ssim(a, mild))


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="same shape"):
        ssim(np.zeros((10, 10)), np.zeros((10, 11)))
    with pytest.raises(ValueError, match="window"):
        ssim(np.zeros((10, 10)), np.zeros((10, 10)), window="box")
    with pytest.raises(ValueError, match="smaller"):
        ssim(np.zeros((5, 5)), np.zeros((5, 5)))
