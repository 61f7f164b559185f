"""Recurrent and feed-forward cores of the paper's baselines (LSTM, GRU, CT-RNN, PilotNet head).

Each recurrent core follows the cells' sequence contract (docs/architecture.md):
``forward(x (B,T,F), hx=None, timespans=None (B,T), return_states=False) -> (y, h_last)``
with ``y`` all hidden states ``(B,T,units)`` (the policy's readout maps them to steering), plus
``state_size``, ``output_size`` and ``initial_state(batch)``. LSTM and GRU ignore elapsed time
(they are discrete-time models; that they cannot use it is part of the comparison).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _check_state(hx: torch.Tensor, batch: int, size: int, what: str) -> None:
    if not isinstance(hx, torch.Tensor) or hx.dim() != 2 or tuple(hx.shape) != (batch, size):
        got = tuple(hx.shape) if isinstance(hx, torch.Tensor) else type(hx).__name__
        raise ValueError(f"{what} state must be a tensor of shape ({batch}, {size}), got {got}")


class LSTMCore(nn.Module):
    """torch's LSTM (batch first); state is the tuple (h, c), each (B, units)."""

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


class GRUCore(nn.Module):
    """torch's GRU (batch first); state (B, units)."""

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


class CTRNN(nn.Module):
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

    def initial_state(self, batch: int) -> torch.Tensor:
        return self.tau_raw.new_zeros(batch, self.units)

    def tau(self) -> torch.Tensor:
        return F.softplus(self.tau_raw) + 0.05

    def forward(self, x, hx=None, timespans=None, return_states=False):
        b, t = x.shape[0], x.shape[1]
        if hx is None:
            hx = self.initial_state(b)
        _check_state(hx, b, self.units, "CT-RNN")
        inv_tau = 1.0 / self.tau()
        if timespans is None:
            # Δt = 1 time unit: the blend factor is the same every step.
            alpha = (1.0 - torch.exp(-inv_tau / self.unfolds)).expand(b, t, self.units)
        else:
            delta = (timespans / self.unfolds).unsqueeze(-1)  # (B,T,1)
            alpha = 1.0 - torch.exp(-delta * inv_tau)  # (B,T,units)
        wx = self.input_map(x)  # hoisted out of the time loop
        u = self.recurrent.weight.t()
        h = hx
        ys = []
        for k in range(t):
            a = alpha[:, k]
            for _ in range(self.unfolds):
                h = h + a * (torch.tanh(wx[:, k] + h @ u) - h)
            ys.append(h)
        return torch.stack(ys, dim=1), h


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

