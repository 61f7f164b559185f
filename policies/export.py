"""Export one closed-loop policy step (CNN + core, state in → steering and state out) to ONNX.

The exported graph takes what a car computer has: the raw uint8 camera frame, the state
from the previous step and the real elapsed seconds, and returns steering and the new
state. Whitening, the time-unit conversion and the readout are inside the graph, so the
runtime needs no Python from this package.

Inputs: ``image`` uint8 (B,H,W,3); the state (``h`` (B,units), or ``h`` and ``c`` for the
LSTM; none for the feed-forward CNN); ``dt`` float32 (B,) seconds for policies that use
time. Outputs: ``steering`` (B,), then the new state (``h_out``, ``c_out``). The batch
dimension is dynamic. The legacy TorchScript-based exporter is used because it needs no
extra package (the dynamo exporter needs ``onnxscript``); the cells provide
``step_exportable`` without data-dependent control flow for it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from policies.atomicio import atomic_write_bytes
from policies.policy import Policy


class PolicyStep(nn.Module):
    """A policy's single step as a pure tensor function (the graph that gets exported).

    CNN, then the core's `step_exportable` (`policies.core.Core`), then `Policy.steer`: the
    same functions `Policy.step` runs, without the input checks and the C fast path.
    """

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.policy = policy
        self.state_names: tuple[str, ...] = policy.state_names
        self.stateless = not self.state_names
        self.uses_time = policy.uses_time

    def input_names(self) -> list[str]:
        names = ["image", *self.state_names]
        if self.uses_time:
            names.append("dt")
        return names

    def output_names(self) -> list[str]:
        return ["steering", *(f"{n}_out" for n in self.state_names)]

    def forward(self, image: torch.Tensor, *rest: torch.Tensor):
        p = self.policy
        feats = p.cnn(image)  # (B, F): whitening inside
        rest = list(rest)
        b = feats.shape[0]
        dt = (rest.pop() / p.time_unit_s).reshape(b, 1) if self.uses_time else torch.ones_like(feats[:, :1])
        if self.stateless:
            return p.step_exportable(feats, p.initial_state(b), dt)[0]
        h = tuple(rest) if len(self.state_names) > 1 else rest[0]
        steering, h = p.step_exportable(feats, h, dt)
        return (steering, *h) if isinstance(h, tuple) else (steering, h)


def example_inputs(policy: Policy, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the exported step's signature (frames, state, dt in seconds)."""
    g = torch.Generator().manual_seed(seed)
    h, w = policy.image_hw
    args: list[torch.Tensor] = [torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8, generator=g)]
    n = policy.state_size
    for _ in policy.state_names:
        args.append(torch.randn(batch, n, generator=g) * 0.5)
    if policy.uses_time:
        args.append(policy.time_unit_s * (0.5 + torch.rand(batch, generator=g)))
    return tuple(args)


def export_onnx(policy: Policy, path: str | os.PathLike, opset: int = 17) -> Path:
    """Write `policy`'s step to an ONNX file (atomically, through `policies.atomicio`)."""
    out = Path(path)
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"the output file should end in .onnx, got {out.name!r}")
    if not out.parent.exists():
        raise ValueError(f"the output directory {out.parent} does not exist")
    step = PolicyStep(policy).eval()
    args = example_inputs(policy, batch=2)
    names_in, names_out = step.input_names(), step.output_names()
    dynamic = {n: {0: "batch"} for n in names_in + names_out}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notes
        torch.onnx.export(step, args, buf, input_names=names_in, output_names=names_out,
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    atomic_write_bytes(out, buf.getvalue())  # fsynced, mode 0644, no temp file left on error
    return out


def check_onnx(policy: Policy, path: str | os.PathLike, steps: int = 4, batch: int = 2,
               seed: int = 1) -> float:
    """Max |difference| between onnxruntime and PyTorch over `steps` chained steps.

    The state returned by each runtime is fed back to that runtime, so drift would show.
    Raises ImportError when onnxruntime is not installed.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    step = PolicyStep(policy).eval()
    names = step.input_names()
    args = list(example_inputs(policy, batch=batch, seed=seed))
    state_t = args[1:1 + (len(names) - 1 - int(step.uses_time))]
    state_o = [a.numpy() for a in state_t]
    worst = 0.0
    for k in range(steps):
        frame_args = example_inputs(policy, batch=batch, seed=seed + 100 + k)
        image = frame_args[0]
        dt = frame_args[-1] if step.uses_time else None
        with torch.no_grad():
            out_t = step(image, *state_t, *([dt] if dt is not None else []))
        out_t = out_t if isinstance(out_t, tuple) else (out_t,)
        feed = {"image": image.numpy()}
        for n, s in zip(names[1:], state_o):
            feed[n] = s
        if dt is not None:
            feed["dt"] = dt.numpy()
        out_o = sess.run(None, feed)
        for a, b in zip(out_t, out_o):
            worst = max(worst, float(np.abs(a.numpy() - b).max()))
        state_t = list(out_t[1:])
        state_o = list(out_o[1:])
    return worst
