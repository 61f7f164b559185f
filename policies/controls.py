"""Control policies of the paper's comparison: what separates wiring, cell, smoothing and time.

Three confounds of the v1 comparison (issue 16) each get a control:

* **Wiring, with the schedule held fixed.** `layered_random_wiring` and `layered_full_wiring`
  keep the NCP's neuron groups and update order (``layers = [inter, command, motor]``), so a
  CfC on them propagates sensory → inter → command → motor within one frame exactly like
  ``ncp-cfc`` (an LTC propagates through its ODE unfolds on any graph; the layered graphs
  give it the same path lengths as the NCP). Only which pairs connect differs:

  - *random*: every block of the NCP (sensory→inter, inter→command, command→command,
    command→motor) keeps its synapse count, but the synapses are placed uniformly at random
    inside the block (the NCP's fixed fan-out / fan-in rule is dropped); draws are repeated
    (seeded) until every inter neuron has a sensory input and a path inter → command →
    motor, so no neuron is cut off from the output;
  - *full*: every pair of consecutive layers is fully connected (sensory→inter,
    inter→command, command→motor) and the command layer keeps the NCP's own recurrent
    synapses (same seed), so the recurrence is the same and only density differs.

* **Smoothing.** `SmoothedPolicy` puts an exponential moving average on the steering of a
  CNN or LSTM policy: ``y ← y + (1 − exp(−Δt/τ))·(u − y)`` with the true elapsed Δt (it
  respects dropped frames and jitter), τ in seconds (``ema_tau_s``). The filter's state (its
  last output, 0 at the start like every recurrent state) is part of the policy state, so
  `Policy.step` and the sequence forward compute the same thing.

* **Time.** The time-blind LTC is the NCP-LTC built with ``uses_time=False``: `Policy` then
  never passes elapsed time to the cell, which integrates one nominal interval per frame
  whatever Δt the caller gives (the factory name is ``ncp-ltc-timeblind``).

`effective_parameter_count` counts the weights that can change the output (masked-out
entries of a dense CfC weight matrix excluded); `parameter_table` puts it beside the storage
count (what ``parameters()`` holds), for every policy of the factory.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from policies.baselines import LSTMCore
from policies.cnn import PerceptionCNN
from policies.policy import Policy
from policies.wiring import Wiring

__all__ = [
    "SmoothedPolicy",
    "effective_parameter_count",
    "ema_alpha",
    "layered_full_wiring",
    "layered_random_wiring",
    "parameter_table",
    "steering_rate",
]

_MAX_DRAWS = 1000


def _ncp_blocks(ref: Wiring) -> dict[str, tuple[str, list[int], list[int]]]:
    """The NCP's synapse blocks: name → (matrix, source indices, target indices)."""
    g = ref.groups
    return {
        "sensory_inter": ("sensory", list(range(ref.input_dim)), g["inter"]),
        "inter_command": ("adjacency", g["inter"], g["command"]),
        "command_command": ("adjacency", g["command"], g["command"]),
        "command_motor": ("adjacency", g["command"], g["motor"]),
    }


def _layered_params(ref: Wiring, kind: str) -> dict[str, Any]:
    return dict(ref.params, layered=kind)


