"""Structural similarity (SSIM) between saliency maps, for attention robustness.

SSIM (Wang et al. 2004) compares local means, variances and covariance of two images:

    SSIM(x, y) = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))

with C1 = (0.01·L)², C2 = (0.03·L)², L the data range (1.0 for VisualBackProp maps in
[0, 1]), as in Lechner et al. 2020. Local statistics use a window:

- ``window="gaussian"`` (default): Gaussian weights, σ = 1.5, 11 taps (truncated at 3.5σ),
  population (biased) variances — Wang et al.'s original choice.
- ``window="uniform"``: a `win_size`×`win_size` box (default 7) with sample (unbiased)
  covariances, scikit-image's default.

Borders are reflected (…c b a | a b c…), then (win_size−1)/2 pixels are cropped on each side
before averaging, so the numbers equal `skimage.metrics.structural_similarity(a, b,
data_range=L, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)` for the
Gaussian window and `structural_similarity(a, b, data_range=L)` for the uniform one
(tests/test_ssim.py checks both).
"""

from __future__ import annotations

import cv2
import numpy as np


def _kernel(window: str, sigma: float, win_size: int | None) -> np.ndarray:
    if window == "gaussian":
        radius = int(3.5 * sigma + 0.5)  # scipy.ndimage's truncate=3.5
        size = 2 * radius + 1 if win_size is None else int(win_size)
        x = np.arange(size, dtype=np.float64) - (size - 1) / 2
        k = np.exp(-0.5 * (x / sigma) ** 2)
    elif window == "uniform":
        size = 7 if win_size is None else int(win_size)
        k = np.ones(size, dtype=np.float64)
    else:
        raise ValueError(f"window must be 'gaussian' or 'uniform', got {window!r}")
    if size < 3 or size % 2 == 0:
        raise ValueError(f"window size must be odd and >= 3, got {size}")
    return k / k.sum()


def ssim_map(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = 1.0,
    window: str = "gaussian",
    sigma: float = 1.5,
    win_size: int | None = None,
    sample_covariance: bool | None = None,
) -> np.ndarray:
    """Per-pixel SSIM of two 2-D maps (same shape), before border cropping."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim needs two 2-D maps of the same shape, got {a.shape} and {b.shape}")
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    k = _kernel(window, sigma, win_size)
    if min(a.shape) < len(k):
        raise ValueError(f"maps {a.shape} are smaller than the {len(k)}-pixel SSIM window")
    if sample_covariance is None:
        sample_covariance = window == "uniform"
    n = len(k) ** 2
    cov_norm = n / (n - 1) if sample_covariance else 1.0

    def filt(img: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(img, cv2.CV_64F, k, k, borderType=cv2.BORDER_REFLECT)

    ux, uy = filt(a), filt(b)
    uxx, uyy, uxy = filt(a * a), filt(b * b), filt(a * b)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return num / den


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = 1.0,
    window: str = "gaussian",
    sigma: float = 1.5,
    win_size: int | None = None,
    sample_covariance: bool | None = None,
) -> float:
    """Mean SSIM of two 2-D maps (see the module docstring for window and constants)."""
    m = ssim_map(a, b, data_range, window, sigma, win_size, sample_covariance)
    pad = (len(_kernel(window, sigma, win_size)) - 1) // 2
    return float(m[pad : m.shape[0] - pad, pad : m.shape[1] - pad].mean())


def ssim_batch(a: np.ndarray, b: np.ndarray, **kw) -> np.ndarray:
    """SSIM of each pair of maps in two stacks (N,H,W) → (N,)."""
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"ssim_batch needs two (N,H,W) stacks of one shape, got {a.shape}, {b.shape}")
    return np.array([ssim(x, y, **kw) for x, y in zip(a, b)], dtype=np.float64)
