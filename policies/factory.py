"""Build any policy of the paper's comparison by name.

Every policy shares the same perception CNN (32 features); they differ in the core:

| name         | core                                                        | uses time |
|--------------|-------------------------------------------------------------|-----------|
| `ncp-cfc`    | CfC on the paper NCP wiring (19 neurons)                    | yes       |
| `ncp-ltc`    | LTC on the paper NCP wiring, 6 ODE unfolds                  | yes       |
| `lstm`       | LSTM, 64 units                                              | no        |
| `gru`        | GRU, 64 units                                               | no        |
| `ctrnn`      | continuous-time RNN, 64 units                               | yes       |
| `cnn`        | none: PilotNet-like fully connected head (feed-forward)     | no        |
| `ncp-random` | CfC (or `core="ltc"`) on a random wiring with as many synapses | yes    |
| `ncp-full`   | CfC (or `core="ltc"`) on a fully connected 19-neuron wiring | yes       |
| `ltc-random` | LTC on a random wiring with the NCP's layers and block counts | yes      |
| `ltc-full`   | LTC, consecutive NCP layers fully connected (+ NCP recurrence) | yes     |
| `cfc-random` | CfC, same random layered wiring (inter → command → motor per frame) | yes |
| `cfc-full`   | CfC, same fully connected layered wiring                    | yes       |
| `cnn-ema`    | `cnn` with an exponential moving average on its steering (τ)  | Δt only |
| `lstm-ema`   | `lstm` with the same moving average on its steering         | Δt only   |
| `ncp-ltc-timeblind` | `ncp-ltc` that integrates one nominal Δt per frame always | no   |

`ncp-random` / `ncp-full` are the v1 controls: one layer of 19 neurons, so a CfC on them reads
only previous-frame states (another update schedule than the NCP's). The layered controls
(`policies/controls.py`) keep the NCP's schedule and change only the graph. Effective
(unmasked) and storage parameter counts: `policies.controls.parameter_table`.

The built policy carries a JSON ``spec`` (name, image size, seed, the keyword arguments with
the wiring written out), from which `rebuild` makes the identical architecture: checkpoints
store it, so a random wiring drawn today is the same wiring when loaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from policies.baselines import CTRNN, GRUCore, LSTMCore, PilotNetHead
from policies.cnn import PerceptionCNN
from policies.policy import Policy
from policies.wiring import Wiring

POLICY_NAMES = ("ncp-cfc", "ncp-ltc", "lstm", "gru", "ctrnn", "cnn", "ncp-random", "ncp-full",
                "ltc-random", "ltc-full", "cfc-random", "cfc-full", "cnn-ema", "lstm-ema",
                "ncp-ltc-timeblind")
#: Default EMA time constant (s) of the smoothing controls; the v2 sweep sets τ per run from
#: NCP-LTC's measured steering rate (scripts/reproduce_paper.py, `calibrate_ema`).
DEFAULT_EMA_TAU_S = 0.2
LIQUID_CORES = ("cfc", "ltc")


def _as_wiring(wiring: Wiring | dict | None, default: Callable[[], Wiring], input_dim: int) -> Wiring:
    if wiring is None:
        w = default()
    elif isinstance(wiring, Wiring):
        w = wiring
    elif isinstance(wiring, dict):
        w = Wiring.from_dict(wiring)
    else:
        raise ValueError(f"wiring must be a Wiring, its to_dict() or None, got {type(wiring).__name__}")
    if w.input_dim != input_dim:
        raise ValueError(
            f"the wiring has input_dim={w.input_dim}, but the perception CNN gives {input_dim} "
            f"features: build it with input_dim={input_dim}"
        )
    return w


def _liquid_core(core: str, w: Wiring, mode: str, ode_unfolds: int) -> nn.Module:
    if core == "cfc":
        from policies.cfc import CfC

        return CfC(w, mode=mode)
    if core == "ltc":
        from policies.ltc import LTC

        return LTC(w, ode_unfolds=ode_unfolds)
    raise ValueError(f"core must be one of {LIQUID_CORES}, got {core!r}")


def _liquid(name: str, wiring_kind: str, fixed_core: str | None,
            uses_time: bool = True) -> Callable[..., Policy]:
    """Builder of an NCP-style policy: a liquid cell on a wiring, with a 1→1 affine readout.

    ``uses_time=False`` makes the time-blind variant: the cell integrates one nominal
    interval per frame whatever elapsed time the caller passes."""

    def build(
        image_hw: tuple[int, int],
        seed: int,
        core: str = fixed_core or "cfc",
        wiring: Wiring | dict | None = None,
        mode: str = "default",
        ode_unfolds: int = 6,
        time_unit_s: float = 0.1,
    ) -> Policy:
        if fixed_core is not None and core != fixed_core:
            raise ValueError(f"{name} always uses the {fixed_core} cell; for another cell "
                             f"use another name (e.g. ncp-cfc / ncp-ltc)")
        from policies.controls import layered_full_wiring, layered_random_wiring

        cnn = PerceptionCNN(image_hw)
        defaults = {
            "ncp": lambda: Wiring.ncp(input_dim=cnn.output_dim, seed=seed),
            "random": lambda: Wiring.random(input_dim=cnn.output_dim, seed=seed),
            "full": lambda: Wiring.fully_connected(input_dim=cnn.output_dim, seed=seed),
            "layered_random": lambda: layered_random_wiring(input_dim=cnn.output_dim, seed=seed),
            "layered_full": lambda: layered_full_wiring(input_dim=cnn.output_dim, seed=seed),
        }
        w = _as_wiring(wiring, defaults[wiring_kind], cnn.output_dim)
        cell = _liquid_core(core, w, mode, ode_unfolds)
        kwargs: dict[str, Any] = {"wiring": w.to_dict(), "time_unit_s": time_unit_s}
        if fixed_core is None:
            kwargs["core"] = core
        if core == "cfc":
            kwargs["mode"] = mode
        else:
            kwargs["ode_unfolds"] = ode_unfolds
        readout = nn.Linear(w.output_dim, 1)
        return Policy(name, cnn, cell, readout, uses_time=uses_time, time_unit_s=time_unit_s,
                      spec=_spec(name, image_hw, seed, kwargs))

    return build


def _recurrent(name: str, cls: type[nn.Module], uses_time: bool) -> Callable[..., Policy]:
    def build(image_hw: tuple[int, int], seed: int, units: int = 64, time_unit_s: float = 0.1,
              **extra: Any) -> Policy:
        if int(units) < 1:
            raise ValueError(f"units must be >= 1, got {units}")
        cnn = PerceptionCNN(image_hw)
        core = cls(cnn.output_dim, int(units), **extra)
        kwargs = {"units": int(units), "time_unit_s": time_unit_s, **extra}
        return Policy(name, cnn, core, nn.Linear(int(units), 1), uses_time=uses_time,
                      time_unit_s=time_unit_s, spec=_spec(name, image_hw, seed, kwargs))

    return build


def _lstm(image_hw, seed, units: int = 64, time_unit_s: float = 0.1) -> Policy:
    return _recurrent("lstm", LSTMCore, False)(image_hw, seed, units, time_unit_s)


def _gru(image_hw, seed, units: int = 64, time_unit_s: float = 0.1) -> Policy:
    return _recurrent("gru", GRUCore, False)(image_hw, seed, units, time_unit_s)


def _ctrnn(image_hw, seed, units: int = 64, unfolds: int = 3, time_unit_s: float = 0.1) -> Policy:
    return _recurrent("ctrnn", CTRNN, True)(image_hw, seed, units, time_unit_s, unfolds=int(unfolds))


def _cnn(image_hw, seed, hidden: tuple[int, ...] | list[int] = (100, 50, 10),
         time_unit_s: float = 0.1) -> Policy:
    hidden = tuple(int(h) for h in hidden)
    if not hidden or min(hidden) < 1:
        raise ValueError(f"hidden must be a non-empty list of positive layer sizes, got {hidden}")
    cnn = PerceptionCNN(image_hw)
    head = PilotNetHead(cnn.output_dim, hidden)
    kwargs = {"hidden": list(hidden), "time_unit_s": time_unit_s}
    return Policy("cnn", cnn, None, head, uses_time=False, time_unit_s=time_unit_s,
                  spec=_spec("cnn", image_hw, seed, kwargs))


def _cnn_ema(image_hw, seed, hidden: tuple[int, ...] | list[int] = (100, 50, 10),
             ema_tau_s: float = DEFAULT_EMA_TAU_S, time_unit_s: float = 0.1) -> Policy:
    from policies.controls import SmoothedPolicy

    base = _cnn(image_hw, seed, hidden, time_unit_s)
    kwargs = {**base.spec["kwargs"], "ema_tau_s": float(ema_tau_s)}
    return SmoothedPolicy("cnn-ema", base.cnn, None, base.readout, float(ema_tau_s), time_unit_s,
                          spec=_spec("cnn-ema", image_hw, seed, kwargs))


def _lstm_ema(image_hw, seed, units: int = 64, ema_tau_s: float = DEFAULT_EMA_TAU_S,
              time_unit_s: float = 0.1) -> Policy:
    from policies.controls import SmoothedPolicy

    base = _lstm(image_hw, seed, units, time_unit_s)
    kwargs = {**base.spec["kwargs"], "ema_tau_s": float(ema_tau_s)}
    return SmoothedPolicy("lstm-ema", base.cnn, base.core, base.readout, float(ema_tau_s),
                          time_unit_s, spec=_spec("lstm-ema", image_hw, seed, kwargs))


def _spec(name: str, image_hw: tuple[int, int], seed: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"policy": name, "image_hw": [int(image_hw[0]), int(image_hw[1])], "seed": int(seed),
            "kwargs": kwargs}


# name -> builder(image_hw, seed, **kw); the order of POLICY_NAMES.
REGISTRY: dict[str, Callable[..., Policy]] = {
    "ncp-cfc": _liquid("ncp-cfc", "ncp", "cfc"),
    "ncp-ltc": _liquid("ncp-ltc", "ncp", "ltc"),
    "lstm": _lstm,
    "gru": _gru,
    "ctrnn": _ctrnn,
    "cnn": _cnn,
    "ncp-random": _liquid("ncp-random", "random", None),
    "ncp-full": _liquid("ncp-full", "full", None),
    "ltc-random": _liquid("ltc-random", "layered_random", "ltc"),
    "ltc-full": _liquid("ltc-full", "layered_full", "ltc"),
    "cfc-random": _liquid("cfc-random", "layered_random", "cfc"),
    "cfc-full": _liquid("cfc-full", "layered_full", "cfc"),
    "cnn-ema": _cnn_ema,
    "lstm-ema": _lstm_ema,
    "ncp-ltc-timeblind": _liquid("ncp-ltc-timeblind", "ncp", "ltc", uses_time=False),
}
assert tuple(REGISTRY) == POLICY_NAMES


def _options(builder: Callable[..., Policy]) -> list[str]:
    params = list(inspect.signature(builder).parameters.values())[2:]
    return [p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]


def build_policy(name: str, image_hw: tuple[int, int] = (78, 200), seed: int = 0, **kw: Any) -> Policy:
    """Build policy `name` (one of POLICY_NAMES) for camera frames of `image_hw` (H, W).

    `seed` fixes the initial weights and the wiring; the global RNG is left untouched.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown policy {name!r}; valid names: {', '.join(POLICY_NAMES)}")
    try:
        hw = (int(image_hw[0]), int(image_hw[1]))
        if len(image_hw) != 2:
            raise TypeError
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"image_hw must be (height, width), got {image_hw!r}") from None
    builder = REGISTRY[name]
    allowed = _options(builder)
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; accepted: {allowed}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return builder(hw, int(seed), **kw)


def rebuild(spec: dict[str, Any]) -> Policy:
    """The architecture described by `policy.spec` (weights freshly initialised)."""
    try:
        name, image_hw = spec["policy"], spec["image_hw"]
    except (KeyError, TypeError):
        raise ValueError("policy spec needs 'policy' and 'image_hw'") from None
    return build_policy(name, tuple(image_hw), int(spec.get("seed", 0)), **dict(spec.get("kwargs", {})))
