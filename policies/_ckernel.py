"""Optional C kernels for the LTC/CfC recurrences, compiled with the system C compiler at first use.

Why: the liquid cells are tiny (19 neurons, ~60 recurrent synapses) and run hundreds of
sequential steps, so eager PyTorch spends >95 % of its time in per-op overhead. One C call
per sequence (forward, and the hand-derived adjoint for backward) removes that overhead.
The kernels are plain C99 over contiguous float32/float64 buffers, loaded with ctypes; no
Python extension build is involved. If no compiler is available (or
``LIQUID_DRIVE_NO_CKERNEL=1``), `lib()` returns None and the cells use their pure-PyTorch
path, which computes the same function (the tests compare both).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

_SRC = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

static void vsigm_SUF(int64_t n, const REAL* restrict z, REAL* restrict s) {
    for (int64_t e = 0; e < n; e++) s[e] = SIGM(z[e]);
}

/* LTC forward over a sequence, sensory synapses included. Layouts batch-major, contiguous.
   x (B,T,F) raw inputs; dt (B,T) or NULL (then every dt = dt_s); v0 (B,N).
   Input map xm = x*iw + ib. Sensory edges ssrc/sdst (Es): zs = ssig*xm[ssrc] + sbz,
   a = sigmoid(zs), A[sdst] += swE*a, D[sdst] += swp*a on top of A = a0, D = d0 + c,
   c = cmK/dt. Recurrent edges src/dst (E): z = sig*v[src] + bz, likewise wE/wp.
   K unfolds: v <- (A + c*v + sum wE*s) / (D + sum wp*s). out (B,T,N).
   If save: SS (B,T,Es), Vs (B,T*K+1,N), S (B,T*K,E), DEN (B,T*K,N) for the adjoint.
   If y: motor outputs y (B,T,M) = v[:M]*ow + ob. */
void ltc_fwd_SUF(int64_t B, int64_t T, int64_t F, int64_t N, int64_t Es, int64_t E, int64_t K,
                 const REAL* x, const REAL* dt, double dt_s, const REAL* v0,
                 const REAL* iw, const REAL* ib,
                 const int64_t* ssrc, const int64_t* sdst, const REAL* ssig, const REAL* sbz,
                 const REAL* swE, const REAL* swp,
                 const REAL* a0, const REAL* d0, const REAL* cmK,
                 const int64_t* src, const int64_t* dst,
                 const REAL* sig, const REAL* bz, const REAL* wE, const REAL* wp,
                 REAL* out, int save, REAL* SS, REAL* Vs, REAL* S, REAL* DEN,
                 int64_t M, const REAL* ow, const REAL* ob, REAL* y) {
    int64_t W = Es > E ? Es : E;
    REAL* buf = (REAL*)malloc(sizeof(REAL) * (7 * N + F + 2 * W));
    REAL *A = buf, *D = buf + N, *c = buf + 2 * N, *v = buf + 3 * N, *num = buf + 4 * N,
         *den = buf + 5 * N, *xm = buf + 7 * N, *z = xm + F, *s = z + W;
    for (int64_t b = 0; b < B; b++) {
        memcpy(v, v0 + b * N, sizeof(REAL) * N);
        if (save) memcpy(Vs + b * (T * K + 1) * N, v, sizeof(REAL) * N);
        for (int64_t t = 0; t < T; t++) {
            int64_t bt = b * T + t;
            REAL d = dt ? dt[bt] : (REAL)dt_s;
            const REAL* xt = x + bt * F;
            for (int64_t f = 0; f < F; f++) xm[f] = xt[f] * iw[f] + ib[f];
            for (int64_t e = 0; e < Es; e++) z[e] = ssig[e] * xm[ssrc[e]] + sbz[e];
            REAL* ss = save ? SS + bt * Es : s;
            vsigm_SUF(Es, z, ss);
            for (int64_t n = 0; n < N; n++) { c[n] = cmK[n] / d; A[n] = a0[n]; D[n] = d0[n] + c[n]; }
            for (int64_t e = 0; e < Es; e++) { A[sdst[e]] += swE[e] * ss[e]; D[sdst[e]] += swp[e] * ss[e]; }
            for (int64_t k = 0; k < K; k++) {
                int64_t i = t * K + k;
                for (int64_t e = 0; e < E; e++) z[e] = sig[e] * v[src[e]] + bz[e];
                REAL* se = save ? S + (b * T * K + i) * E : s;
                vsigm_SUF(E, z, se);
                for (int64_t n = 0; n < N; n++) { num[n] = A[n] + c[n] * v[n]; den[n] = D[n]; }
                for (int64_t e = 0; e < E; e++) { num[dst[e]] += wE[e] * se[e]; den[dst[e]] += wp[e] * se[e]; }
                for (int64_t n = 0; n < N; n++) v[n] = num[n] / den[n];
                if (save) {
                    memcpy(DEN + (b * T * K + i) * N, den, sizeof(REAL) * N);
                    memcpy(Vs + (b * (T * K + 1) + i + 1) * N, v, sizeof(REAL) * N);
                }
            }
            memcpy(out + bt * N, v, sizeof(REAL) * N);
            if (y) for (int64_t m = 0; m < M; m++) y[bt * M + m] = v[m] * ow[m] + ob[m];
        }
    }
    free(buf);
}

/* LTC adjoint of ltc_fwd (save=1). gV (B,T,N) in. Overwritten: gx (B,T,F), gdt (B,T),
   gv0 (B,N). Accumulated (caller zeroes): gP = [g_iw, g_ib (F each); g_ssig, g_sbz, g_swE,
   g_swp (Es each); g_a0, g_d0, g_cmK (N each); g_sig, g_bz, g_wE, g_wp (E each)]. */
void ltc_bwd_SUF(int64_t B, int64_t T, int64_t F, int64_t N, int64_t Es, int64_t E, int64_t K,
                 const REAL* x, const REAL* dt, double dt_s,
                 const REAL* iw, const REAL* ib,
                 const int64_t* ssrc, const int64_t* sdst, const REAL* ssig,
                 const REAL* swE, const REAL* swp, const REAL* cmK,
                 const int64_t* src, const int64_t* dst,
                 const REAL* sig, const REAL* wE, const REAL* wp,
                 const REAL* SS, const REAL* Vs, const REAL* S, const REAL* DEN,
                 const REAL* gV, REAL* gx, REAL* gdt, REAL* gv0, REAL* gP) {
    REAL *g_iw = gP, *g_ib = gP + F, *g_ssig = gP + 2 * F, *g_sbz = g_ssig + Es,
         *g_swE = g_sbz + Es, *g_swp = g_swE + Es, *g_a0 = g_swp + Es, *g_d0 = g_a0 + N,
         *g_cmK = g_d0 + N, *g_sig = g_cmK + N, *g_bz = g_sig + E, *g_wE = g_bz + E,
         *g_wp = g_wE + E;
    REAL* buf = (REAL*)malloc(sizeof(REAL) * (8 * N + 2 * F));
    REAL *g = buf, *gnum = buf + N, *gden = buf + 2 * N, *gnew = buf + 3 * N, *gA = buf + 4 * N,
         *gD = buf + 5 * N, *gc = buf + 6 * N, *c = buf + 7 * N, *xm = buf + 8 * N, *gxm = xm + F;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t n = 0; n < N; n++) g[n] = 0;
        for (int64_t t = T - 1; t >= 0; t--) {
            int64_t bt = b * T + t;
            REAL d = dt ? dt[bt] : (REAL)dt_s;
            const REAL* gv = gV + bt * N;
            for (int64_t n = 0; n < N; n++) {
                g[n] += gv[n]; gA[n] = 0; gD[n] = 0; gc[n] = 0; c[n] = cmK[n] / d;
            }
            for (int64_t k = K - 1; k >= 0; k--) {
                int64_t i = t * K + k;
                const REAL* vin = Vs + (b * (T * K + 1) + i) * N;
                const REAL* vout = vin + N;
                const REAL* dn = DEN + (b * T * K + i) * N;
                const REAL* s = S + (b * T * K + i) * E;
                for (int64_t n = 0; n < N; n++) {
                    gnum[n] = g[n] / dn[n];
                    gden[n] = -gnum[n] * vout[n];
                    gA[n] += gnum[n]; gD[n] += gden[n]; gc[n] += gnum[n] * vin[n];
                    gnew[n] = gnum[n] * c[n];
                }
                for (int64_t e = 0; e < E; e++) {
                    int64_t q = dst[e];
                    REAL se = s[e];
                    g_wE[e] += se * gnum[q];
                    g_wp[e] += se * gden[q];
                    REAL gz = (gnum[q] * wE[e] + gden[q] * wp[e]) * se * ((REAL)1 - se);
                    g_sig[e] += gz * vin[src[e]];
                    g_bz[e] += gz;
                    gnew[src[e]] += gz * sig[e];
                }
                memcpy(g, gnew, sizeof(REAL) * N);
            }
            /* frame terms: A = a0 + sens, D = d0 + c + sens, c = cmK/dt */
            REAL gd = 0;
            for (int64_t n = 0; n < N; n++) {
                g_a0[n] += gA[n];
                g_d0[n] += gD[n];
                REAL gcc = gc[n] + gD[n];
                g_cmK[n] += gcc / d;
                gd -= gcc * c[n] / d;
            }
            gdt[bt] = gd;
            const REAL* xt = x + bt * F;
            for (int64_t f = 0; f < F; f++) { xm[f] = xt[f] * iw[f] + ib[f]; gxm[f] = 0; }
            const REAL* ss = SS + bt * Es;
            for (int64_t e = 0; e < Es; e++) {
                int64_t q = sdst[e];
                REAL se = ss[e];
                g_swE[e] += se * gA[q];
                g_swp[e] += se * gD[q];
                REAL gz = (gA[q] * swE[e] + gD[q] * swp[e]) * se * ((REAL)1 - se);
                g_ssig[e] += gz * xm[ssrc[e]];
                g_sbz[e] += gz;
                gxm[ssrc[e]] += gz * ssig[e];
            }
            REAL* gxt = gx + bt * F;
            for (int64_t f = 0; f < F; f++) {
                g_iw[f] += gxm[f] * xt[f];
                g_ib[f] += gxm[f];
                gxt[f] = gxm[f] * iw[f];
            }
        }
        memcpy(gv0 + b * N, g, sizeof(REAL) * N);
    }
    free(buf);
}

/* CfC gate of one neuron: heads z[0..H-1] (stride n between heads). Returns h. */
static inline REAL cfc_gate_SUF(int mode, const REAL* z, int64_t n, REAL ts, REAL A, REAL wt) {
    if (mode == 2) {
        REAL f = z[0];
        return -A * EXP(-ts * ((REAL)fabs(wt) + (REAL)fabs(f))) * f + A;
    }
    REAL f1 = TANH(z[0]), f2 = TANH(z[n]);
    REAL s = SIGM(z[2 * n] * ts + z[3 * n]);
    if (mode == 1) return f1 + s * f2;
    return f1 * ((REAL)1 - s) + s * f2;
}

/* Wired CfC forward, internal (layer-major) neuron order. PX (B,T,HN) = x·Wx + bias;
   h0 (B,N); dts (B,T) or NULL (then dt_s); perm_in/perm_out (nullable): read h0[perm_in[i]]
   into internal neuron i, write internal neuron perm_out[j] to output column j; old-state weights as a column-sorted list (o_row, o_col, o_val, no);
   new-state weights likewise (n_row, n_col, n_val), with per-layer ranges n_lo/n_hi.
   Layers: L, off (L), size (L). Out: Hs (B,T,N); if save: Z (B,T,HN) pre-activations. */
void cfc_fwd_SUF(int64_t T, int64_t B, int64_t N, int64_t H, int mode, int64_t L,
                 const int64_t* off, const int64_t* size,
                 const REAL* PX, const REAL* h0, const REAL* dts, double dt_s,
                 int64_t no, const int64_t* o_row, const int64_t* o_col, const REAL* o_val,
                 const int64_t* n_lo, const int64_t* n_hi,
                 const int64_t* n_row, const int64_t* n_col, const REAL* n_val,
                 const REAL* Ap, const REAL* wtp, const int64_t* perm_in, const int64_t* perm_out,
                 REAL* Hs, int save, REAL* Z) {
    int64_t HN = H * N;
    REAL* z = (REAL*)malloc(sizeof(REAL) * (HN + 2 * N));
    REAL* hold = z + HN;
    REAL* hn = hold + N;
    for (int64_t b = 0; b < B; b++) {
        if (perm_in) { for (int64_t i = 0; i < N; i++) hold[i] = h0[b * N + perm_in[i]]; }
        else memcpy(hold, h0 + b * N, sizeof(REAL) * N);
        for (int64_t t = 0; t < T; t++) {
            REAL ts = dts ? dts[b * T + t] : (REAL)dt_s;
            memcpy(z, PX + (b * T + t) * HN, sizeof(REAL) * HN);
            for (int64_t q = 0; q < no; q++) z[o_col[q]] += hold[o_row[q]] * o_val[q];
            for (int64_t l = 0; l < L; l++) {
                for (int64_t q = n_lo[l]; q < n_hi[l]; q++) z[n_col[q]] += hn[n_row[q]] * n_val[q];
                int64_t o = off[l], n = size[l];
                const REAL* zl = z + H * o;
                for (int64_t r = 0; r < n; r++)
                    hn[o + r] = cfc_gate_SUF(mode, zl + r, n, ts, Ap ? Ap[o + r] : 0,
                                             wtp ? wtp[o + r] : 0);
            }
            if (save) memcpy(Z + (b * T + t) * HN, z, sizeof(REAL) * HN);
            if (perm_out) { for (int64_t j = 0; j < N; j++) Hs[(b * T + t) * N + j] = hn[perm_out[j]]; }
            else memcpy(Hs + (b * T + t) * N, hn, sizeof(REAL) * N);
            memcpy(hold, hn, sizeof(REAL) * N);
        }
    }
    free(z);
}

/* Wired CfC adjoint. gHs (B,T,N) in. Out (overwritten): gPX (B,T,HN), gh0 (B,N),
   gdt (B,T). Accumulated (caller zeroes): g_oval (no), g_nval (nn), gA (N), gwt (N). */
void cfc_bwd_SUF(int64_t T, int64_t B, int64_t N, int64_t H, int mode, int64_t L,
                 const int64_t* off, const int64_t* size,
                 const REAL* h0, const REAL* dts, const REAL* Hs, const REAL* Z,
                 int64_t no, const int64_t* o_row, const int64_t* o_col, const REAL* o_val,
                 const int64_t* n_lo, const int64_t* n_hi,
                 const int64_t* n_row, const int64_t* n_col, const REAL* n_val,
                 const REAL* Ap, const REAL* wtp, const REAL* gHs,
                 REAL* gPX, REAL* gh0, REAL* gdt,
                 REAL* g_oval, REAL* g_nval, REAL* gA, REAL* gwt) {
    int64_t HN = H * N;
    REAL* g = (REAL*)malloc(sizeof(REAL) * (2 * N));
    REAL* gold = g + N;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t n = 0; n < N; n++) g[n] = 0;
        for (int64_t t = T - 1; t >= 0; t--) {
            const REAL* z = Z + (b * T + t) * HN;
            const REAL* hn = Hs + (b * T + t) * N;
            const REAL* hold = t > 0 ? Hs + (b * T + t - 1) * N : h0 + b * N;
            const REAL* gv = gHs + (b * T + t) * N;
            REAL* gz = gPX + (b * T + t) * HN;
            REAL ts = dts[b * T + t];
            REAL gts = 0;
            for (int64_t n = 0; n < N; n++) g[n] += gv[n];
            for (int64_t l = L - 1; l >= 0; l--) {
                int64_t o = off[l], n = size[l];
                const REAL* zl = z + H * o;
                REAL* gzl = gz + H * o;
                for (int64_t r = 0; r < n; r++) {
                    REAL gh = g[o + r];
                    if (mode == 2) {
                        REAL f = zl[r], A = Ap[o + r], wt = wtp[o + r];
                        REAL awt = (REAL)fabs(wt), af = (REAL)fabs(f);
                        REAL e = EXP(-ts * (awt + af));
                        gzl[r] = -gh * A * e * ((REAL)1 - ts * af);
                        gA[o + r] += gh * ((REAL)1 - e * f);
                        REAL sw = wt > 0 ? (REAL)1 : (wt < 0 ? (REAL)-1 : (REAL)0);
                        gwt[o + r] += gh * A * f * e * ts * sw;
                        gts += gh * A * f * e * (awt + af);
                    } else {
                        REAL f1 = TANH(zl[r]), f2 = TANH(zl[n + r]);
                        REAL s = SIGM(zl[2 * n + r] * ts + zl[3 * n + r]);
                        REAL gs;
                        if (mode == 1) {
                            gzl[r] = gh * ((REAL)1 - f1 * f1);
                            gs = gh * f2;
                        } else {
                            gzl[r] = gh * ((REAL)1 - s) * ((REAL)1 - f1 * f1);
                            gs = gh * (f2 - f1);
                        }
                        gzl[n + r] = gh * s * ((REAL)1 - f2 * f2);
                        REAL gsp = gs * s * ((REAL)1 - s);
                        gzl[2 * n + r] = gsp * ts;
                        gzl[3 * n + r] = gsp;
                        gts += gsp * zl[2 * n + r];
                    }
                }
                for (int64_t q = n_lo[l]; q < n_hi[l]; q++) {
                    REAL gq = gz[n_col[q]];
                    g_nval[q] += hn[n_row[q]] * gq;
                    g[n_row[q]] += n_val[q] * gq;
                }
            }
            for (int64_t n = 0; n < N; n++) gold[n] = 0;
            for (int64_t q = 0; q < no; q++) {
                REAL gq = gz[o_col[q]];
                g_oval[q] += hold[o_row[q]] * gq;
                gold[o_row[q]] += o_val[q] * gq;
            }
            gdt[b * T + t] = gts;
            memcpy(g, gold, sizeof(REAL) * N);
        }
        memcpy(gh0 + b * N, g, sizeof(REAL) * N);
    }
    free(g);
}
"""

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


