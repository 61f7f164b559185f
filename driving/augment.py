"""Photometric augmentation for training windows: shadows, brightness, colour and gamma.

Lechner et al. (2020) trained their lane-keeping policies with shadow and brightness
augmentation so that the perception CNN learns the road's geometry rather than the day's
lighting. The CNN whitens each image (zero mean, unit variance), so a plain global
brightness gain is undone by that whitening; what survives it, and therefore what we draw,
is non-linear or local: gamma, per-channel gain (colour cast), and a shadow covering part of
the image.

One draw per window, shared by its T frames (lighting changes slowly in a real drive), with
the shadow's edge sliding across the window as it would when driving past a tree line. All
randomness comes from an explicit `torch.Generator`, so a training run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random draws (all uniform)."""

    brightness: tuple[float, float] = (0.6, 1.4)  # global gain (visible through clipping)
    channel_gain: float = 0.1  # per-channel gain in [1 - x, 1 + x]
    gamma: tuple[float, float] = (0.7, 1.4)
    shadow_prob: float = 0.5
    shadow_darkness: tuple[float, float] = (0.35, 0.75)  # multiplier inside the shadow
    shadow_slide: float = 0.3  # max horizontal drift of the edge over a window (fraction of W)


def _uniform(shape: tuple[int, ...], lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def shadow_mask(
    batch: int, steps: int, height: int, width: int, gen: torch.Generator, cfg: AugmentConfig
) -> torch.Tensor:
    """Per-pixel multiplier (B,T,H,W) in (0, 1]: 1 outside the shadow, `darkness` inside.

    The shadow is the part of the image on one side of a straight edge running from the top
    row to the bottom row; the edge moves by up to `shadow_slide·W` over the window.
    """
    x_top = _uniform((batch,), -0.2, 1.2, gen) * width
    x_bot = _uniform((batch,), -0.2, 1.2, gen) * width
    slide = _uniform((batch,), -cfg.shadow_slide, cfg.shadow_slide, gen) * width
    side = torch.where(torch.rand((batch,), generator=gen) < 0.5, -1.0, 1.0)
    dark = _uniform((batch,), *cfg.shadow_darkness, gen)
    active = torch.rand((batch,), generator=gen) < cfg.shadow_prob

    frac_t = torch.linspace(0.0, 1.0, steps) if steps > 1 else torch.zeros(1)
    ys = torch.arange(height, dtype=torch.float32) / max(height - 1, 1)
    xs = torch.arange(width, dtype=torch.float32)
    # edge x-position per (b, t, y)
    edge = (
        x_top[:, None, None]
        + (x_bot - x_top)[:, None, None] * ys[None, None, :]
        + slide[:, None, None] * frac_t[None, :, None]
    )  # (B,T,H)
    inside = (xs[None, None, None, :] - edge[..., None]) * side[:, None, None, None] > 0
    factor = torch.where(active, dark, torch.ones(batch))
    return torch.where(inside, factor[:, None, None, None], torch.ones(()))


def augment_windows(
    images: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig | None = None
) -> torch.Tensor:
    """Augment uint8 windows (B,T,H,W,3) and return uint8 windows of the same shape.

    Draws happen in a fixed order from `gen`, so the result depends only on the generator
    state and the input.
    """
    if images.dtype != torch.uint8 or images.ndim != 5 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (B,T,H,W,3), got {tuple(images.shape)} {images.dtype}")
    cfg = cfg or AugmentConfig()
    b, t, h, w, _ = images.shape
    gain = _uniform((b,), *cfg.brightness, gen)
    tint = _uniform((b, 3), 1.0 - cfg.channel_gain, 1.0 + cfg.channel_gain, gen)
    gamma = _uniform((b,), *cfg.gamma, gen)
    mask = shadow_mask(b, t, h, w, gen, cfg)

    x = images.float().div_(255.0)
    x = x.pow_(gamma[:, None, None, None, None])
    x = x.mul_((gain[:, None] * tint)[:, None, None, None, :])
    x = x.mul_(mask[..., None])
    return x.mul_(255.0).clamp_(0.0, 255.0).round_().to(torch.uint8)
