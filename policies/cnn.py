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

import os
import warnings

import numpy as np
import torch
from torch import nn

from policies._cellutil import recording_graph

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
    float, output the same shape and memory layout.

    Two passes over contiguous memory (a sum, then the centred dot product) instead of
    `torch.std_mean` over (1,2,3): on one CPU thread std_mean's Welford loop took ~0.26 ms a
    78×200 frame, as long as a convolution; this takes ~0.03 ms and is as accurate (the
    variance is taken of the centred values). max(std, floor) is computed as
    rsqrt(max(var, 1/n)), the same number with a finite gradient at a blank frame.
    """
    n = images[0].numel()
    # A uint8 (N,H,W,3) frame permuted to (N,3,H,W) is channels-last in memory: reduce over
    # that memory order (the order does not change the statistics) so no copy is made and
    # the convolutions keep their channels-last input.
    cl = images.dim() == 4 and not images.is_contiguous() and images.is_contiguous(
        memory_format=torch.channels_last)
    flat = (images.permute(0, 2, 3, 1) if cl else images).reshape(images.shape[0], n)
    out = _whiten_rows(flat, inplace=False)
    if cl:
        b, c, h, w = images.shape
        return out.view(b, h, w, c).permute(0, 3, 1, 2)
    return out.view(images.shape)


def _whiten_rows(flat: torch.Tensor, inplace: bool) -> torch.Tensor:
    """`whiten` of every row of a float (N, n) tensor (`inplace`: the centred values are
    scaled in place, for the no-grad path)."""
    n = flat.shape[1]
    centred = flat - flat.sum(1, keepdim=True) / n
    var = (centred * centred).sum(1, keepdim=True) / n  # (vecdot: not ONNX-exportable)
    scale = torch.rsqrt(torch.clamp(var, min=1.0 / n))
    return centred.mul_(scale) if inplace else centred * scale


def _fused_conv_available() -> bool:
    """oneDNN's fused convolution + ReLU on prepacked weights (what inductor emits on CPU)."""
    if os.environ.get("LIQUID_DRIVE_CNN_FAST", "1") == "0":
        return False
    try:
        ops = torch.ops.mkldnn
        return bool(torch.backends.mkldnn.is_available() and hasattr(ops, "_convolution_pointwise")
                    and hasattr(ops, "_reorder_convolution_weight"))
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch built without oneDNN
        return False


_FUSED_CONV = _fused_conv_available()


def _module_hooks_set() -> bool:
    """True when a global module hook is registered (the fused path would skip it)."""
    m = torch.nn.modules.module
    return any(bool(getattr(m, name, None)) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
        "_global_backward_pre_hooks"))


