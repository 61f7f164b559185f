"""The contract between a `Policy` and its recurrent core (LTC, CfC, LSTM, GRU, CT-RNN).

Why a protocol: the policy, the closed-loop step and the ONNX graph (`policies.export`) used
to probe cores (``hasattr(core, "step")``, ``isinstance(core, LSTMCore)``, the class name
``"LTC"``) and fell back to a length-1 sequence for the cores that had no step. Every core now
offers the same five members, so `Policy` calls them without asking what the core is:

- ``forward(x (B,T,F), hx=None, timespans (B,T)=None, return_states=False) -> (y, h_last)``:
  the sequence (training) path, ``y`` (B,T,output_size) or all states (B,T,state_size);
- ``step(x (B,F), h, dt) -> (y (B,output_size), h)``: one closed-loop step; ``dt`` is None
  (one time unit), a positive float or a (B,) tensor of time units. It may take a fast path
  (the liquid cells' C kernels) but computes the same function as ``step_exportable``;
- ``step_exportable(x, h, dt (B,1)) -> (y, h)``: the pure tensor step, without validation
  or data-dependent control flow, which ``torch.export``/ONNX trace;
- ``outputs_from_states(states) -> y``: the output (the readout's input) from the states
  that ``forward(..., return_states=True)`` returns;
- ``initial_state(batch)`` and ``state_names``: the state's structure, a tensor
  (``("h",)``) or a tuple of tensors (``("h", "c")`` for the LSTM), all (B, state_size).

Cores that ignore elapsed time (LSTM, GRU) accept ``dt`` and ignore it. The feed-forward CNN
policy has no core (``Policy.core is None``).
"""

from __future__ import annotations

from typing import Protocol, Union, runtime_checkable

import torch

State = Union[torch.Tensor, tuple[torch.Tensor, ...]]  # noqa: UP007 - a runtime alias


@runtime_checkable
class Core(Protocol):
    """What `policies.policy.Policy` needs from a recurrent core (see the module doc)."""

    state_size: int
    output_size: int
    state_names: tuple[str, ...]

    def initial_state(self, batch: int = 1) -> State: ...

    def forward(self, x: torch.Tensor, hx: State | None = None,
                timespans: torch.Tensor | None = None,
                return_states: bool = False) -> tuple[torch.Tensor, State]: ...

    def step(self, x: torch.Tensor, h: State | None = None,
             dt: float | torch.Tensor | None = None) -> tuple[torch.Tensor, State]: ...

    def step_exportable(self, x: torch.Tensor, h: State,
                        dt: torch.Tensor) -> tuple[torch.Tensor, State]: ...

    def outputs_from_states(self, states: torch.Tensor) -> torch.Tensor: ...


def step_dt(x: torch.Tensor, dt: float | torch.Tensor | None, who: str) -> torch.Tensor | None:
    """A core step's elapsed time as (B, 1) time units (None stays None: one unit)."""
    if dt is None:
        return None
    b = int(x.shape[0])
    if isinstance(dt, bool):
        raise ValueError(f"{who}.step: dt must be a positive float or a ({b},) tensor, got a bool")
    if isinstance(dt, (int, float)):
        v = float(dt)
        if not (v > 0 and v != float("inf")):
            raise ValueError(f"{who}.step: dt must be finite and > 0, got {dt}")
        return torch.full((b, 1), v, dtype=x.dtype, device=x.device)
    if isinstance(dt, torch.Tensor):
        d = dt.reshape(1).expand(b) if dt.dim() == 0 else dt
        if d.dim() == 2 and tuple(d.shape) == (b, 1):
            d = d[:, 0]
        if tuple(d.shape) != (b,):
            raise ValueError(f"{who}.step: dt must have shape ({b},), got {tuple(dt.shape)}")
        if not bool(torch.isfinite(d).all()) or bool((d <= 0).any()):
            raise ValueError(f"{who}.step: dt must be finite and > 0 (elapsed time per sample)")
        return d.to(device=x.device, dtype=x.dtype).reshape(b, 1)
    raise ValueError(f"{who}.step: dt must be None, a positive float or a ({b},) tensor, "
                     f"got {type(dt).__name__}")


__all__ = ["Core", "State", "step_dt"]
