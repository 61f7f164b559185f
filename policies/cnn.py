"""The perception CNN of Lechner et al. (2020), rebuilt to the parameter count of their Table 2.

Five convolutions ('same' padding, ReLU) shrink a 78×200 dashcam frame to 8 feature maps of
10×25; each map has its *own* linear layer to 4 features, giving the 32 sensory inputs of the
NCP. Keeping the maps separate (instead of one dense layer over all of them) is what makes
the per-map saliency of VisualBackProp meaningful and keeps the head small: at 78×200×3 the
network has exactly 79,420 parameters (71,388 in the convolutions, 8 × (250·4 + 4) = 8,032 in
the per-map heads).

Padding: PyTorch's symmetric padding of k//2 gives the same output sizes as TensorFlow's
'same' here (78→39→20→10, 200→100→50→25), so no asymmetric padding is needed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# (out_channels, kernel, stride) of the five convolutions (docs/cells.md, "Perception CNN").
CONV_SPEC: tuple[tuple[int, int, int], ...] = (
    (24, 5, 2),
    (36, 5, 2),
    (48, 3, 2),
    (64, 3, 1),
    (8, 3, 1),
)
FEATURES_PER_MAP = 4


def conv_output_hw(image_hw: tuple[int, int]) -> tuple[int, int]:
    """Spatial size of the last feature maps for an input of `image_hw` (H, W)."""
    h, w = int(image_hw[0]), int(image_hw[1])
    for _, k, s in CONV_SPEC:
        p = k // 2
        h = (h + 2 * p - k) // s + 1
        w = (w + 2 * p - k) // s + 1
    return h, w


def whiten(images: torch.Tensor) -> torch.Tensor:
    """Per-image standardisation: (x − mean) / max(std, 1/√n) over all pixels and channels.

    As TensorFlow's `per_image_standardization`, which the paper used: it removes global
    brightness and contrast, and the std floor keeps a blank frame finite. Input (N,3,H,W)
    float, output the same shape.
    """
    n = images[0].numel()
    # Reduce over (C,H,W) without reshaping: a uint8 (N,H,W,3) frame permuted to (N,3,H,W)
    # is channels-last in memory, and keeping that layout lets the convolutions run their
    # channels-last kernels (faster on CPU) instead of copying to NCHW first.
    std, mean = torch.std_mean(images, dim=(1, 2, 3), unbiased=False, keepdim=True)
    return (images - mean) / torch.clamp(std, min=1.0 / float(np.sqrt(n)))


class PerceptionCNN(nn.Module):
    """Dashcam frame → 32 features (8 maps × 4), with per-image whitening inside.

    `forward` takes uint8 (N,H,W,3) frames (whitened here) or float (N,3,H,W) frames that
    are already whitened (e.g. by `whiten`, for saliency code that perturbs inputs).
    """

    def __init__(self, image_hw: tuple[int, int] = (78, 200)) -> None:
        super().__init__()
        h, w = int(image_hw[0]), int(image_hw[1])
        if h < 8 or w < 8:
            raise ValueError(f"image_hw must be at least 8×8 pixels, got {image_hw!r}")
        self.image_hw = (h, w)
        layers = []
        in_ch = 3
        for out_ch, k, s in CONV_SPEC:
            layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=k, stride=s, padding=k // 2))
            in_ch = out_ch
        self.conv_layers = nn.ModuleList(layers)
        self.map_hw = conv_output_hw(self.image_hw)
        self.num_maps = CONV_SPEC[-1][0]
        map_size = self.map_hw[0] * self.map_hw[1]
        # One Linear per map, stored as a batched weight (maps, 4, map_size) so the eight
        # heads run as one einsum; parameter count equals eight separate nn.Linear layers.
        self.head_weight = nn.Parameter(torch.empty(self.num_maps, FEATURES_PER_MAP, map_size))
        self.head_bias = nn.Parameter(torch.empty(self.num_maps, FEATURES_PER_MAP))
        bound = 1.0 / float(np.sqrt(map_size))  # nn.Linear's default initialisation
        nn.init.uniform_(self.head_weight, -bound, bound)
        nn.init.uniform_(self.head_bias, -bound, bound)
        self.output_dim = self.num_maps * FEATURES_PER_MAP

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Validate and whiten uint8 (N,H,W,3) frames → float (N,3,H,W); floats pass through."""
        h, w = self.image_hw
        if images.dtype == torch.uint8:
            if images.dim() != 4 or tuple(images.shape[1:]) != (h, w, 3):
                raise ValueError(
                    f"expected uint8 frames of shape (N, {h}, {w}, 3), got {tuple(images.shape)}"
                )
            x = images.permute(0, 3, 1, 2).to(torch.float32)
            return whiten(x)
        if images.is_floating_point():
            if images.dim() != 4 or tuple(images.shape[1:]) != (3, h, w):
                raise ValueError(
                    f"expected whitened float frames of shape (N, 3, {h}, {w}) or uint8 frames "
                    f"(N, {h}, {w}, 3), got {images.dtype} {tuple(images.shape)}"
                )
            return images.to(torch.float32)
        raise ValueError(
            f"expected uint8 (N, {h}, {w}, 3) frames or whitened float (N, 3, {h}, {w}), "
            f"got dtype {images.dtype}"
        )

    def _heads(self, maps: torch.Tensor) -> torch.Tensor:
        flat = maps.flatten(2)  # (N, 8, h·w)
        feats = torch.einsum("nmp,mfp->nmf", flat, self.head_weight) + self.head_bias
        return feats.reshape(maps.shape[0], self.output_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.prepare(images)
        for conv in self.conv_layers:
            x = torch.relu(conv(x))
        return self._heads(x)

    def forward_with_activations(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Features and the post-ReLU maps of every convolution, for VisualBackProp."""
        x = self.prepare(images)
        acts = []
        for conv in self.conv_layers:
            x = torch.relu(conv(x))
            acts.append(x)
        return self._heads(x), acts

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_frame(self) -> int:
        """Forward FLOPs of one frame from the layer shapes (2 per multiply-add; convolutions
        and the per-map heads; whitening, biases and ReLUs are < 0.5 % and left out).
        At 78×200: 40.6 M multiply-adds, 81.2 MFLOP."""
        h, w = self.image_hw
        macs = 0
        for conv in self.conv_layers:
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            macs += h * w * conv.out_channels * k * k * conv.in_channels
        macs += self.head_weight.numel()
        return 2 * macs
