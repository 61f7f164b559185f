"""Liquid time-constant (LTC) network on an NCP wiring, fast in plain eager PyTorch.

Math (Hasani et al., AAAI 2021, as ncps 1.0.1 implements it). For synapse j→i,
``a_ji = w⁺_ji · σ(σ_ji (v_j − μ_ji))`` with ``w⁺ = softplus(w)`` (``implicit_constraints``);
one frame of elapsed time Δt is solved by K fused semi-implicit Euler unfolds

    v ← (c·v + g⁺_l·v_leak + Σ_j a_ji E_ji + N_s) / (c + g⁺_l + Σ_j a_ji + D_s + ε),
    c = c_m⁺ / (Δt / K),

where ``N_s = Σ_k a^s_ki E^s_ki`` and ``D_s = Σ_k a^s_ki`` come from the sensory synapses
(inputs are constant within a frame, so they are computed for all frames at once).

Why it is fast: parameters live on the synapses that exist (the paper NCP has 60 recurrent
synapses, not 19² = 361), each unfold is five tensor ops (gather-as-matmul, sigmoid, one
matmul into numerator|denominator, multiply-add, divide), and the whole sequence is one
``torch.autograd.Function`` whose backward is the hand-derived adjoint, so autograd does
not record ~10⁴ small nodes. A plain autograd path (`fused=False`, also used by
``torch.jit``/``torch.export``/ONNX) computes the same function and checks the adjoint.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policies import _ckernel as _ck
from policies._cellutil import (
    as_wiring,
    c_step_dt,
    check_sequence,
    check_step,
    fits_state,
    raise_c_nonfinite,
    recording_graph,
)
from policies.wiring import Wiring

__all__ = ["LTC"]

_INIT = {
    "gleak": (0.001, 1.0), "vleak": (-0.2, 0.2), "cm": (0.4, 0.6),
    "w": (0.001, 1.0), "sigma": (3.0, 8.0), "mu": (0.3, 0.8),
}


class _LTCSolve(torch.autograd.Function):
    """Recurrent part of the LTC over a whole sequence with a hand-derived adjoint.

    Inputs (time-major, contiguous): ``AD`` (T,B,2N) = [g_l·v_leak + N_s, c + g_l + D_s + ε],
    ``C`` (T,B,N) = c, ``v0`` (B,N), edge parameters ``wp`` (softplus'd), ``erev``, ``mu``,
    ``sigma`` (E,), integer edge lists ``src``/``dst``. Output: states after each frame (T,B,N).
    """

    @staticmethod
    def forward(ctx, AD, C, v0, wp, erev, mu, sigma, src, dst, K: int):  # type: ignore[override]
        T, B, N2 = AD.shape
        N = N2 // 2
        E = int(src.shape[0])
        dtype = AD.dtype
        ar = torch.arange(E, device=AD.device)
        G = torch.zeros(N, E, dtype=dtype)
        G[src, ar] = sigma
        bz = -sigma * mu
        M = torch.zeros(E, N2, dtype=dtype)
        M[ar, dst] = wp * erev
        M[ar, dst + N] = wp
        TK = T * K
        Vs = torch.empty(TK + 1, B, N, dtype=dtype)
        S = torch.empty(TK, B, E, dtype=dtype)
        ND = torch.empty(TK, B, N2, dtype=dtype)
        Vs[0] = v0
        addmm, sigmoid, addcmul, div = torch.addmm, torch.sigmoid, torch.addcmul, torch.div
        i = 0
        for t in range(T):
            ad = AD[t]
            c = C[t]
            for _ in range(K):
                v = Vs[i]
                s = sigmoid(addmm(bz, v, G), out=S[i])
                nd = addmm(ad, s, M, out=ND[i])
                div(addcmul(nd[:, :N], c, v), nd[:, N:], out=Vs[i + 1])
                i += 1
        ctx.save_for_backward(Vs, S, ND, C, G, M, wp, erev, mu, sigma, src, dst)
        ctx.K = K
        return Vs[K::K].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gV):  # type: ignore[override]
        Vs, S, ND, C, G, M, wp, erev, mu, sigma, src, dst = ctx.saved_tensors
        K = ctx.K
        TK, B, N2 = ND.shape
        N = N2 // 2
        T = TK // K
        gV = gV.contiguous()
        # per unfold: gnum = g/den, g_den = -gnum·v_out, g_s = gnum·(w·E)ᵀ + g_den·wᵀ,
        # g_z = g_s·σ'(z), g_v = gnum·c + g_z·Gᵀ
        DS = S * (1.0 - S)
        MT = torch.cat([M[:, :N], -M[:, N:]], 1).t().contiguous()  # (2N, E): [w·E ; -w]ᵀ
        GT = G.t().contiguous()  # (E, N)
        GU = torch.empty(TK, B, N2, dtype=ND.dtype)  # [gnum, gnum * v_out] per unfold
        GZ = torch.empty_like(S)
        g = torch.zeros(B, N, dtype=ND.dtype)
        mul, div, mm, addmm = torch.mul, torch.div, torch.mm, torch.addmm
        for t in range(T - 1, -1, -1):
            g = g + gV[t]
            c = C[t]
            for k in range(K - 1, -1, -1):
                i = t * K + k
                gu = GU[i]
                gnum = div(g, ND[i, :, N:], out=gu[:, :N])
                mul(gnum, Vs[i + 1], out=gu[:, N:])
                gs = mm(gu, MT)
                gz = mul(gs, DS[i], out=GZ[i])
                g = addmm(gnum * c, gz, GT)
        gnum_all = GU[:, :, :N].reshape(T, K, B, N)
        gu_all = GU[:, :, N:].reshape(T, K, B, N)
        gA = gnum_all.sum(1)
        gD = -gu_all.sum(1)
        gC = (gnum_all * Vs[:-1].reshape(T, K, B, N)).sum(1)
        # synapse parameters: gather the per-target adjoints onto the edges
        Sf = S.reshape(TK * B, -1)
        g_we = (Sf * GU.reshape(TK * B, N2)[:, dst]).sum(0)  # d/d(w·E)
        g_wd = -(Sf * GU.reshape(TK * B, N2)[:, dst + N]).sum(0)  # d/d(w) via denominator
        gwp = g_we * erev + g_wd
        gerev = g_we * wp
        GZf = GZ.reshape(TK * B, -1)
        vsrc = Vs[:-1].reshape(TK * B, N)[:, src]
        gsigma = (GZf * (vsrc - mu)).sum(0)
        gmu = -(GZf.sum(0)) * sigma
        gAD = torch.cat([gA, gD], -1)
        return gAD, gC, g, gwp, gerev, gmu, gsigma, None, None, None


class _LTCSeqC(torch.autograd.Function):
    """Whole LTC sequence (sensory synapses, input map and K unfolds per frame) in one C
    call; backward is one call of the hand-derived adjoint (`policies._ckernel`).

    Takes the raw inputs x (B,T,F), elapsed times dt (B,T) or None (all 1), v0 (B,N) and the
    *derived* parameter vectors of `LTC._derived`; autograd maps their gradients back to the
    module's parameters (softplus etc.)."""

    @staticmethod
    def forward(ctx, x, dt, v0, iw, ib, ssig, sbz, swE, swp, a0, d0, cmK, sig, bz, wE, wp,  # type: ignore[override]
                ssrc, sdst, src, dst, K: int):
        B, T, F_ = x.shape
        N, Es, E = int(v0.shape[1]), int(ssrc.shape[0]), int(src.shape[0])
        save = any(ctx.needs_input_grad)
        dtype = x.dtype
        out = torch.empty(B, T, N, dtype=dtype)
        L = _ck.lanes_for(B)
        if save:  # blocked layout [block][...][lane], see policies/_ckernel.py
            nb = -(-B // L)
            SS = torch.empty(nb, T, Es, L, dtype=dtype)
            Vs = torch.empty(nb, T * K + 1, N, L, dtype=dtype)
            S = torch.empty(nb, T * K, E, L, dtype=dtype)
            DEN = torch.empty(nb, T * K, N, L, dtype=dtype)
        else:
            SS = Vs = S = DEN = None
        args = _ck.make_args(
            "ltc_fwd", B=B, T=T, F=F_, N=N, Es=Es, E=E, K=K, x=x, dt=dt, dt_s=1.0, v0=v0,
            iw=iw, ib=ib, ssrc=ssrc, sdst=sdst, ssig=ssig, sbz=sbz, swE=swE, swp=swp, a0=a0,
            d0=d0, cmK=cmK, src=src, dst=dst, sig=sig, bz=bz, wE=wE, wp=wp, out=out,
            save=int(save), SS=SS, Vs=Vs, S=S, DEN=DEN, M=0, check=0)
        _ck.func("ltc_fwd", dtype, L)(ctypes.byref(args))
        if save:
            ctx.save_for_backward(x, dt, iw, ib, ssig, swE, swp, cmK, sig, wE, wp,
                                  ssrc, sdst, src, dst, SS, Vs, S, DEN)
            ctx.K = K
            ctx.lanes = L
            ctx.has_dt = dt is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gV):  # type: ignore[override]
        (x, dt, iw, ib, ssig, swE, swp, cmK, sig, wE, wp,
         ssrc, sdst, src, dst, SS, Vs, S, DEN) = ctx.saved_tensors
        K = ctx.K
        B, T, F_ = x.shape
        N, Es, E = int(cmK.shape[0]), int(ssrc.shape[0]), int(src.shape[0])
        gV = gV.contiguous()
        gx = torch.empty_like(x)
        gdt = torch.empty(B, T, dtype=x.dtype)
        gv0 = torch.empty(B, N, dtype=x.dtype)
        gP = torch.zeros(2 * F_ + 4 * Es + 3 * N + 4 * E, dtype=x.dtype)
        args = _ck.make_args(
            "ltc_bwd", B=B, T=T, F=F_, N=N, Es=Es, E=E, K=K, x=x, dt=dt if ctx.has_dt else None,
            dt_s=1.0, iw=iw, ib=ib, ssrc=ssrc, sdst=sdst, ssig=ssig, swE=swE, swp=swp, cmK=cmK,
            src=src, dst=dst, sig=sig, wE=wE, wp=wp, SS=SS, Vs=Vs, S=S, DEN=DEN, gV=gV, gx=gx,
            gdt=gdt, gv0=gv0, gP=gP)
        _ck.func("ltc_bwd", x.dtype, ctx.lanes)(ctypes.byref(args))
        g = torch.split(gP, [F_, F_, Es, Es, Es, Es, N, N, N, E, E, E, E])
        return (gx, gdt if ctx.has_dt else None, gv0, *g, None, None, None, None, None)


class LTC(nn.Module):
    """LTC sequence module honouring a `Wiring` (or ``LTC(units, input_size=F)``, fully connected).

    ``forward(x (B,T,F), hx (B,units)=None, timespans (B,T)=None, return_states=False)``
    returns ``(y, h_last)`` with ``y`` the (affine-mapped) motor outputs (B,T,output_dim) or,
    with ``return_states=True``, the raw states of all neurons (B,T,units). ``timespans``
    are per-sample per-frame elapsed times (default 1).
    """

    def __init__(
        self,
        wiring: Wiring | int,
        input_size: int | None = None,
        ode_unfolds: int = 6,
        epsilon: float = 1e-8,
        input_mapping: str = "affine",
        output_mapping: str = "affine",
        implicit_constraints: bool = True,
        fused: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.wiring = as_wiring(wiring, input_size, "LTC")
        if input_mapping not in ("affine", "linear", None) or output_mapping not in (
            "affine", "linear", None
        ):
            raise ValueError("input_mapping/output_mapping must be 'affine', 'linear' or None")
        if int(ode_unfolds) < 1:
            raise ValueError(f"ode_unfolds must be >= 1, got {ode_unfolds}")
        w = self.wiring
        self.state_size = w.units
        self.output_size = w.output_dim
        self.input_size = w.input_dim
        self.ode_unfolds = int(ode_unfolds)
        self.epsilon = float(epsilon)
        self.input_mapping = input_mapping
        self.output_mapping = output_mapping
        self.implicit_constraints = bool(implicit_constraints)
        self.fused = bool(fused)
        src, dst = np.nonzero(w.adjacency)
        ssrc, sdst = np.nonzero(w.sensory_adjacency)
        self.register_buffer("src", torch.as_tensor(np.ascontiguousarray(src), dtype=torch.long), persistent=False)
        self.register_buffer("dst", torch.as_tensor(np.ascontiguousarray(dst), dtype=torch.long), persistent=False)
        self.register_buffer("sensory_src", torch.as_tensor(np.ascontiguousarray(ssrc), dtype=torch.long), persistent=False)
        self.register_buffer("sensory_dst", torch.as_tensor(np.ascontiguousarray(sdst), dtype=torch.long), persistent=False)
        onehot = torch.zeros(len(ssrc), w.units)
        onehot[torch.arange(len(ssrc)), torch.as_tensor(np.ascontiguousarray(sdst), dtype=torch.long)] = 1.0
        self.register_buffer("_sensory_onehot", onehot, persistent=False)
        onehot = torch.zeros(len(src), w.units)
        onehot[torch.arange(len(src)), torch.as_tensor(dst, dtype=torch.long)] = 1.0
        self.register_buffer("_dst_onehot", onehot, persistent=False)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        N, E, Es = w.units, len(src), len(ssrc)

        def uni(n: int, key: str) -> nn.Parameter:
            lo, hi = _INIT[key]
            return nn.Parameter(torch.rand(n, generator=gen) * (hi - lo) + lo)

        self.gleak, self.vleak, self.cm = uni(N, "gleak"), uni(N, "vleak"), uni(N, "cm")
        self.w, self.mu, self.sigma = uni(E, "w"), uni(E, "mu"), uni(E, "sigma")
        self.erev = nn.Parameter(torch.as_tensor(w.adjacency[src, dst], dtype=torch.float32))
        self.sensory_w, self.sensory_mu = uni(Es, "w"), uni(Es, "mu")
        self.sensory_sigma = uni(Es, "sigma")
        self.sensory_erev = nn.Parameter(
            torch.as_tensor(w.sensory_adjacency[ssrc, sdst], dtype=torch.float32))
        F_, M = w.input_dim, w.output_dim
        self.input_w = nn.Parameter(torch.ones(F_)) if input_mapping in ("affine", "linear") else None
        self.input_b = nn.Parameter(torch.zeros(F_)) if input_mapping == "affine" else None
        self.output_w = nn.Parameter(torch.ones(M)) if output_mapping in ("affine", "linear") else None
        self.output_b = nn.Parameter(torch.zeros(M)) if output_mapping == "affine" else None
        self._step_cache: tuple | None = None

    # ------------------------------------------------------------------ helpers
    def _pos(self, p: torch.Tensor) -> torch.Tensor:
        return F.softplus(p) if self.implicit_constraints else p

    def apply_weight_constraints(self) -> None:
        """With ``implicit_constraints=False`` (explicit mode, as ncps) clip w, cm, g_leak at 0."""
        if not self.implicit_constraints:
            with torch.no_grad():
                for p in (self.w, self.sensory_w, self.cm, self.gleak):
                    p.clamp_(min=0.0)

    def _map_inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_w is not None:
            x = x * self.input_w
        if self.input_b is not None:
            x = x + self.input_b
        return x

    state_names = ("h",)

    def outputs_from_states(self, states: torch.Tensor) -> torch.Tensor:
        """Motor outputs (…, output_size) from all neuron states (…, units) (`policies.core`)."""
        return self._map_outputs(states)

    def _map_outputs(self, v: torch.Tensor) -> torch.Tensor:
        y = v[..., : self.output_size]
        if self.output_w is not None:
            y = y * self.output_w
        if self.output_b is not None:
            y = y + self.output_b
        return y

    def _sensory(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sensory numerator and denominator currents for all frames at once: (…, N) each."""
        xs = self._map_inputs(x)[..., self.sensory_src]
        a = self._pos(self.sensory_w) * torch.sigmoid(self.sensory_sigma * (xs - self.sensory_mu))
        num = (a * self.sensory_erev) @ self._sensory_onehot
        den = a @ self._sensory_onehot
        return num, den

    def _frame_terms(self, x: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A = g_l·v_leak + N_s, D = c + g_l + D_s + ε, c = c_m / (Δt/K); shapes (…, N)."""
        ns, ds = self._sensory(x)
        gl = self._pos(self.gleak)
        c = self._pos(self.cm) * (self.ode_unfolds / dt).unsqueeze(-1)
        return gl * self.vleak + ns, c + gl + ds + self.epsilon, c

    def _unfold_ref(self, v: torch.Tensor, A: torch.Tensor, D: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """One frame with plain autograd ops (reference, export and scripting path)."""
        wp = self._pos(self.w)
        for _ in range(self.ode_unfolds):
            s = torch.sigmoid(self.sigma * (v[:, self.src] - self.mu))
            a = wp * s
            num = (a * self.erev) @ self._dst_onehot  # matmul, not index_add: ONNX-exportable
            den = a @ self._dst_onehot
            v = (c * v + A + num) / (D + den)
        return v

    def _derived(self) -> list[torch.Tensor]:
        """Parameter vectors the C kernels use (autograd-tracked, so gradients flow back)."""
        dtp = self.gleak.dtype
        F_ = self.input_size
        iw = self.input_w if self.input_w is not None else torch.ones(F_, dtype=dtp)
        ib = self.input_b if self.input_b is not None else torch.zeros(F_, dtype=dtp)
        swp = self._pos(self.sensory_w)
        wp = self._pos(self.w)
        gl = self._pos(self.gleak)
        out = [iw, ib, self.sensory_sigma, -self.sensory_sigma * self.sensory_mu,
               swp * self.sensory_erev, swp, gl * self.vleak, gl + self.epsilon,
               self._pos(self.cm) * self.ode_unfolds, self.sigma, -self.sigma * self.mu,
               wp * self.erev, wp]
        return [t.contiguous() for t in out]

    def _check(self, x, hx, timespans) -> None:
        check_sequence(x, hx, timespans, self.input_size, self.state_size, "LTC")

    # ------------------------------------------------------------------ public API
    def forward(
        self, x: torch.Tensor, hx: torch.Tensor | None = None,
        timespans: torch.Tensor | None = None, return_states: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        V = self.states(x, hx, timespans)
        return (V if return_states else self._map_outputs(V)), V[:, -1]

    def states(self, x: torch.Tensor, hx: torch.Tensor | None = None,
               timespans: torch.Tensor | None = None) -> torch.Tensor:
        """States of all neurons after each frame, (B,T,units)."""
        self._check(x, hx, timespans)
        B, T, _ = x.shape
        if hx is None:
            hx = torch.zeros(B, self.state_size, dtype=x.dtype, device=x.device)
        use_c = (self.fused and not torch.jit.is_scripting() and not recording_graph()
                 and x.device.type == "cpu" and x.dtype == self.gleak.dtype
                 and _ck.func("ltc_fwd", x.dtype) is not None)
        if use_c:
            d = self._derived()
            dtc = timespans.to(x.dtype).contiguous() if timespans is not None else None
            return _LTCSeqC.apply(x.contiguous(), dtc, hx.contiguous(), *d, self.sensory_src,
                                  self.sensory_dst, self.src, self.dst, self.ode_unfolds)
        dt = (timespans.to(x.dtype) if timespans is not None
              else torch.ones(B, T, dtype=x.dtype, device=x.device))
        A, D, c = self._frame_terms(x, dt)
        if self.fused and not torch.jit.is_scripting() and not recording_graph() and x.device.type == "cpu":
            V = _LTCSolve.apply(torch.cat([A, D], -1).transpose(0, 1).contiguous(),
                                c.transpose(0, 1).contiguous(), hx.contiguous(),
                                self._pos(self.w), self.erev, self.mu, self.sigma,
                                self.src, self.dst, self.ode_unfolds)
            return V.transpose(0, 1)
        v = hx
        out = []
        for t in range(T):
            v = self._unfold_ref(v, A[:, t], D[:, t], c[:, t])
            out.append(v)
        return torch.stack(out, 1)

    def tau_eff(self, x: torch.Tensor, hx: torch.Tensor | None = None,
                timespans: torch.Tensor | None = None) -> torch.Tensor:
        """Effective time constant of each neuron after each frame, (B,T,units).

        Read off the fused solver: the state relaxes towards its input-dependent target
        with conductance g_l + Σ_j a_ji(v_j) + D_s, so τ_eff = c_m⁺ / (g_l⁺ + Σ_j a_ji + D_s)
        (in the units of Δt), evaluated at the frame's final state. It shrinks when many
        synapses are active: the neuron reacts faster.
        """
        with torch.no_grad():
            V = self.states(x, hx, timespans)
            _, ds = self._sensory(x)
            s = torch.sigmoid(self.sigma * (V[..., self.src] - self.mu))
            den = (self._pos(self.w) * s) @ self._dst_onehot
            return self._pos(self.cm) / (self._pos(self.gleak) + ds + den)

    def effective_parameter_count(self) -> int:
        """Trainable parameters (all of them matter: they live on existing synapses only)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def initial_state(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, self.state_size, dtype=self.gleak.dtype, device=self.gleak.device)

    def step(self, x: torch.Tensor, h: torch.Tensor | None = None,
             dt: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame for closed-loop control: x (B,F), h (B,units), dt (B,) or float → (y (B,M), h).

        Without autograd (``torch.no_grad()``/``inference_mode``) and with the C kernel
        available this is a single C call (a few µs at B=1); otherwise `step_exportable`.
        """
        if (not torch.is_grad_enabled() and self.fused and isinstance(x, torch.Tensor)
                and x.dim() == 2 and x.shape[1] == self.input_size and x.device.type == "cpu"
                and x.dtype == self.gleak.dtype and not recording_graph()
                and fits_state(x, h, self.state_size)
                and _ck.func("ltc_fwd", x.dtype) is not None):
            return self._step_c(x, h, *c_step_dt(x, h, dt, self.input_size, self.state_size, "LTC"))
        dtb = check_step(x, h, dt, self.input_size, self.state_size, "LTC")
        if h is None:
            h = torch.zeros(x.shape[0], self.state_size, dtype=x.dtype, device=x.device)
        return self.step_exportable(x, h, dtb)

    def step_exportable(self, x: torch.Tensor, h: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step with no validation and no data-dependent control flow (for tracing/ONNX).

        ``dt`` is (B,1). Equals `step`.
        """
        A, D, c = self._frame_terms(x, dt[:, 0])
        v = self._unfold_ref(h, A, D, c)
        return self._map_outputs(v), v

    def _step_c(self, x: torch.Tensor, h: torch.Tensor | None, dt: float,
                dts: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference step in one C call; derived parameters cached until a parameter changes.

        The cached argument arrays are patched per call: do not step one module from several
        threads at once (use one module per thread).
        """
        key = [(p.data_ptr(), p._version) for p in self._parameters.values() if p is not None]
        B = x.shape[0]
        cache = self._step_cache
        if cache is None or cache[0] != key or cache[3] != B:
            with torch.no_grad():
                d = [t.detach() for t in self._derived()]
                M, dtp = self.output_size, self.gleak.dtype
                ow = self.output_w if self.output_w is not None else torch.ones(M, dtype=dtp)
                ob = self.output_b if self.output_b is not None else torch.zeros(M, dtype=dtp)
                ow, ob = ow.detach().contiguous(), ob.detach().contiguous()
            # one argument structure per batch size, patched per call (x, h, outputs, dt)
            args = _ck.make_args(
                "ltc_fwd", B=B, T=1, F=self.input_size, N=self.state_size,
                Es=int(self.sensory_src.shape[0]), E=int(self.src.shape[0]), K=self.ode_unfolds,
                iw=d[0], ib=d[1], ssrc=self.sensory_src, sdst=self.sensory_dst, ssig=d[2],
                sbz=d[3], swE=d[4], swp=d[5], a0=d[6], d0=d[7], cmK=d[8], src=self.src,
                dst=self.dst, sig=d[9], bz=d[10], wE=d[11], wp=d[12], save=0,
                M=self.output_size, ow=ow, ob=ob, check=1)  # refuses NaN/inf in x and h
            fn = _ck.func("ltc_fwd", x.dtype, _ck.lanes_for(B))
            cache = (key, (d, ow, ob), (args, ctypes.byref(args), fn), B)
            self._step_cache = cache
        args, ref, fn = cache[2]
        x = x.contiguous()
        h = torch.zeros(B, self.state_size, dtype=x.dtype) if h is None else h.contiguous()
        hout = torch.empty(B, self.state_size, dtype=x.dtype)
        y = torch.empty(B, self.output_size, dtype=x.dtype)
        args.x, args.v0, args.out, args.y = x.data_ptr(), h.data_ptr(), hout.data_ptr(), y.data_ptr()
        args.dt = None if dts is None else dts.data_ptr()  # (B, 1) per-sample elapsed times
        args.dt_s = dt
        fn(ref)
        if args.bad >= 0:
            raise_c_nonfinite(args.bad, B, self.input_size, self.state_size, "LTC")
        return y, hout

    def extra_repr(self) -> str:
        return (f"units={self.state_size}, input_size={self.input_size}, "
                f"output_size={self.output_size}, ode_unfolds={self.ode_unfolds}, "
                f"synapses={int(self.src.shape[0])}+{int(self.sensory_src.shape[0])} sensory")



