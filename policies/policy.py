"""A driving policy: perception CNN → recurrent core (or a feed-forward head) → steering.

Steering is ``tanh(readout(core output))``: the environment's action space is [−1, 1], and a
tanh keeps both training targets and closed-loop actions in that range while, unlike a
clamp, never cutting the gradient to zero (lane-keeping steering is mostly small, where
tanh is nearly linear).

Elapsed time: callers pass real seconds (``timespans`` (B,T), ``dt``). Cores that use time
(LTC, CfC, CT-RNN: ``uses_time``) receive it in units of ``time_unit_s`` (the nominal frame
interval, 0.1 s by default), so a frame on schedule is Δt = 1 — the scale the cells'
initialisations are made for — and a dropped frame is Δt = 2. Without timespans every step
is one nominal interval. LSTM, GRU and the feed-forward CNN ignore time.

Device and precision: a policy runs where its parameters are (``policy.to(resolve_device(
"auto"))``; CPU is the default and what the tests cover; the C kernels of the liquid cells are
CPU-only, so on CUDA the cells take their PyTorch path). Frames are moved to that device;
`step` returns steering on it. ``policy.set_precision("bf16")`` (or ``with
policy.autocast("bf16")``) runs the CNN under bf16 autocast where the hardware has native
bf16 (`supports_bf16`); the recurrent core always gets float32 features and stays float32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from policies.cnn import PerceptionCNN
from policies.core import Core, State


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if not x.flags.writeable:
            x = x.copy()
        return torch.from_numpy(np.ascontiguousarray(x))
    raise ValueError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")


class Policy(nn.Module):
    """CNN + core + readout. Built by `policies.factory.build_policy`; see module doc."""

    def __init__(
        self,
        name: str,
        cnn: PerceptionCNN,
        core: Core | None,
        readout: nn.Module,
        uses_time: bool,
        time_unit_s: float = 0.1,
        spec: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not time_unit_s > 0:
            raise ValueError(f"time_unit_s must be > 0 seconds, got {time_unit_s}")
        self.name = name
        if core is not None and not isinstance(core, Core):
            missing = [m for m in ("state_size", "output_size", "state_names", "initial_state",
                                   "forward", "step", "step_exportable", "outputs_from_states")
                       if not hasattr(core, m)]
            raise ValueError(f"{name}: the core {type(core).__name__} does not satisfy "
                             f"policies.core.Core (missing {', '.join(missing)})")
        self.cnn = cnn
        self.core = core
        self.readout = readout
        self.uses_time = bool(uses_time)
        self.time_unit_s = float(time_unit_s)
        self.image_hw = cnn.image_hw
        # JSON description from which the factory rebuilds this policy (checkpoints).
        self.spec: dict[str, Any] = dict(spec or {"policy": name, "image_hw": list(cnn.image_hw)})
        #: "fp32" or "bf16" (CNN autocast only), see `set_precision`
        self.precision = "fp32"
        #: what `step` does with non-finite input: "raise" (default) or "hold" (see `step`)
        self.nan_policy = "raise"
        #: after `step`: None, or a (B,) bool tensor of the samples whose last action was held
        self.held: torch.Tensor | None = None

    # ------------------------------------------------------------------ sizes
    @property
    def state_size(self) -> int:
        return 0 if self.core is None else int(self.core.state_size)

    @property
    def units(self) -> int:
        """Neurons reported by `neuron_states` (the core's state, or the head's last layer)."""
        if self.core is None:
            return int(self.readout.hidden_sizes[-1])
        return int(self.core.state_size)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def parameter_breakdown(self) -> dict[str, int]:
        """Trainable parameters of the CNN, the core and the readout (paper Table 2 style)."""

        def count(m: nn.Module | None) -> int:
            return 0 if m is None else sum(p.numel() for p in m.parameters())

        return {"cnn": count(self.cnn), "core": count(self.core), "readout": count(self.readout),
                "total": self.parameter_count()}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, parameters={self.parameter_count()}, uses_time={self.uses_time}"

    # ------------------------------------------------------------------ state
    def initial_state(self, batch: int = 1) -> State:
        """Zero state for `batch` sequences (a (B,0) tensor for the stateless CNN policy)."""
        if self.core is None:
            return self.readout.out.weight.new_zeros(batch, 0)
        return self.core.initial_state(batch)

    def reset_state(self, h: State, rows: Any) -> State:
        """`h` with the marked batch rows back at the initial state (episodes that ended and
        are refilled in lock-step batched evaluation); ``rows`` is a (B,) bool mask."""
        b = int((h[0] if isinstance(h, (tuple, list)) else h).shape[0])
        self._check_state(h, b)
        mask = torch.as_tensor(np.asarray(rows, dtype=bool)).reshape(-1)
        if tuple(mask.shape) != (b,):
            raise ValueError(f"rows must be a ({b},) bool mask, got shape {tuple(mask.shape)}")
        h = tuple(h) if isinstance(h, list) else h
        return _keep_rows(h, self.initial_state(b), ~mask.to(self.device))  # others keep h

    def _check_state(self, hx: State, batch: int) -> None:
        """The state must have the structure of `initial_state(batch)` (a tensor or a tuple)."""
        size = self.state_size
        names = ("h",) if self.core is None else tuple(self.core.state_names)
        if len(names) > 1:
            ok = (isinstance(hx, (tuple, list)) and len(hx) == len(names)
                  and all(isinstance(t, torch.Tensor) and tuple(t.shape) == (batch, size)
                          for t in hx))
            if not ok:
                raise ValueError(
                    f"{self.name} state must be a tuple ({', '.join(names)}) of {len(names)} "
                    f"({batch}, {size}) tensors (see initial_state), got {_describe(hx)}"
                )
            return
        if not isinstance(hx, torch.Tensor) or tuple(hx.shape) != (batch, size):
            raise ValueError(
                f"{self.name} state must be a tensor of shape ({batch}, {size}) "
                f"(see initial_state), got {_describe(hx)}"
            )

    # ------------------------------------------------------------------ input checks
    def _frames(self, images: Any, seq: bool) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Validate frames, return them flattened to (N, ...) for the CNN and the lead dims."""
        h, w = self.image_hw
        x = _as_tensor(images, "images")
        lead = 2 if seq else 1
        lead_txt = "(B, T, " if seq else "(B, "
        if x.dtype == torch.uint8:
            shape_ok = x.dim() == lead + 3 and tuple(x.shape[lead:]) == (h, w, 3)
        elif x.is_floating_point():
            shape_ok = x.dim() == lead + 3 and tuple(x.shape[lead:]) == (3, h, w)
        else:
            shape_ok = False
        if not shape_ok:
            raise ValueError(
                f"{self.name}: expected uint8 frames {lead_txt}{h}, {w}, 3) (or whitened float "
                f"{lead_txt}3, {h}, {w})), got {x.dtype} {tuple(x.shape)}"
            )
        lead_dims = tuple(x.shape[:lead])
        device = self.cnn.head_weight.device
        if x.device != device:  # numpy frames arrive on the CPU; follow the policy's device
            x = x.to(device)
        return x.reshape(-1, *x.shape[lead:]), lead_dims

    def _time_units(self, timespans: Any, b: int, t: int) -> torch.Tensor | None:
        """Validate elapsed seconds (B,T) and convert to the cores' time unit."""
        if timespans is None:
            return None
        ts = _as_tensor(timespans, "timespans")
        if tuple(ts.shape) != (b, t) or not ts.is_floating_point():
            raise ValueError(
                f"timespans must be float elapsed seconds of shape ({b}, {t}), got "
                f"{ts.dtype} {tuple(ts.shape)}"
            )
        if not bool(torch.isfinite(ts).all()) or bool((ts <= 0).any()):
            raise ValueError("timespans must be finite and > 0 seconds (found NaN/inf/zero/negative)")
        return ts.to(self.cnn.head_weight.device, torch.float32) / self.time_unit_s

    # ------------------------------------------------------------------ device, precision
    @property
    def device(self) -> torch.device:
        """Where the policy's parameters live (move it with ``policy.to(device)``)."""
        return self.cnn.head_weight.device

    def set_precision(self, precision: str) -> Policy:
        """``"fp32"`` (default) or ``"bf16"``: autocast of the CNN only (the cores stay fp32).

        bf16 is refused where the device has no native bf16 (`supports_bf16`): emulated bf16
        is slower than fp32 and would only lose accuracy.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "bf16" and not supports_bf16(self.device):
            raise ValueError(f"precision 'bf16' is not supported natively on {self.device} "
                             f"(available: {', '.join(available_precisions(self.device))})")
        self.precision = precision
        return self

    @contextlib.contextmanager
    def autocast(self, precision: str = "bf16") -> Iterator[Policy]:
        """``with policy.autocast("bf16"): ...`` — `set_precision` for the block only."""
        before = self.precision
        self.set_precision(precision)
        try:
            yield self
        finally:
            self.precision = before

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """CNN features (N, F) in float32, the CNN under bf16 autocast when ``precision`` says so.

        The liquid cores integrate small differences over many unfolds, so they always get
        float32 features and run in float32.
        """
        if self.precision == "bf16":
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                feats = self.cnn(frames)
            return feats.float()
        return self.cnn(frames)

    # ------------------------------------------------------------------ compute
    def steer(self, out: torch.Tensor) -> torch.Tensor:
        """Steering in [−1, 1] from the core's output (…, F): readout, then tanh (module doc).

        The one place where steering is bounded: the sequence path, `step` and the exported
        step (`policies.export.PolicyStep`) all end here.
        """
        return torch.tanh(self.readout(out)).squeeze(-1)

    def _run(
        self, feats: torch.Tensor, hx: State, dt: torch.Tensor | None, want_states: bool
    ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """Core + readout on CNN features (B,T,F), no input checks (also used for export)."""
        if self.core is None:
            hidden = self.readout.features(feats) if want_states else None
            return self.steer(feats), hx, hidden
        dt = dt if self.uses_time else None
        if want_states:
            states, h = self.core(feats, hx, dt, return_states=True)
            out = self.core.outputs_from_states(states)
        else:
            out, h = self.core(feats, hx, dt)
            states = None
        return self.steer(out), h, states

    def forward(
        self,
        images: Any,
        hx: State = None,
        timespans: Any = None,
        return_states: bool = False,
    ):
        """Steering (B,T) and the last state for uint8 frames (B,T,H,W,3).

        With ``return_states=True`` also returns all neuron states (B,T,units) as a third item.
        """
        frames, (b, t) = self._frames(images, seq=True)
        dt = self._time_units(timespans, b, t)
        if hx is None:
            hx = self.initial_state(b)
        else:
            self._check_state(hx, b)
        feats = self.features(frames)
        ok = torch.isfinite(feats).all(1)
        if not bool(ok.all()):
            raise self._nonfinite(frames, ~ok, "forward", seq_len=t)
        feats = feats.reshape(b, t, -1)
        steering, h, states = self._run(feats, hx, dt, return_states)
        if return_states:
            return steering, h, states
        return steering, h

    def neuron_states(self, images: Any, hx: State = None, timespans: Any = None) -> torch.Tensor:
        """States of all core neurons over time (B,T,units), for per-neuron explanations.

        For the feed-forward CNN policy these are the head's last hidden layer activations.
        """
        return self.forward(images, hx, timespans, return_states=True)[2]

    @torch.no_grad()
    def step(self, image: Any, h: State = None, dt: Any = None, *, nan_policy: str | None = None,
             last_action: Any = None) -> tuple[torch.Tensor, State]:
        """One closed-loop control step: frame(s) (H,W,3) or (B,H,W,3) → steering (B,), state.

        ``dt`` is the real elapsed time in seconds since the previous frame (float or (B,));
        None means one nominal interval (``time_unit_s``). Samples are independent: a batched
        step equals B single steps.

        Non-finite input (a NaN/inf float frame, or CNN features that came out non-finite) is
        handled by ``nan_policy`` (default: the ``nan_policy`` attribute, ``"raise"``):
        ``"raise"`` refuses it with a ValueError naming the sample; ``"hold"`` returns
        ``last_action`` (float or (B,), default 0) for the affected samples and leaves their
        state unchanged, so a closed loop drives on as on a dropped frame. ``held`` then
        tells which samples were held (docs/cells.md, "Non-finite input").
        """
        policy = self.nan_policy if nan_policy is None else nan_policy
        if policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {policy!r}")
        x = _as_tensor(image, "image")
        if x.dim() == 3:
            x = x.unsqueeze(0)
        frames, (b,) = self._frames(x, seq=False)
        if h is None:
            h = self.initial_state(b)
        else:
            self._check_state(h, b)
        dt_units: torch.Tensor | None = None  # (B, 1) in time units
        dt_scalar: float | None = None  # the cells' fastest closed-loop path takes a float
        if isinstance(dt, bool):
            raise ValueError("dt must be elapsed seconds (a float or a (B,) tensor), got a bool")
        if isinstance(dt, (int, float, np.number)) or (isinstance(dt, np.ndarray) and dt.ndim == 0):
            dt = float(dt)  # also numpy scalars such as an env's np.float32 dt
            if not (math.isfinite(dt) and dt > 0):
                raise ValueError(f"dt must be finite and > 0 seconds, got {dt}")
            dt_scalar = float(dt) / self.time_unit_s
        elif dt is not None:  # validated even where ignored: a wrong dt is a caller bug
            ts = _as_tensor(dt, "dt").to(torch.float32)
            if ts.dim() == 0:
                ts = ts.expand(b)
            if tuple(ts.shape) != (b,):
                raise ValueError(f"dt must be a float or a ({b},) tensor of seconds, got {tuple(ts.shape)}")
            dt_units = self._time_units(ts.reshape(b, 1), b, 1)
        if not self.uses_time:
            dt_units = dt_scalar = None
        dt_core = dt_scalar if dt_units is None else dt_units[:, 0]
        feats = self.features(frames)
        ok = torch.isfinite(feats).all(1)
        self.held = None
        if bool(ok.all()):
            return self._step(feats, h, dt_core)
        bad = ~ok
        if policy == "raise":
            raise self._nonfinite(frames, bad, "step")
        hold = self._last_action(last_action, b, feats)
        steering, h_new = self._step(torch.where(bad[:, None], torch.zeros_like(feats), feats),
                                     h, dt_core)
        self.held = bad
        return torch.where(bad, hold, steering), _keep_rows(h, h_new, bad)

    def _nonfinite(self, frames: torch.Tensor, bad: torch.Tensor, where: str,
                   seq_len: int | None = None) -> ValueError:
        """The error for non-finite frames or CNN features; `bad` marks the flat frames (N,)."""
        first = int(bad.nonzero()[0, 0])
        at = (f"sample {first}" if seq_len is None
              else "batch {}, time {}".format(*divmod(first, seq_len)))
        frame_bad = frames.is_floating_point() and not bool(torch.isfinite(frames[first]).all())
        what = ("image holds NaN/inf (float frames must be finite)" if frame_bad else
                "CNN features are NaN/inf for a finite frame (are the weights finite?)")
        return ValueError(f"{self.name}.{where}: {what} at {at} ({int(bad.sum())} frame(s)); "
                          "the policy refuses non-finite input; in closed loop "
                          "nan_policy='hold' keeps the last action instead")

    @staticmethod
    def _last_action(last_action: Any, b: int, like: torch.Tensor) -> torch.Tensor:
        if last_action is None:
            return like.new_zeros(b)
        a = torch.as_tensor(np.asarray(last_action, dtype=np.float32)).to(like.device)
        a = a.reshape(-1)
        if a.numel() == 1:
            a = a.expand(b)
        if tuple(a.shape) != (b,) or not bool(torch.isfinite(a).all()):
            raise ValueError(f"last_action must be a finite float or ({b},) steering values, "
                             f"got shape {tuple(a.shape)}")
        return a.to(like.dtype)

    def _step(self, feats: torch.Tensor, h: State,
              dt: float | torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """One step on CNN features (B,F); ``dt`` None, a float or (B,) in time units.

        The core's own step (`policies.core.Core`: the C kernels for the liquid cells), then
        `steer`. A subclass that overrides `_run` only gets `_step_via_run` instead (see
        ``__init_subclass__``), so its step and its sequence stay the same function.
        """
        if self.core is None:
            return self.steer(feats), h
        y, h = self.core.step(feats, h, dt)
        return self.steer(y), h

    def step_exportable(self, feats: torch.Tensor, h: State,
                        dt: torch.Tensor) -> tuple[torch.Tensor, State]:
        """The pure step on CNN features (B,F), dt (B,1) time units: no checks, no fast path.

        What `policies.export.PolicyStep` traces; equals `_step` (tested).
        """
        if self.core is None:
            return self.steer(feats), h
        y, h = self.core.step_exportable(feats, h, dt)
        return self.steer(y), h

    def _step_via_run(self, feats: torch.Tensor, h: State,
                      dt: float | torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """`_step` as a length-1 sequence through `_run` (for subclasses that change `_run`)."""
        b = feats.shape[0]
        if isinstance(dt, float):
            dt = torch.full((b,), dt, device=feats.device)
        dt_units = None if dt is None else dt.reshape(b, 1)
        steering, h, _ = self._run(feats.unsqueeze(1), h, dt_units, False)
        return steering[:, 0], h

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_run" in cls.__dict__:  # a new sequence map: its step is that map on one frame
            if "_step" not in cls.__dict__:
                cls._step = Policy._step_via_run  # type: ignore[method-assign]
            if "step_exportable" not in cls.__dict__:
                cls.step_exportable = Policy._step_via_run  # type: ignore[method-assign]

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the state tensors (ONNX inputs): () when stateless, ("h", "c") for (h, c)."""
        if self.state_size == 0:
            return ()
        init = self.initial_state(1)
        if isinstance(init, torch.Tensor):
            return ("h",)
        return tuple(self.core.state_names) if self.core is not None else tuple(
            f"h{i}" for i in range(len(init)))


