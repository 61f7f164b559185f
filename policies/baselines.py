"""Recurrent and feed-forward cores of the paper's baselines (LSTM, GRU, CT-RNN, PilotNet head).

Each recurrent core follows the cells' sequence contract (docs/architecture.md):
``forward(x (B,T,F), hx=None, timespans=None (B,T), return_states=False) -> (y, h_last)``
with ``y`` all hidden states ``(B,T,units)`` (the policy's readout maps them to steering), and
the rest of the `policies.core.Core` protocol: ``step`` / ``step_exportable`` (one frame),
``outputs_from_states`` (the identity: the outputs are the states), ``initial_state(batch)``,
``state_names``, ``state_size``, ``output_size``. LSTM and GRU ignore elapsed time (they are
discrete-time models; that they cannot use it is part of the comparison).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from policies.core import step_dt


def _check_input(x: torch.Tensor, input_dim: int, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != input_dim:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what}.step: x must be a (batch, {input_dim}) tensor, got {got}")


class _StatesAreOutputs:
    """Cores whose outputs are their hidden states (the readout maps them to steering)."""

    def outputs_from_states(self, states: torch.Tensor) -> torch.Tensor:
        return states


def _check_state(hx: torch.Tensor, batch: int, size: int, what: str) -> None:
    if not isinstance(hx, torch.Tensor) or hx.dim() != 2 or tuple(hx.shape) != (batch, size):
        got = tuple(hx.shape) if isinstance(hx, torch.Tensor) else type(hx).__name__
        raise ValueError(f"{what} state must be a tensor of shape ({batch}, {size}), got {got}")


class LSTMCore(_StatesAreOutputs, nn.Module):
    """torch's LSTM (batch first); state is the tuple (h, c), each (B, units)."""

    state_names = ("h", "c")

    def __init__(self, input_dim: int, units: int = 64) -> None:
        super().__init__()
        self.rnn = nn.LSTM(input_dim, units, batch_first=True)
        self.input_dim, self.units = input_dim, units
        self.state_size = units
        self.output_size = units

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.rnn.weight_hh_l0.new_zeros(batch, self.units)
        return z, z.clone()

    def forward(self, x, hx=None, timespans=None, return_states=False):
        b = x.shape[0]
        if hx is None:
            hx = self.initial_state(b)
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise ValueError(
                f"LSTM state must be a tuple (h, c) of two ({b}, {self.units}) tensors, "
                f"got {type(hx).__name__}"
            )
        _check_state(hx[0], b, self.units, "LSTM h")
        _check_state(hx[1], b, self.units, "LSTM c")
        y, (h, c) = self.rnn(x, (hx[0].unsqueeze(0), hx[1].unsqueeze(0)))
        return y, (h[0], c[0])

    def step(self, x: torch.Tensor, h: tuple[torch.Tensor, torch.Tensor] | None = None,
             dt: float | torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One frame (B,F) → ((B,units), (h, c)); ``dt`` is validated and ignored."""
        _check_input(x, self.input_dim, "LSTM")
        step_dt(x, dt, "LSTM")
        y, hc = self.forward(x.unsqueeze(1), h)
        return y[:, 0], hc

    def step_exportable(self, x: torch.Tensor, h: tuple[torch.Tensor, torch.Tensor],
                        dt: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        y, (hn, cn) = self.rnn(x.unsqueeze(1), (h[0].unsqueeze(0), h[1].unsqueeze(0)))
        return y[:, 0], (hn[0], cn[0])


class GRUCore(_StatesAreOutputs, nn.Module):
    """torch's GRU (batch first); state (B, units)."""

    state_names = ("h",)

    def __init__(self, input_dim: int, units: int = 64) -> None:
        super().__init__()
        self.rnn = nn.GRU(input_dim, units, batch_first=True)
        self.input_dim, self.units = input_dim, units
        self.state_size = units
        self.output_size = units

    def initial_state(self, batch: int) -> torch.Tensor:
        return self.rnn.weight_hh_l0.new_zeros(batch, self.units)

    def forward(self, x, hx=None, timespans=None, return_states=False):
        b = x.shape[0]
        if hx is None:
            hx = self.initial_state(b)
        _check_state(hx, b, self.units, "GRU")
        y, h = self.rnn(x, hx.unsqueeze(0))
        return y, h[0]

    def step(self, x: torch.Tensor, h: torch.Tensor | None = None,
             dt: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame (B,F) → ((B,units), h); ``dt`` is validated and ignored."""
        _check_input(x, self.input_dim, "GRU")
        step_dt(x, dt, "GRU")
        y, hn = self.forward(x.unsqueeze(1), h)
        return y[:, 0], hn

    def step_exportable(self, x: torch.Tensor, h: torch.Tensor,
                        dt: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        y, hn = self.rnn(x.unsqueeze(1), h.unsqueeze(0))
        return y[:, 0], hn[0]


class CTRNN(_StatesAreOutputs, nn.Module):
    """Continuous-time RNN: τ dh/dt = −h + tanh(W x + U h + b), integrated over the elapsed time.

    Each frame interval Δt is split into ``unfolds`` sub-steps of the exponential-Euler
    scheme h ← h + (1 − e^{−δ/τ})·(tanh(Wx + Uh + b) − h), δ = Δt/unfolds. For small δ/τ it is
    the explicit Euler step h += δ/τ·(target − h); unlike explicit Euler it never overshoots
    for long gaps (dropped frames), so the state stays in [−1, 1] for any Δt ≥ 0.
    τ = softplus(ρ) + 0.05 > 0 per unit (in the policy's time units, i.e. frame intervals).
    """

    def __init__(self, input_dim: int, units: int = 64, unfolds: int = 3) -> None:
        super().__init__()
        if unfolds < 1:
            raise ValueError(f"unfolds must be >= 1, got {unfolds}")
        self.input_dim, self.units, self.unfolds = input_dim, units, int(unfolds)
        self.input_map = nn.Linear(input_dim, units)
        self.recurrent = nn.Linear(units, units, bias=False)
        # τ starts near 1 frame interval: softplus(0.5) + 0.05 ≈ 1.02.
        self.tau_raw = nn.Parameter(torch.full((units,), 0.5))
        nn.init.orthogonal_(self.recurrent.weight)
        self.state_size = units
        self.output_size = units

    state_names = ("h",)

    def initial_state(self, batch: int) -> torch.Tensor:
        return self.tau_raw.new_zeros(batch, self.units)

    def tau(self) -> torch.Tensor:
        return F.softplus(self.tau_raw) + 0.05

    def _alpha(self, timespans: torch.Tensor | None, b: int, t: int) -> torch.Tensor:
        """Blend factor 1 − e^{−δ/τ} per sample, frame and unit (B,T,units)."""
        inv_tau = 1.0 / self.tau()
        if timespans is None:
            # Δt = 1 time unit: the blend factor is the same every step.
            return (1.0 - torch.exp(-inv_tau / self.unfolds)).expand(b, t, self.units)
        delta = (timespans / self.unfolds).unsqueeze(-1)  # (B,T,1)
        return 1.0 - torch.exp(-delta * inv_tau)  # (B,T,units)

    def _frame(self, wx: torch.Tensor, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """One frame: `unfolds` exponential-Euler sub-steps (the step and the sequence share it)."""
        u = self.recurrent.weight.t()
        for _ in range(self.unfolds):
            h = h + a * (torch.tanh(wx + h @ u) - h)
        return h

    def forward(self, x, hx=None, timespans=None, return_states=False):
        b, t = x.shape[0], x.shape[1]
        if hx is None:
            hx = self.initial_state(b)
        _check_state(hx, b, self.units, "CT-RNN")
        alpha = self._alpha(timespans, b, t)
        wx = self.input_map(x)  # hoisted out of the time loop
        h = hx
        ys = []
        for k in range(t):
            h = self._frame(wx[:, k], h, alpha[:, k])
            ys.append(h)
        return torch.stack(ys, dim=1), h

    def step(self, x: torch.Tensor, h: torch.Tensor | None = None,
             dt: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame (B,F) → ((B,units), h); ``dt`` None, a float or (B,) in time units."""
        _check_input(x, self.input_dim, "CT-RNN")
        b = int(x.shape[0])
        h = self.initial_state(b) if h is None else h
        _check_state(h, b, self.units, "CT-RNN")
        d = step_dt(x, dt, "CT-RNN")
        hn = self._frame(self.input_map(x), h, self._alpha(d, b, 1)[:, 0])
        return hn, hn

    def step_exportable(self, x: torch.Tensor, h: torch.Tensor,
                        dt: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        hn = self._frame(self.input_map(x), h, self._alpha(dt, int(x.shape[0]), 1)[:, 0])
        return hn, hn


class PilotNetHead(nn.Module):
    """PilotNet's fully connected head (100 → 50 → 10 → 1, ReLU) on the 32 conv features.

    The feed-forward baseline keeps the exact same perception CNN as the NCP policies so
    that only the decision part differs; it has no state and ignores time.
    """

    def __init__(self, input_dim: int, hidden: tuple[int, ...] = (100, 50, 10)) -> None:
        super().__init__()
        dims = (input_dim, *hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], 1)
        self.hidden_sizes = tuple(hidden)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Activations of the last hidden layer (its 'neurons', for explanations)."""
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))

