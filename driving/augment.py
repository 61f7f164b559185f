"""Training augmentations, each a named option (`driving train --augment NAME,NAME`).

Lechner et al. (2020) trained their lane-keeping policies with shadow and brightness
augmentation so that the perception CNN learns the road's geometry rather than the day's
lighting. The CNN whitens each image (zero mean, unit variance), so a plain global
brightness gain is undone by that whitening; what survives it, and therefore what we draw,
is non-linear or local.

| name | what it draws (one draw per window, shared by its T frames) | default |
|---|---|---|
| `photometric` | gamma 0.7–1.4, global gain 0.6–1.4 (visible through clipping), per-channel gain ±10 % (colour cast) | on |
| `shadow` | with probability 0.5, a straight-edged shadow (darkness ×0.35–0.75) whose edge slides by up to 30 % of the width over the window, as when driving past a tree line | on |
| `noise` | Gaussian pixel noise, σ uniform in 0–0.05 of the range, fresh per frame | off |

Lighting changes slowly in a real drive, hence one draw per window. `noise` is off by
default: the robustness evaluation corrupts frames with pixel noise, and an agent trained
on it would no longer be judged on an unseen corruption. All randomness comes from an
explicit `torch.Generator` in a fixed order (photometric, then shadow, then noise), so a run
is reproducible and the default set draws exactly what the earlier all-in-one function drew.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

AUGMENTATIONS = ("photometric", "shadow", "noise")
DEFAULT_AUGMENT = ("photometric", "shadow")


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random draws (all uniform)."""

    brightness: tuple[float, float] = (0.6, 1.4)  # global gain (visible through clipping)
    channel_gain: float = 0.1  # per-channel gain in [1 - x, 1 + x]
    gamma: tuple[float, float] = (0.7, 1.4)
    shadow_prob: float = 0.5
    shadow_darkness: tuple[float, float] = (0.35, 0.75)  # multiplier inside the shadow
    shadow_slide: float = 0.3  # max horizontal drift of the edge over a window (fraction of W)
    noise_sigma: float = 0.05  # max std of pixel noise on [0, 1] images


def parse_augment(text: str | Iterable[str] | bool | None) -> tuple[str, ...]:
    """`"photometric,shadow"` → ('photometric', 'shadow'); "none"/"" → (); "default" → the
    default set. `True`/`False` (the settings of runs made before the names) mean default/none."""
    if text is None or text is True:
        return DEFAULT_AUGMENT
    if text is False:
        return ()
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else [str(s) for s in text]
    names: list[str] = []
    for item in items:
        if item in ("", "none"):
            continue
        expand = DEFAULT_AUGMENT if item == "default" else (item,)
        for name in expand:
            if name not in AUGMENTATIONS:
                raise ValueError(f"unknown augmentation {name!r} in --augment {text!r}; choose from "
                                 f"{', '.join(AUGMENTATIONS)}, 'default' ({','.join(DEFAULT_AUGMENT)}) "
                                 "or 'none'")
            if name not in names:
                names.append(name)
    return tuple(n for n in AUGMENTATIONS if n in names)  # canonical order = draw order


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
    images: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig | None = None,
    names: Iterable[str] = DEFAULT_AUGMENT,
) -> torch.Tensor:
    """Augment uint8 windows (B,T,H,W,3) with the named augmentations; uint8 out, same shape.

    Draws happen in a fixed order from `gen`, so the result depends only on the generator
    state, the names and the input. No names: the input itself.
    """
    if images.dtype != torch.uint8 or images.ndim != 5 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (B,T,H,W,3), got {tuple(images.shape)} {images.dtype}")
    chosen = parse_augment(tuple(names))
    if not chosen:
        return images
    cfg = cfg or AugmentConfig()
    b, t, h, w, _ = images.shape
    x = images.float().div_(255.0)
    if "photometric" in chosen:
        gain = _uniform((b,), *cfg.brightness, gen)
        tint = _uniform((b, 3), 1.0 - cfg.channel_gain, 1.0 + cfg.channel_gain, gen)
        gamma = _uniform((b,), *cfg.gamma, gen)
        x = x.pow_(gamma[:, None, None, None, None])
        x = x.mul_((gain[:, None] * tint)[:, None, None, None, :])
    if "shadow" in chosen:
        x = x.mul_(shadow_mask(b, t, h, w, gen, cfg)[..., None])
    if "noise" in chosen:
        sigma = _uniform((b,), 0.0, cfg.noise_sigma, gen)
        x = x.add_(torch.randn(x.shape, generator=gen) * sigma[:, None, None, None, None])
    return x.mul_(255.0).clamp_(0.0, 255.0).round_().to(torch.uint8)