def layered_random_wiring(input_dim: int = 32, seed: int = 0, **ncp_kwargs: Any) -> Wiring:
    """NCP groups, layers and per-block synapse counts; synapses placed at random per block.

    ``ncp_kwargs`` go to `Wiring.ncp` (layer sizes, fan-outs) and define the reference whose
    counts are kept. Raises ValueError when no draw connects every inter neuron to a motor.
    """
    ref = Wiring.ncp(input_dim=input_dim, seed=seed, **ncp_kwargs)
    rng = np.random.default_rng([int(seed), 104729])
    blocks = _ncp_blocks(ref)
    counts = {}
    for name, (mat, src, dst) in blocks.items():
        m = ref.sensory_adjacency if mat == "sensory" else ref.adjacency
        counts[name] = int(np.abs(m[np.ix_(src, dst)]).sum())
    for _ in range(_MAX_DRAWS):
        adj = np.zeros_like(ref.adjacency)
        sadj = np.zeros_like(ref.sensory_adjacency)
        for name, (mat, src, dst) in blocks.items():
            m = sadj if mat == "sensory" else adj
            pairs = rng.choice(len(src) * len(dst), counts[name], replace=False)
            signs = rng.choice(np.array([-1, 1], np.int8), counts[name])
            for p, s in zip(pairs, signs):
                m[src[p // len(dst)], dst[p % len(dst)]] = s
        if _inter_reaches_motor(adj, sadj, ref.groups):
            return Wiring(adj, sadj, ref.output_dim, ref.groups, ref.layers, "layered_random",
                          dict(_layered_params(ref, "random"), counts=counts))
    raise ValueError(f"no random layered wiring with the NCP's counts {counts} connects every "
                     f"inter neuron to a motor neuron in {_MAX_DRAWS} draws; use larger fan-outs")


def _inter_reaches_motor(adj: np.ndarray, sadj: np.ndarray, groups: dict[str, list[int]]) -> bool:
    """Every inter neuron has a sensory input and a forward path inter → command → motor."""
    inter, command, motor = groups["inter"], groups["command"], groups["motor"]
    drives_motor = np.abs(adj[np.ix_(command, motor)]).sum(1) > 0  # per command neuron
    for i in inter:
        if not sadj[:, i].any():
            return False
        targets = np.nonzero(adj[i, command])[0]
        if not drives_motor[targets].any():
            return False
    return True


def layered_full_wiring(input_dim: int = 32, seed: int = 0, **ncp_kwargs: Any) -> Wiring:
    """Consecutive NCP layers fully connected; the NCP's own command→command recurrence."""
    ref = Wiring.ncp(input_dim=input_dim, seed=seed, **ncp_kwargs)
    rng = np.random.default_rng([int(seed), 130363])
    g = ref.groups
    adj = np.zeros_like(ref.adjacency)
    sadj = rng.choice(np.array([-1, 1], np.int8), ref.sensory_adjacency.shape).astype(np.int8)
    sadj[:, g["command"] + g["motor"]] = 0
    for src, dst in ((g["inter"], g["command"]), (g["command"], g["motor"])):
        adj[np.ix_(src, dst)] = rng.choice(np.array([-1, 1], np.int8), (len(src), len(dst)))
    cc = np.ix_(g["command"], g["command"])
    adj[cc] = ref.adjacency[cc]
    return Wiring(adj, sadj, ref.output_dim, ref.groups, ref.layers, "layered_full",
                  _layered_params(ref, "full"))


# ----------------------------------------------------------------------------- smoothing


def ema_alpha(dt_s: torch.Tensor | float, tau_s: float) -> torch.Tensor | float:
    """Blend factor of an exponential moving average over an interval Δt: 1 − exp(−Δt/τ)."""
    if isinstance(dt_s, torch.Tensor):
        return 1.0 - torch.exp(-dt_s / tau_s)
    return 1.0 - math.exp(-float(dt_s) / tau_s)


class SmoothedPolicy(Policy):
    """A CNN or LSTM policy whose steering goes through an EMA of time constant ``ema_tau_s``.

    The state is one (B, S) tensor: the base core's state flattened ((h, c) of the LSTM, none
    for the CNN), then the filter's last output. ``uses_time`` is True
    (the filter needs the real Δt); the base core itself still ignores time.
    """

    def __init__(self, name: str, cnn: PerceptionCNN, core: nn.Module | None, readout: nn.Module,
                 ema_tau_s: float, time_unit_s: float = 0.1,
                 spec: dict[str, Any] | None = None) -> None:
        if not (isinstance(ema_tau_s, (int, float)) and math.isfinite(ema_tau_s) and ema_tau_s > 0):
            raise ValueError(f"ema_tau_s must be a finite time constant > 0 seconds, got {ema_tau_s!r}")
        if core is not None and not isinstance(core, LSTMCore):
            raise ValueError(f"SmoothedPolicy smooths a CNN head or an LSTM core, got {type(core).__name__}")
        super().__init__(name, cnn, core, readout, uses_time=True, time_unit_s=time_unit_s, spec=spec)
        self.ema_tau_s = float(ema_tau_s)
        self._inner = 0 if core is None else 2 * int(core.state_size)

    @property
    def state_size(self) -> int:
        return self._inner + 1

    def initial_state(self, batch: int = 1) -> torch.Tensor:
        return self.cnn.head_weight.new_zeros(batch, self.state_size)

    def _check_state(self, hx: Any, batch: int) -> None:
        if not isinstance(hx, torch.Tensor) or tuple(hx.shape) != (batch, self.state_size):
            got = (f"tensor of shape {tuple(hx.shape)}" if isinstance(hx, torch.Tensor)
                   else type(hx).__name__)
            raise ValueError(f"{self.name} state must be a tensor of shape ({batch}, "
                             f"{self.state_size}) (see initial_state), got {got}")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ema_tau_s={self.ema_tau_s}"

    def _run(self, feats: torch.Tensor, hx: Any, dt: torch.Tensor | None,
             want_states: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        b, t = feats.shape[0], feats.shape[1]
        if self.core is None:
            hidden = self.readout.features(feats)
            raw = torch.tanh(self.readout.out(hidden)).squeeze(-1)
            states, inner = hidden, hx[:, :0]
        else:
            n = self.core.state_size
            out, (h, c) = self.core(feats, (hx[:, :n].contiguous(), hx[:, n:2 * n].contiguous()))
            raw = torch.tanh(self.readout(out)).squeeze(-1)
            states, inner = out, torch.cat([h, c], 1)
        # dt arrives in time units (frame intervals); None = one nominal interval each
        dt_s = (torch.full((b, t), self.time_unit_s, dtype=raw.dtype, device=raw.device)
                if dt is None else dt.to(raw.dtype) * self.time_unit_s)
        alpha = ema_alpha(dt_s, self.ema_tau_s)
        y = hx[:, -1]
        ys = []
        for k in range(t):
            y = y + alpha[:, k] * (raw[:, k] - y)
            ys.append(y)
        steering = torch.stack(ys, 1)
        h_new = torch.cat([inner, y.unsqueeze(1)], 1)
        return steering, h_new, states if want_states else None


# ----------------------------------------------------------------------------- counts


def _count(m: nn.Module | None) -> int:
    return 0 if m is None else int(sum(p.numel() for p in m.parameters()))


def effective_parameter_count(policy: Policy) -> int:
    """Trainable weights that can change the steering: a wired CfC stores dense
    (inputs, heads × neurons) matrices multiplied by 0/1 masks, whose masked entries are
    excluded here; the LTC and the baselines store only live weights (effective = storage)."""
    core = policy.core
    core_eff = _count(core)
    if core is not None and hasattr(core, "effective_parameter_count"):
        core_eff = int(core.effective_parameter_count())
    return _count(policy.cnn) + core_eff + _count(policy.readout)


def parameter_table(policy: Policy) -> dict[str, Any]:
    """Effective and storage counts, total and per part, plus the wiring's synapse counts."""
    core = policy.core
    core_eff = _count(core)
    if core is not None and hasattr(core, "effective_parameter_count"):
        core_eff = int(core.effective_parameter_count())
    w = getattr(core, "wiring", None)
    return {
        "policy": policy.name,
        "effective": effective_parameter_count(policy),
        "storage": policy.parameter_count(),
        "cnn": _count(policy.cnn),
        "core_effective": core_eff,
        "core_storage": _count(core),
        "readout": _count(policy.readout),
        "neurons": policy.units,
        "synapses": None if w is None else int(w.synapse_count),
        "sensory_synapses": None if w is None else int(w.sensory_synapse_count),
        "wiring": None if w is None else w.kind,
        "uses_time": policy.uses_time,
        "ema_tau_s": getattr(policy, "ema_tau_s", None),
    }


def steering_rate(steering: np.ndarray, dt_s: np.ndarray | float) -> float:
    """Mean |Δsteering|/Δt (1/s) of one trace, as `driving.metrics` measures closed loop."""
    s = np.asarray(steering, dtype=np.float64).reshape(-1)
    if s.size < 2:
        return 0.0
    dt = np.broadcast_to(np.asarray(dt_s, dtype=np.float64), s.shape)[1:]
    return float(np.mean(np.abs(np.diff(s)) / dt))