_PRELUDE = r"""
#include <math.h>
#include <stdint.h>
/* expf by range reduction + degree-6 polynomial (max rel. error ~2e-7), written so the
   compiler can vectorise loops over it (libm's expf is an opaque call). */
static inline float fexp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t i = ((int32_t)n + 127) << 23;
    float f;
    __builtin_memcpy(&f, &i, 4);
    return p * f;
}
static inline float fsigm(float z) { return 1.0f / (1.0f + fexp(-z)); }
static inline float ftanh(float z) { float e = fexp(-2.0f * (z < 0 ? -z : z)); float t = (1.0f - e) / (1.0f + e); return z < 0 ? -t : t; }
static inline double dsigm(double z) { return 1.0 / (1.0 + exp(-z)); }
"""


def _source() -> str:
    parts = [_PRELUDE]
    for real, suf, sigm, tanh_, exp_ in (("float", "f32", "fsigm", "ftanh", "fexp"),
                                        ("double", "f64", "dsigm", "tanh", "exp")):
        parts.append(f"#define REAL {real}\n#define SIGM {sigm}\n#define TANH {tanh_}\n"
                     f"#define EXP {exp_}\n" + _SRC.replace("SUF", suf)
                     + "\n#undef REAL\n#undef SIGM\n#undef TANH\n#undef EXP\n")
    return "".join(parts)


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "flags")):
                    return platform.machine() + line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _cache_dir() -> Path:
    base = os.environ.get("LIQUID_DRIVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "liquid-drive")
    return Path(base) / "kernels"


def _build() -> ctypes.CDLL | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    src = _source()
    tag = hashlib.sha256((src + sys.platform + cc + _cpu_id()).encode()).hexdigest()[:16]
    out = _cache_dir() / f"liquid_cells_{tag}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            c_path = Path(tmp) / "liquid_cells.c"
            c_path.write_text(src)
            so_tmp = Path(tmp) / "liquid_cells.so"
            base = [cc, "-O3", "-std=c99", "-fPIC", "-shared", "-o", str(so_tmp), str(c_path), "-lm"]
            # -march=native vectorises the sigmoid loops; the cache key includes the CPU model
            for cmd in (base[:2] + ["-march=native"] + base[2:], base):
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                if res.returncode == 0:
                    break
            else:
                return None
            os.replace(so_tmp, out)  # atomic: concurrent builders never see half a file
    return ctypes.CDLL(str(out))


def lib() -> ctypes.CDLL | None:
    """The compiled kernels, or None (pure-PyTorch fallback)."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            if os.environ.get("LIQUID_DRIVE_NO_CKERNEL", "") not in ("", "0"):
                _lib = None
            else:
                try:
                    _lib = _build()
                except (OSError, subprocess.SubprocessError):
                    _lib = None
            _tried = True
    return _lib


def suffix(dtype: torch.dtype) -> str | None:
    """Kernel name suffix for a dtype, or None when there is no kernel for it."""
    return {torch.float32: "f32", torch.float64: "f64"}.get(dtype)


def ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def func(name: str, dtype: torch.dtype):  # noqa: ANN201 - ctypes function
    """ctypes function ``name_<suffix>`` with all-pointer/int64 argument handling."""
    L = lib()
    suf = suffix(dtype)
    if L is None or suf is None:
        return None
    key = f"{name}_{suf}"
    cache = _funcs
    if key not in cache:
        f = getattr(L, key)
        f.restype = None
        f.argtypes = _ARGTYPES[name]
        cache[key] = f
    return cache[key]


_funcs: dict = {}
_I, _P, _C, _D = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_double
_ARGTYPES = {
    "ltc_fwd": [_I] * 7 + [_P, _P, _D] + [_P] * 19 + [_C] + [_P] * 4 + [_I] + [_P] * 3,
    "ltc_bwd": [_I] * 7 + [_P, _P, _D] + [_P] * 22,
    "cfc_fwd": [_I] * 4 + [_C, _I] + [_P] * 5 + [_D, _I] + [_P] * 13 + [_C, _P],
    "cfc_bwd": [_I] * 4 + [_C, _I] + [_P] * 6 + [_I] + [_P] * 18,
}
