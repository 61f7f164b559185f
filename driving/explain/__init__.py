"""Explanations: VisualBackProp, per-neuron gradient saliency, attention SSIM, videos.

See docs/explain.md. Submodules: `saliency` (maps), `ssim` (structural similarity),
`video` (panel composition and writers), `drive` (closed-loop drives that feed them).
"""

from driving.explain.saliency import MOTOR, neuron_saliency, visual_backprop
from driving.explain.ssim import ssim, ssim_batch

__all__ = ["MOTOR", "neuron_saliency", "visual_backprop", "ssim", "ssim_batch"]
