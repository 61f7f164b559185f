"""Saliency for camera policies: VisualBackProp and per-neuron gradient maps.

VisualBackProp (Bojarski et al. 2018, "VisualBackProp: efficient visualization of CNNs")
shows which input pixels the convolutional head lets through to its deepest layer: it needs
one forward pass and no gradients, so it runs on every frame of a video. Per-neuron gradient
saliency answers a different question: which pixels of the *current* frame move the state of
neuron k (or the steering output) right now, with the recurrent state carried from earlier
frames held fixed (detached), as in Lechner et al. 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MOTOR = "motor"  # key of the steering-output saliency map in `neuron_saliency`'s result


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _conv_geometry(conv: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Kernel, stride and (top/left) padding of a conv layer; 'same'/'valid' resolved."""
    k = _pair(conv.kernel_size)
    s = _pair(conv.stride)
    d = _pair(conv.dilation)
    if d != (1, 1):
        raise ValueError("VisualBackProp here supports undilated convolutions only")
    p = conv.padding
    if isinstance(p, str):
        # PyTorch's 'same' pads (k-1)//2 before and the rest after; 'valid' pads nothing.
        p = ((k[0] - 1) // 2, (k[1] - 1) // 2) if p == "same" else (0, 0)
    return k, s, _pair(p)


def upsample_like_conv(
    m: torch.Tensor, conv: nn.Conv2d, out_hw: tuple[int, int]
) -> torch.Tensor:
    """Spread `m` (N,1,h,w) back over the input grid of `conv` with a transposed conv of ones.

    Each output location of `conv` adds its value to every input pixel in its k×k receptive
    field (stride s). The full transposed convolution is cropped by the padding at the top/left
    and to `out_hw`, which is what `conv_transpose2d(padding=p, output_padding=...)` computes,
    but works for any padding the forward layer used (e.g. an explicit F.pad before the conv).
    """
    (kh, kw), (sh, sw), (ph, pw) = _conv_geometry(conv)
    ones = torch.ones(1, 1, kh, kw, dtype=m.dtype, device=m.device)
    full = F.conv_transpose2d(m, ones, stride=(sh, sw))
    H, W = out_hw
    full = full[:, :, ph : ph + H, pw : pw + W]
    if full.shape[-2] < H or full.shape[-1] < W:  # padding after > padding before: zeros
        full = F.pad(full, (0, W - full.shape[-1], 0, H - full.shape[-2]))
    return full


def visual_backprop_from_maps(
    maps: Sequence[torch.Tensor],
    conv_layers: Sequence[nn.Conv2d],
    input_hw: tuple[int, int],
    normalize: bool = True,
) -> torch.Tensor:
    """VisualBackProp given each conv layer's post-ReLU maps (N,C_l,h_l,w_l), shallow first.

    mask = mean_c(maps[-1]); for l = L-1 … 1: mask = up_l(mask) · mean_c(maps[l-1]);
    finally mask = up_0(mask) onto the input grid; each image's mask is scaled to [0, 1].
    """
    if len(maps) != len(conv_layers) or not maps:
        raise ValueError(f"need one activation map per conv layer, got {len(maps)} maps "
                         f"for {len(conv_layers)} layers")
    avg = [a.mean(dim=1, keepdim=True) for a in maps]
    mask = avg[-1]
    for layer in range(len(avg) - 1, 0, -1):
        shallower = avg[layer - 1]
        mask = upsample_like_conv(mask, conv_layers[layer], tuple(shallower.shape[-2:]))
        mask = mask * shallower
    mask = upsample_like_conv(mask, conv_layers[0], input_hw)[:, 0]
    if normalize:
        flat = mask.flatten(1)
        lo = flat.min(dim=1).values[:, None, None]
        hi = flat.max(dim=1).values[:, None, None]
        span = hi - lo
        mask = torch.where(span > 0, (mask - lo) / span.clamp_min(1e-12), torch.zeros_like(mask))
    return mask


def _input_hw(images: torch.Tensor | np.ndarray) -> tuple[int, int]:
    if images.dtype in (np.uint8, torch.uint8):
        return int(images.shape[-3]), int(images.shape[-2])  # (N,H,W,3)
    return int(images.shape[-2]), int(images.shape[-1])  # (N,3,H,W)


@torch.no_grad()
def visual_backprop(cnn: nn.Module, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """VisualBackProp masks of `cnn` for a batch of frames.

    `images`: uint8 (N,H,W,3) or (H,W,3) camera frames, or float (N,3,H,W) already whitened —
    whatever `cnn.forward_with_activations` accepts. Returns float32 (N,H,W) (or (H,W) for
    one frame) in [0, 1]; an all-zero mask means no pixel reached the deepest layer.
    """
    single = images.ndim == 3 and images.dtype in (np.uint8, torch.uint8)
    x = torch.as_tensor(images)
    if single:
        x = x[None]
    _, maps = cnn.forward_with_activations(x)
    mask = visual_backprop_from_maps(maps, list(cnn.conv_layers), _input_hw(x))
    out = mask.float().cpu().numpy()
    return out[0] if single else out


# --------------------------------------------------------------------------- gradients


class _InputCapture:
    """Forward pre-hook on the first conv layer that swaps its input for a leaf tensor.

    The policy keeps its own preprocessing (per-image whitening) and output head; we only
    intercept the tensor the CNN actually convolves, so gradients are taken with respect to
    the whitened frame, i.e. what the network sees. `scale` (B,) multiplies the input on the
    way (integrated gradients' path α·x, baseline 0 = the frame's mean colour).
    """

    def __init__(self, scale: torch.Tensor | None = None) -> None:
        self.scale = scale
        self.leaf: torch.Tensor | None = None
        self.original: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        self.original = x.detach()
        base = self.original
        if self.scale is not None:
            base = base * self.scale.to(base.dtype).view(-1, *([1] * (base.ndim - 1)))
        self.leaf = base.clone().requires_grad_(True)
        return (self.leaf, *args[1:])


def _first_conv(policy: nn.Module) -> nn.Conv2d:
    layers = getattr(policy.cnn, "conv_layers", None)
    if not layers:
        raise ValueError("policy.cnn has no conv_layers; gradient saliency needs the CNN head")
    return layers[0]


def _whitened_input(policy: nn.Module, frame: np.ndarray) -> torch.Tensor:
    """The (1,3,H,W) input the first convolution sees for `frame` (after whitening)."""
    cap = _InputCapture()
    handle = _first_conv(policy).register_forward_pre_hook(cap)
    try:
        with torch.no_grad():
            policy.cnn(torch.as_tensor(frame)[None])
    finally:
        handle.remove()
    return cap.original


def _unit_count(policy: nn.Module) -> int:
    """Neurons that `neuron_states` reports (Policy.units; else the core's state size)."""
    n = getattr(policy, "units", None)
    if n is None:
        core = getattr(policy, "core", None)
        n = getattr(core, "state_size", None) if core is not None else 0
    return int(n or 0)


def _repeat_state(h, n: int):
    if h is None:
        return None
    if isinstance(h, tuple | list):
        return type(h)(_repeat_state(t, n) for t in h)
    h = h.detach()
    return h.expand(n, *h.shape[1:]).contiguous() if h.shape[0] == 1 else h.repeat(n, 1)


def _timespans(dt: float | None, n: int) -> torch.Tensor | None:
    return None if dt is None else torch.full((n, 1), float(dt), dtype=torch.float32)


def _grad_call(
    policy: nn.Module,
    frame: np.ndarray,
    h,
    dt: float | None,
    idx: list[int],
    scale: torch.Tensor | None,
) -> torch.Tensor:
    """One batched backward pass: row block i holds copies of the frame for target idx[i].

    Targets index the vector [neuron states…, steering]: index `units` is the steering
    output. Rows are independent (eval mode, per-image whitening), so the gradient of the sum
    of each row's own target gives every row its own gradient. Returns (len(idx)*reps,3,H,W).
    """
    reps = 1 if scale is None else len(scale)
    n = len(idx) * reps
    units = _unit_count(policy)
    images = torch.as_tensor(np.ascontiguousarray(frame)).expand(n, 1, *frame.shape).contiguous()
    hx = _repeat_state(h, n)
    ts = _timespans(dt, n)
    cap = _InputCapture(None if scale is None else scale.repeat(len(idx)))
    handle = _first_conv(policy).register_forward_pre_hook(cap)
    want_motor = units in idx
    want_neurons = any(k < units for k in idx)
    try:
        with torch.enable_grad():
            steer = states = None
            if want_neurons:
                out = policy(images, hx, ts, return_states=True)  # (steering, h, states)
                steer = out[0]
                states = out[2] if len(out) >= 3 else policy.neuron_states(images, hx, ts)
            if want_motor and steer is None:
                steer = policy(images, hx, ts)[0]
            table = torch.cat([
                states[:, -1] if states is not None else torch.zeros(n, units),
                steer.reshape(n, -1)[:, -1:] if want_motor else torch.zeros(n, 1),
            ], dim=1)
            sel = torch.tensor(idx).repeat_interleave(reps)
            total = table[torch.arange(n), sel].sum()
            if cap.leaf is None:
                raise ValueError("the policy never ran its CNN; cannot take pixel gradients")
            if not total.requires_grad:
                return torch.zeros_like(cap.leaf)  # output does not depend on the frame
            return torch.autograd.grad(total, cap.leaf)[0]
    finally:
        handle.remove()


def _grads(
    policy: nn.Module,
    frame: np.ndarray,
    h,
    dt: float | None,
    targets: list[int | str],
    scale: torch.Tensor | None,
) -> torch.Tensor:
    """Gradients for each target, blocks in the order of `targets`: (len*reps, 3, H, W)."""
    units = _unit_count(policy)
    idx = [units if t == MOTOR else int(t) for t in targets]
    return _grad_call(policy, frame, h, dt, idx, scale)


def neuron_saliency(
    policy: nn.Module,
    frame: np.ndarray,
    h=None,
    dt: float | None = None,
    neurons: Sequence[int] | None = None,
    motor: bool = True,
    method: str = "gradient",
    reduce: str = "max",
    ig_steps: int = 16,
) -> dict[int | str, np.ndarray]:
    """Gradient saliency of each neuron's state (and the steering output) for one frame.

    For neuron k at time t: |d x_k(t) / d frame(t)|, where the state from earlier frames `h`
    is held fixed (detached), so the map shows what *this* frame contributes. `frame` is the
    uint8 (H,W,3) camera image as the policy sees it; `h` the state before it (None = initial);
    `dt` the elapsed time (for liquid cores). Gradients are taken w.r.t. the CNN's whitened
    input and reduced over colour channels by `reduce` ("max" or "sum") of absolute values.

    `method="integrated"`: integrated gradients (Sundararajan et al. 2017) along α·x, α∈(0,1],
    from the baseline 0 (the frame's mean colour after whitening), `ig_steps` midpoint steps;
    the attribution x·mean_α ∇f(α·x) is reduced the same way.

    Returns {k: float32 (H,W)} for each requested neuron (default: all units) and
    {"motor": ...} when `motor`. Values are unnormalised (comparable across neurons).
    """
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 (H,W,3), got {frame.dtype} {frame.shape}")
    if reduce not in ("max", "sum"):
        raise ValueError(f"reduce must be 'max' or 'sum', got {reduce!r}")
    if method not in ("gradient", "integrated"):
        raise ValueError(f"method must be 'gradient' or 'integrated', got {method!r}")
    units = _unit_count(policy)
    if neurons is None:
        neurons = list(range(units))
    for k in neurons:
        if not 0 <= int(k) < units:
            raise ValueError(f"neuron index {k} out of range: this policy has {units} units "
                             f"(valid 0..{units - 1})")
    neurons = list(dict.fromkeys(int(k) for k in neurons))  # unique, order kept
    targets: list[int | str] = [*neurons] + ([MOTOR] if motor else [])
    if not targets:
        return {}
    was_training = policy.training
    policy.eval()
    try:
        if method == "gradient":
            g = _grads(policy, frame, h, dt, targets, None)
            attr = g.abs()
        else:
            steps = max(1, int(ig_steps))
            alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
            x = _whitened_input(policy, frame)  # (1,3,H,W)
            g = _grads(policy, frame, h, dt, targets, alphas)  # (len*steps,3,H,W)
            g = g.view(len(targets), steps, *g.shape[1:]).mean(dim=1)
            attr = (x * g).abs()
        red = attr.amax(dim=1) if reduce == "max" else attr.sum(dim=1)
    finally:
        policy.train(was_training)
    red = red.detach().float().cpu().numpy()
    return {t: red[i] for i, t in enumerate(targets)}


def integrated_gradients_raw(
    policy: nn.Module,
    frame: np.ndarray,
    h=None,
    dt: float | None = None,
    target: int | str = MOTOR,
    ig_steps: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Signed integrated-gradients attribution (3,H,W) and the whitened input (3,H,W).

    Exposed for checks: by completeness, attribution.sum() ≈ f(x) − f(0).
    """
    steps = max(1, int(ig_steps))
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    x = _whitened_input(policy, frame)
    g = _grads(policy, frame, h, dt, [target], alphas).mean(dim=0, keepdim=True)
    return (x * g)[0].detach().numpy(), x[0].numpy()
