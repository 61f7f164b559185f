"""Input validation and small helpers shared by the LTC and CfC sequence modules."""

from __future__ import annotations

import math

import torch

from policies.wiring import Wiring


def as_wiring(wiring: Wiring | int, input_size: int | None, who: str) -> Wiring:
    """Accept a `Wiring` or an int unit count (fully connected, all neurons are outputs)."""
    if isinstance(wiring, Wiring):
        if input_size is not None and input_size != wiring.input_dim:
            raise ValueError(
                f"{who}: input_size={input_size} disagrees with wiring.input_dim={wiring.input_dim}"
            )
        return wiring
    if isinstance(wiring, bool) or not isinstance(wiring, int):
        raise ValueError(f"{who}: expected a Wiring or an int unit count, got {type(wiring).__name__}")
    if input_size is None:
        raise ValueError(f"{who}({wiring}) with int units needs input_size=<number of input features>")
    return Wiring.fully_connected(units=wiring, output_dim=wiring, input_dim=int(input_size))


def check_sequence(
    x: torch.Tensor, hx: torch.Tensor | None, timespans: torch.Tensor | None,
    input_dim: int, units: int, who: str,
) -> None:
    """Raise ValueError naming the expected shapes; no silent broadcasting."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who}: x must be a (batch, time, {input_dim}) tensor, got {shape}")
    if x.shape[2] != input_dim:
        raise ValueError(f"{who}: x has {x.shape[2]} features, expected {input_dim} (wiring.input_dim)")
    b, t = int(x.shape[0]), int(x.shape[1])
    if hx is not None:
        if not isinstance(hx, torch.Tensor) or tuple(hx.shape) != (b, units):
            shape = tuple(hx.shape) if isinstance(hx, torch.Tensor) else type(hx).__name__
            raise ValueError(f"{who}: hx must have shape (batch={b}, units={units}), got {shape}")
    if timespans is not None:
        check_dt(timespans, (b, t), who, "timespans", "(batch, time)")
    check_finite(x, who, "x", ("batch", "time", "feature"))
    if hx is not None:
        check_finite(hx, who, "hx", ("batch", "neuron"))


_NONFINITE_HINT = ("the cells refuse non-finite input, which would stay in their state for good "
                   "(check what feeds them; in closed loop Policy.step(..., nan_policy='hold') "
                   "holds the last action instead, docs/cells.md)")


def nonfinite_error(who: str, name: str, dims: tuple[str, ...], first: tuple[int, ...],
                    count: int | None = None) -> ValueError:
    """The one-line error for a NaN/inf in `name`, naming where the first one is."""
    where = ", ".join(f"{d} {i}" for d, i in zip(dims, first))
    n = "" if count is None else f"{count} value(s), "
    return ValueError(f"{who}: {name} holds NaN/inf ({n}first at {where}); {_NONFINITE_HINT}")


def check_finite(t: torch.Tensor, who: str, name: str, dims: tuple[str, ...]) -> None:
    """Raise `nonfinite_error` when `t` holds a NaN or ±inf (skipped while a graph is recorded)."""
    if recording_graph():
        return
    ok = torch.isfinite(t)
    if bool(ok.all()):
        return
    bad = ~ok
    first = tuple(int(i) for i in bad.nonzero()[0])
    raise nonfinite_error(who, name, dims, first, int(bad.sum()))


def check_dt(dt: torch.Tensor, shape: tuple[int, ...], who: str, name: str, spec: str) -> None:
    if not isinstance(dt, torch.Tensor) or tuple(dt.shape) != shape:
        got = tuple(dt.shape) if isinstance(dt, torch.Tensor) else type(dt).__name__
        raise ValueError(f"{who}: {name} must have shape {spec}={shape}, got {got}")
    if recording_graph():  # values are unknown while torch.export/ONNX records the graph
        return
    if not bool(torch.isfinite(dt).all()) or bool((dt <= 0).any()):
        raise ValueError(f"{who}: {name} must be finite and > 0 (elapsed seconds per step)")


def check_step(
    x: torch.Tensor, h: torch.Tensor | None, dt: object, input_dim: int, units: int, who: str
) -> torch.Tensor:
    """Validate one closed-loop step; returns the elapsed times as a (batch, 1) tensor."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != input_dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who}.step: x must be a (batch, {input_dim}) tensor, got {shape}")
    b = int(x.shape[0])
    if h is not None and (not isinstance(h, torch.Tensor) or tuple(h.shape) != (b, units)):
        shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(f"{who}.step: h must have shape (batch={b}, units={units}), got {shape}")
    check_finite(x, who + ".step", "x", ("batch", "feature"))
    if h is not None:
        check_finite(h, who + ".step", "h", ("batch", "neuron"))
    if dt is None:
        return torch.ones(b, 1, dtype=x.dtype, device=x.device)
    if isinstance(dt, (int, float)) and not isinstance(dt, bool):
        v = float(dt)
        if not v > 0 or v == float("inf"):
            raise ValueError(f"{who}.step: dt must be finite and > 0, got {dt}")
        return torch.full((b, 1), v, dtype=x.dtype, device=x.device)
    if isinstance(dt, torch.Tensor):
        if dt.dim() == 0:
            dt = dt.reshape(1).expand(b)
        if dt.dim() == 2 and tuple(dt.shape) == (b, 1):
            dt = dt[:, 0]
        check_dt(dt, (b,), who + ".step", "dt", "(batch,)")
        return dt.to(x.dtype).reshape(b, 1)
    raise ValueError(f"{who}.step: dt must be None, a positive float or a (batch,) tensor")


def recording_graph() -> bool:
    """True while torch.jit tracing, torch.export/dynamo or ONNX export records the graph."""
    if torch.jit.is_tracing():
        return True
    try:
        if torch.compiler.is_compiling():
            return True
    except AttributeError:  # pragma: no cover - older torch
        pass
    return bool(getattr(torch.onnx, "is_in_onnx_export", lambda: False)())


def fits_state(x: torch.Tensor, h: torch.Tensor | None, state_size: int) -> bool:
    """True when `h` is None or a (batch, state_size) tensor of `x`'s dtype (the C step's input)."""
    return h is None or (isinstance(h, torch.Tensor) and h.dim() == 2 and h.shape[0] == x.shape[0]
                         and h.shape[1] == state_size and h.dtype == x.dtype)


def c_step_dt(x: torch.Tensor, h: torch.Tensor | None, dt, input_size: int, state_size: int,
              who: str) -> tuple[float, torch.Tensor | None]:
    """Elapsed time for the C inference step: (scalar, None) for None/a number, else (1.0, (B,1))."""
    if dt is None or (isinstance(dt, (int, float)) and not isinstance(dt, bool)):
        d = 1.0 if dt is None else float(dt)
        if not (d > 0 and math.isfinite(d)):
            raise ValueError(f"{who}.step: dt must be finite and > 0, got {dt}")
        return d, None
    return 1.0, check_step(x, h, dt, input_size, state_size, who).contiguous()


def raise_c_nonfinite(bad: int, B: int, F: int, N: int, who: str) -> None:
    """Turn the C step's ``bad`` index (first NaN/inf: x (B,F) first, then h (B,N)) into an error."""
    if bad < B * F:
        raise nonfinite_error(who + ".step", "x", ("batch", "feature"), divmod(bad, F))
    raise nonfinite_error(who + ".step", "h", ("batch", "neuron"), divmod(bad - B * F, N))