class PerceptionCNN(nn.Module):
    """Dashcam frame → 32 features (8 maps × 4), with per-image whitening inside.

    `forward` takes uint8 (N,H,W,3) frames (whitened here) or float (N,3,H,W) frames that
    are already whitened (e.g. by `whiten`, for saliency code that perturbs inputs).

    Inference on camera frames (uint8 input, no gradient wanted, CPU, float32 weights, no
    hooks on the convolutions, not while a graph is recorded) takes a fused path with the same function: whitening in one
    pass over the frame's memory, each convolution + ReLU as one oneDNN call on weights
    packed once per batch size (and cast to bf16 once under bf16 autocast), the eight heads
    as one matmul with a block-diagonal weight. It returns float32 features also under
    autocast. The packed weights are rebuilt when a parameter changes (its storage or
    version counter); set ``fast_inference = False`` to always run the plain modules (the
    equivalence is tested, `tests/test_cnn.py`).
    """

    #: take the fused inference path where it applies (see the class docstring)
    fast_inference: bool = True

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
        self._fast_cache: dict = {}

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
        dtype = self._fast_dtype(images)
        if dtype is not None:
            return self._fast_forward(images, dtype)
        return self._plain_forward(images)

    def _plain_forward(self, images: torch.Tensor) -> torch.Tensor:
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

    # ------------------------------------------------------------------ fused inference
    def _fast_dtype(self, images: torch.Tensor) -> torch.dtype | None:
        """The fused path's compute dtype for this call, or None where it does not apply."""
        if not (self.fast_inference and _FUSED_CONV and torch.backends.mkldnn.enabled):
            return None
        w = self.head_weight
        if w.device.type != "cpu" or w.dtype != torch.float32 or images.device.type != "cpu":
            return None
        if (images.dtype != torch.uint8 or images.dim() != 4 or images.shape[0] == 0
                or tuple(images.shape[1:]) != (*self.image_hw, 3)):
            # Camera frames only: a float frame may hold NaN, which oneDNN's fused ReLU maps
            # to 0 (the plain path propagates it, and `Policy` reports it); bad shapes get
            # prepare's messages.
            return None
        if torch.is_grad_enabled() and (images.requires_grad
                                        or any(p.requires_grad for p in self.parameters())):
            return None
        if any(c._forward_hooks or c._forward_pre_hooks for c in self.conv_layers):
            return None  # e.g. saliency's input capture on the first convolution
        if _module_hooks_set() or recording_graph():
            return None
        if torch.is_autocast_enabled("cpu"):
            return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
        return torch.float32

    def _fast_weights(self, batch: int, dtype: torch.dtype) -> tuple[list, torch.Tensor, torch.Tensor] | None:
        """Packed convolution weights for (batch, dtype) and the block-diagonal head weight;
        None when a weight is non-finite (the plain path then shows it as NaN features)."""
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        cache = getattr(self, "_fast_cache", None)
        if cache is None or cache.get("key") != key:
            finite = all(bool(torch.isfinite(p).all()) for p in self.parameters())
            cache = self._fast_cache = {"key": key, "finite": finite}
        if not cache["finite"]:
            return None
        packs = cache.get((batch, dtype))
        if packs is None:
            packs = []
            h, w = self.image_hw
            for conv in self.conv_layers:
                size = [batch, conv.in_channels, h, w]
                weight = conv.weight.detach().to(dtype)
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    weight, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, size)
                packs.append((packed, conv.bias.detach().to(dtype)))
                (k, s, p) = conv.kernel_size[0], conv.stride[0], conv.padding[0]
                h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            if len(cache) > 9:  # a few batch sizes at most (evaluation uses one)
                cache = self._fast_cache = {"key": key, "finite": True, "heads": cache.get("heads")}
            cache[(batch, dtype)] = packs
        heads = cache.get("heads")
        if heads is None:
            # feats[n, m·F + f] = Σ_p maps[n, p, m] · W[m, f, p] on channels-last maps
            # (memory order p·M + m): one (P·M, M·F) matmul, zeros off the diagonal blocks.
            m, f, p = self.head_weight.shape
            wbd = self.head_weight.new_zeros(p, m, m, f)
            idx = torch.arange(m)
            wbd[:, idx, idx, :] = self.head_weight.detach().permute(2, 0, 1)
            heads = cache["heads"] = (wbd.reshape(p * m, m * f), self.head_bias.detach().reshape(m * f))
        return packs, heads[0], heads[1]

    def _fast_forward(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """uint8 (N,H,W,3) frames → features (N,32) float32 (checked by `_fast_dtype`)."""
        b, h, w, _ = images.shape
        try:
            weights = self._fast_weights(b, dtype)
            if weights is None:
                return self._plain_forward(images)
            packs, head_w, head_b = weights
            flat = images.reshape(b, h * w * 3).to(torch.float32)
            # whitened in place, in the frame's own (channels-last) memory order
            x = _whiten_rows(flat, inplace=True).to(dtype).view(b, h, w, 3).permute(0, 3, 1, 2)
            for conv, (weight, bias) in zip(self.conv_layers, packs):
                x = torch.ops.mkldnn._convolution_pointwise(
                    x, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation),
                    conv.groups, "relu", [None], "")
        except RuntimeError as exc:  # pragma: no cover - a oneDNN that refuses this layer
            warnings.warn(f"PerceptionCNN: fused inference path failed ({exc}); using the plain "
                          "modules from now on", RuntimeWarning, stacklevel=2)
            self.fast_inference = False
            return self._plain_forward(images)
        flat = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # a view of the channels-last maps
        if dtype == torch.float32:
            return torch.addmm(head_b, flat, head_w)
        with torch.autocast("cpu", enabled=False):  # the heads in float32 (2,000 inputs each)
            return torch.addmm(head_b, flat.to(torch.float32), head_w)

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state["_fast_cache"] = {}  # packed oneDNN tensors neither pickle nor deepcopy
        return state

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