NAN_POLICIES = ("raise", "hold")
PRECISIONS = ("fp32", "bf16")
DEVICES = ("cpu", "cuda", "auto")


def supports_bf16(device: str | torch.device = "cpu") -> bool:
    """True where bf16 runs natively: a CPU with AVX512-BF16 or AMX, or a CUDA GPU with bf16.

    (PyTorch also runs bf16 on other CPUs by emulation, slower than fp32: that is a False.)
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
            fn = getattr(cpu, probe, None)
            if fn is not None and bool(fn()):
                return True
    return False


def available_precisions(device: str | torch.device = "cpu") -> tuple[str, ...]:
    return PRECISIONS if supports_bf16(device) else ("fp32",)


def available_devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def resolve_device(spec: str | torch.device = "cpu") -> torch.device:
    """``cpu`` | ``cuda`` (``cuda:N``) | ``auto`` (CUDA when available) → a torch.device.

    A CUDA request without CUDA is a ValueError that says what is available.
    """
    text = str(spec)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise ValueError(f"device must be one of {DEVICES} (or cuda:N), got {text!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be one of {DEVICES} (or cuda:N), got {text!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r} requested but CUDA is not available here "
                             f"(torch {torch.__version__}); available: "
                             f"{', '.join(available_devices())}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {text!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _keep_rows(old: State, new: State, rows: torch.Tensor) -> State:
    """`new` with the marked batch rows taken from `old` (a tensor or a tuple of tensors)."""
    if isinstance(new, tuple):
        return tuple(_keep_rows(o, n, rows) for o, n in zip(old, new))
    return torch.where(rows.reshape(-1, *([1] * (new.dim() - 1))), old, new)


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list)):
        return f"{type(x).__name__} of {len(x)}: " + ", ".join(_describe(v) for v in x)
    return type(x).__name__


__all__ = ["DEVICES", "NAN_POLICIES", "PRECISIONS", "Policy", "available_devices",
           "available_precisions", "resolve_device", "supports_bf16"]
