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

/* The LTC kernels process LN batch samples at once ("lanes", innermost index), so every
   inner loop is a contiguous, vectorisable loop over lanes. Saved tensors use the blocked
   layout [block][...][lane]; the last block is padded with copies of its last sample. */

static inline void fwd_edge_SUF(const REAL* restrict vp, REAL* restrict se, REAL* restrict nq,
                                REAL* restrict dq, REAL sg, REAL bz, REAL we, REAL wp) {
    for (int l = 0; l < LN; l++) {
        REAL s = SIGM(sg * vp[l] + bz);
        se[l] = s;
        nq[l] += we * s;
        dq[l] += wp * s;
    }
}

static inline void bwd_edge_SUF(const REAL* restrict gn, const REAL* restrict gd,
                                const REAL* restrict se, const REAL* restrict vp,
                                REAL* restrict gp, REAL* restrict aE, REAL* restrict aP,
                                REAL* restrict aS, REAL* restrict aB, REAL we, REAL wp, REAL sg) {
    for (int l = 0; l < LN; l++) {
        REAL s = se[l];
        REAL gz = (gn[l] * we + gd[l] * wp) * s * ((REAL)1 - s);
        aE[l] += s * gn[l];
        aP[l] += s * gd[l];
        aS[l] += gz * vp[l];
        aB[l] += gz;
        gp[l] += gz * sg;
    }
}

/* LTC forward over a sequence, sensory synapses included. x (B,T,F) raw inputs; dt (B,T)
   or NULL (then every dt = dt_s); v0 (B,N). Input map xm = x*iw + ib. Sensory edges
   ssrc/sdst (Es): a = sigmoid(ssig*xm[ssrc] + sbz), A[sdst] += swE*a, D[sdst] += swp*a on
   top of A = a0, D = d0 + c, c = cmK/dt. Recurrent edges src/dst (E) likewise with
   sig, bz, wE, wp. K unfolds: v <- (A + c*v + sum wE*s) / (D + sum wp*s). out (B,T,N).
   If save: blocked SS (nb,T,Es,LN), Vs (nb,T*K+1,N,LN), S (nb,T*K,E,LN), DEN (nb,T*K,N,LN).
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
    int64_t nb = (B + LN - 1) / LN;
    REAL* buf = (REAL*)malloc(sizeof(REAL) * LN * (6 * N + F + 2));
    REAL *A = buf, *D = A + N * LN, *c = D + N * LN, *v = c + N * LN, *num = v + N * LN,
         *den = num + N * LN, *xm = den + N * LN, *s = xm + F * LN, *dd = s + LN;
    int64_t bl[LN];
    for (int64_t blk = 0; blk < nb; blk++) {
        int64_t b0 = blk * LN, nl = B - b0 < LN ? B - b0 : LN;
        for (int l = 0; l < LN; l++) bl[l] = b0 + (l < nl ? l : nl - 1);
        for (int64_t n = 0; n < N; n++)
            for (int l = 0; l < LN; l++) v[n * LN + l] = v0[bl[l] * N + n];
        REAL* Vsb = save ? Vs + blk * (T * K + 1) * N * LN : NULL;
        if (save) memcpy(Vsb, v, sizeof(REAL) * N * LN);
        for (int64_t t = 0; t < T; t++) {
            for (int l = 0; l < LN; l++) dd[l] = dt ? dt[bl[l] * T + t] : (REAL)dt_s;
            for (int64_t f = 0; f < F; f++)
                for (int l = 0; l < LN; l++)
                    xm[f * LN + l] = x[(bl[l] * T + t) * F + f] * iw[f] + ib[f];
            for (int64_t n = 0; n < N; n++)
                for (int l = 0; l < LN; l++) {
                    REAL cc = cmK[n] / dd[l];
                    c[n * LN + l] = cc; A[n * LN + l] = a0[n]; D[n * LN + l] = d0[n] + cc;
                }
            REAL* ssb = save ? SS + (blk * T + t) * Es * LN : NULL;
            for (int64_t e = 0; e < Es; e++)
                fwd_edge_SUF(xm + ssrc[e] * LN, save ? ssb + e * LN : s, A + sdst[e] * LN,
                             D + sdst[e] * LN, ssig[e], sbz[e], swE[e], swp[e]);
            for (int64_t k = 0; k < K; k++) {
                int64_t i = t * K + k;
                for (int64_t j = 0; j < N * LN; j++) { num[j] = A[j] + c[j] * v[j]; den[j] = D[j]; }
                REAL* Sb = save ? S + (blk * T * K + i) * E * LN : NULL;
                for (int64_t e = 0; e < E; e++)
                    fwd_edge_SUF(v + src[e] * LN, save ? Sb + e * LN : s, num + dst[e] * LN,
                                 den + dst[e] * LN, sig[e], bz[e], wE[e], wp[e]);
                for (int64_t j = 0; j < N * LN; j++) v[j] = num[j] / den[j];
                if (save) {
                    memcpy(DEN + (blk * T * K + i) * N * LN, den, sizeof(REAL) * N * LN);
                    memcpy(Vsb + (i + 1) * N * LN, v, sizeof(REAL) * N * LN);
                }
            }
            for (int64_t l = 0; l < nl; l++) {
                int64_t bt = (b0 + l) * T + t;
                for (int64_t n = 0; n < N; n++) out[bt * N + n] = v[n * LN + l];
                if (y) for (int64_t m = 0; m < M; m++) y[bt * M + m] = v[m * LN + l] * ow[m] + ob[m];
            }
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
    int64_t nb = (B + LN - 1) / LN;
    int64_t P = 2 * F + 4 * Es + 3 * N + 4 * E;
    REAL* acc = (REAL*)calloc((size_t)(P * LN), sizeof(REAL));
    REAL *a_iw = acc, *a_ib = a_iw + F * LN, *a_ssig = a_ib + F * LN, *a_sbz = a_ssig + Es * LN,
         *a_swE = a_sbz + Es * LN, *a_swp = a_swE + Es * LN, *a_a0 = a_swp + Es * LN,
         *a_d0 = a_a0 + N * LN, *a_cmK = a_d0 + N * LN, *a_sig = a_cmK + N * LN,
         *a_bz = a_sig + E * LN, *a_wE = a_bz + E * LN, *a_wp = a_wE + E * LN;
    REAL* buf = (REAL*)malloc(sizeof(REAL) * LN * (8 * N + 2 * F + 2));
    REAL *g = buf, *gnum = g + N * LN, *gden = gnum + N * LN, *gnew = gden + N * LN,
         *gA = gnew + N * LN, *gD = gA + N * LN, *gc = gD + N * LN, *c = gc + N * LN,
         *xm = c + N * LN, *gxm = xm + F * LN, *dd = gxm + F * LN, *gdl = dd + LN;
    int64_t bl[LN];
    for (int64_t blk = 0; blk < nb; blk++) {
        int64_t b0 = blk * LN, nl = B - b0 < LN ? B - b0 : LN;
        for (int l = 0; l < LN; l++) bl[l] = b0 + (l < nl ? l : nl - 1);
        const REAL* Vsb = Vs + blk * (T * K + 1) * N * LN;
        for (int64_t j = 0; j < N * LN; j++) g[j] = 0;
        for (int64_t t = T - 1; t >= 0; t--) {
            for (int l = 0; l < LN; l++) { dd[l] = dt ? dt[bl[l] * T + t] : (REAL)dt_s; gdl[l] = 0; }
            for (int64_t n = 0; n < N; n++)
                for (int l = 0; l < LN; l++) c[n * LN + l] = cmK[n] / dd[l];
            for (int64_t l = 0; l < nl; l++)
                for (int64_t n = 0; n < N; n++) g[n * LN + l] += gV[((b0 + l) * T + t) * N + n];
            for (int64_t j = 0; j < N * LN; j++) { gA[j] = 0; gD[j] = 0; gc[j] = 0; }
            for (int64_t k = K - 1; k >= 0; k--) {
                int64_t i = t * K + k;
                const REAL* vin = Vsb + i * N * LN;
                const REAL* vout = vin + N * LN;
                const REAL* dn = DEN + (blk * T * K + i) * N * LN;
                const REAL* Sb = S + (blk * T * K + i) * E * LN;
                for (int64_t j = 0; j < N * LN; j++) {
                    REAL gn = g[j] / dn[j];
                    REAL gdn = -gn * vout[j];
                    gnum[j] = gn; gden[j] = gdn;
                    gA[j] += gn; gD[j] += gdn; gc[j] += gn * vin[j];
                    gnew[j] = gn * c[j];
                }
                for (int64_t e = 0; e < E; e++)
                    bwd_edge_SUF(gnum + dst[e] * LN, gden + dst[e] * LN, Sb + e * LN,
                                 vin + src[e] * LN, gnew + src[e] * LN, a_wE + e * LN,
                                 a_wp + e * LN, a_sig + e * LN, a_bz + e * LN, wE[e], wp[e], sig[e]);
                REAL* tmp = g; g = gnew; gnew = tmp;
            }
            /* frame terms: A = a0 + sens, D = d0 + c + sens, c = cmK/dt */
            for (int64_t n = 0; n < N; n++)
                for (int l = 0; l < LN; l++) {
                    int64_t j = n * LN + l;
                    a_a0[j] += gA[j];
                    a_d0[j] += gD[j];
                    REAL gcc = gc[j] + gD[j];
                    a_cmK[j] += gcc / dd[l];
                    gdl[l] -= gcc * c[j] / dd[l];
                }
            for (int64_t l = 0; l < nl; l++) gdt[(b0 + l) * T + t] = gdl[l];
            for (int64_t f = 0; f < F; f++)
                for (int l = 0; l < LN; l++) {
                    xm[f * LN + l] = x[(bl[l] * T + t) * F + f] * iw[f] + ib[f];
                    gxm[f * LN + l] = 0;
                }
            const REAL* ssb = SS + (blk * T + t) * Es * LN;
            for (int64_t e = 0; e < Es; e++)
                bwd_edge_SUF(gA + sdst[e] * LN, gD + sdst[e] * LN, ssb + e * LN,
                             xm + ssrc[e] * LN, gxm + ssrc[e] * LN, a_swE + e * LN,
                             a_swp + e * LN, a_ssig + e * LN, a_sbz + e * LN, swE[e], swp[e], ssig[e]);
            for (int64_t f = 0; f < F; f++)
                for (int l = 0; l < LN; l++) {
                    int64_t j = f * LN + l;
                    REAL xv = x[(bl[l] * T + t) * F + f];
                    a_iw[j] += gxm[j] * xv;
                    a_ib[j] += gxm[j];
                }
            for (int64_t l = 0; l < nl; l++)
                for (int64_t f = 0; f < F; f++)
                    gx[((b0 + l) * T + t) * F + f] = gxm[f * LN + l] * iw[f];
        }
        for (int64_t l = 0; l < nl; l++)
            for (int64_t n = 0; n < N; n++) gv0[(b0 + l) * N + n] = g[n * LN + l];
    }
    for (int64_t p = 0; p < P; p++) {
        REAL sum = 0;
        for (int l = 0; l < LN; l++) sum += acc[p * LN + l];
        gP[p] += sum;
    }
    free(buf);
    free(acc);
}

/* CfC gates over the LN lanes of one neuron: z1..z4 its head rows (LN each). */
static inline void cfc_gate_SUF(int mode, const REAL* restrict z1, const REAL* restrict z2,
                                const REAL* restrict z3, const REAL* restrict z4,
                                const REAL* restrict ts, REAL A, REAL wt, REAL* restrict h) {
    if (mode == 2) {
        REAL awt = (REAL)fabs(wt);
        for (int l = 0; l < LN; l++) {
            REAL f = z1[l];
            h[l] = -A * EXP(-ts[l] * (awt + (REAL)fabs(f))) * f + A;
        }
    } else if (mode == 1) {
        for (int l = 0; l < LN; l++)
            h[l] = TANH(z1[l]) + SIGM(z3[l] * ts[l] + z4[l]) * TANH(z2[l]);
    } else {
        for (int l = 0; l < LN; l++) {
            REAL f1 = TANH(z1[l]), f2 = TANH(z2[l]), sg = SIGM(z3[l] * ts[l] + z4[l]);
            h[l] = f1 * ((REAL)1 - sg) + sg * f2;
        }
    }
}

static inline void lane_axpy_SUF(REAL* restrict y, const REAL* restrict x, REAL a) {
    for (int l = 0; l < LN; l++) y[l] += a * x[l];
}

/* y += a*x and acc += x*w (both per lane). */
static inline void lane_bwd_SUF(REAL* restrict gsrc, REAL* restrict acc, const REAL* restrict gz,
                                const REAL* restrict hsrc, REAL w) {
    for (int l = 0; l < LN; l++) { acc[l] += hsrc[l] * gz[l]; gsrc[l] += w * gz[l]; }
}

/* Wired CfC forward, internal (layer-major) neuron order, LN samples per block.
   PX (B,T,HN) = x·Wx + bias; h0 (B,N); dts (B,T) or NULL (then dt_s); perm_in/perm_out
   (nullable): read h0[perm_in[i]] into internal neuron i, write internal neuron
   perm_out[j] to output column j. Old-state weights: column-sorted list (o_row, o_col,
   o_val, no); new-state weights likewise (n_row, n_col, n_val) with per-layer ranges
   n_lo/n_hi. Layers: L, off (L), size (L). Out: Hs (B,T,N); if save: Z (nb,T,HN,LN). */
void cfc_fwd_SUF(int64_t T, int64_t B, int64_t N, int64_t H, int mode, int64_t L,
                 const int64_t* off, const int64_t* size,
                 const REAL* PX, const REAL* h0, const REAL* dts, double dt_s,
                 int64_t no, const int64_t* o_row, const int64_t* o_col, const REAL* o_val,
                 const int64_t* n_lo, const int64_t* n_hi,
                 const int64_t* n_row, const int64_t* n_col, const REAL* n_val,
                 const REAL* Ap, const REAL* wtp, const int64_t* perm_in, const int64_t* perm_out,
                 REAL* Hs, int save, REAL* Z) {
    int64_t HN = H * N, nb = (B + LN - 1) / LN;
    REAL* buf = (REAL*)malloc(sizeof(REAL) * LN * (HN + 2 * N + 1));
    REAL *z = buf, *hold = z + HN * LN, *hn = hold + N * LN, *ts = hn + N * LN;
    int64_t bl[LN];
    for (int64_t blk = 0; blk < nb; blk++) {
        int64_t b0 = blk * LN, nl = B - b0 < LN ? B - b0 : LN;
        for (int l = 0; l < LN; l++) bl[l] = b0 + (l < nl ? l : nl - 1);
        for (int64_t i = 0; i < N; i++)
            for (int l = 0; l < LN; l++)
                hold[i * LN + l] = h0[bl[l] * N + (perm_in ? perm_in[i] : i)];
        for (int64_t t = 0; t < T; t++) {
            for (int l = 0; l < LN; l++) ts[l] = dts ? dts[bl[l] * T + t] : (REAL)dt_s;
            for (int64_t j = 0; j < HN; j++)
                for (int l = 0; l < LN; l++) z[j * LN + l] = PX[(bl[l] * T + t) * HN + j];
            for (int64_t q = 0; q < no; q++)
                lane_axpy_SUF(z + o_col[q] * LN, hold + o_row[q] * LN, o_val[q]);
            for (int64_t k = 0; k < L; k++) {
                for (int64_t q = n_lo[k]; q < n_hi[k]; q++)
                    lane_axpy_SUF(z + n_col[q] * LN, hn + n_row[q] * LN, n_val[q]);
                int64_t o = off[k], n = size[k];
                const REAL* zl = z + H * o * LN;
                for (int64_t r = 0; r < n; r++) {
                    const REAL* z1 = zl + r * LN;
                    cfc_gate_SUF(mode, z1, z1 + n * LN, z1 + 2 * n * LN, z1 + 3 * n * LN, ts,
                                 Ap ? Ap[o + r] : 0, wtp ? wtp[o + r] : 0, hn + (o + r) * LN);
                }
            }
            if (save) memcpy(Z + (blk * T + t) * HN * LN, z, sizeof(REAL) * HN * LN);
            for (int64_t l = 0; l < nl; l++)
                for (int64_t j = 0; j < N; j++)
                    Hs[((b0 + l) * T + t) * N + j] = hn[(perm_out ? perm_out[j] : j) * LN + l];
            memcpy(hold, hn, sizeof(REAL) * N * LN);
        }
    }
    free(buf);
}

static inline void cfc_gate_bwd_SUF(int nogate, const REAL* restrict gh, const REAL* restrict z1,
                                    const REAL* restrict z2, const REAL* restrict z3,
                                    const REAL* restrict z4, const REAL* restrict ts,
                                    REAL* restrict g1, REAL* restrict g2, REAL* restrict g3,
                                    REAL* restrict g4, REAL* restrict gts) {
    for (int l = 0; l < LN; l++) {
        REAL f1 = TANH(z1[l]), f2 = TANH(z2[l]);
        REAL sg = SIGM(z3[l] * ts[l] + z4[l]);
        REAL d1 = gh[l] * ((REAL)1 - f1 * f1);
        g1[l] = nogate ? d1 : d1 * ((REAL)1 - sg);
        REAL gs = nogate ? gh[l] * f2 : gh[l] * (f2 - f1);
        g2[l] = gh[l] * sg * ((REAL)1 - f2 * f2);
        REAL gsp = gs * sg * ((REAL)1 - sg);
        g3[l] = gsp * ts[l];
        g4[l] = gsp;
        gts[l] += gsp * z3[l];
    }
}

static inline void cfc_pure_bwd_SUF(const REAL* restrict gh, const REAL* restrict z1,
                                    const REAL* restrict ts, REAL A, REAL wt, REAL* restrict g1,
                                    REAL* restrict aA, REAL* restrict aw, REAL* restrict gts) {
    REAL awt = (REAL)fabs(wt);
    REAL sw = wt > 0 ? (REAL)1 : (wt < 0 ? (REAL)-1 : (REAL)0);
    for (int l = 0; l < LN; l++) {
        REAL f = z1[l], af = (REAL)fabs(f);
        REAL e = EXP(-ts[l] * (awt + af));
        g1[l] = -gh[l] * A * e * ((REAL)1 - ts[l] * af);
        aA[l] += gh[l] * ((REAL)1 - e * f);
        aw[l] += gh[l] * A * f * e * ts[l] * sw;
        gts[l] += gh[l] * A * f * e * (awt + af);
    }
}

/* Wired CfC adjoint (internal order, no perms). gHs (B,T,N) in. Out (overwritten):
   gPX (B,T,HN), gh0 (B,N), gdt (B,T). Accumulated (caller zeroes): g_oval (no),
   g_nval (n_hi[L-1]), gA (N), gwt (N). */
void cfc_bwd_SUF(int64_t T, int64_t B, int64_t N, int64_t H, int mode, int64_t L,
                 const int64_t* off, const int64_t* size,
                 const REAL* h0, const REAL* dts, const REAL* Hs, const REAL* Z,
                 int64_t no, const int64_t* o_row, const int64_t* o_col, const REAL* o_val,
                 const int64_t* n_lo, const int64_t* n_hi,
                 const int64_t* n_row, const int64_t* n_col, const REAL* n_val,
                 const REAL* Ap, const REAL* wtp, const REAL* gHs,
                 REAL* gPX, REAL* gh0, REAL* gdt,
                 REAL* g_oval, REAL* g_nval, REAL* gA, REAL* gwt) {
    int64_t HN = H * N, nb = (B + LN - 1) / LN, nn = n_hi[L - 1];
    int64_t P = no + nn + 2 * N;
    REAL* acc = (REAL*)calloc((size_t)(P * LN), sizeof(REAL));
    REAL *a_o = acc, *a_n = a_o + no * LN, *a_A = a_n + nn * LN, *a_wt = a_A + N * LN;
    REAL* buf = (REAL*)malloc(sizeof(REAL) * LN * (HN + 4 * N + 2));
    REAL *gz = buf, *g = gz + HN * LN, *gold = g + N * LN, *hn = gold + N * LN,
         *hold = hn + N * LN, *ts = hold + N * LN, *gts = ts + LN;
    int64_t bl[LN];
    for (int64_t blk = 0; blk < nb; blk++) {
        int64_t b0 = blk * LN, nl = B - b0 < LN ? B - b0 : LN;
        for (int l = 0; l < LN; l++) bl[l] = b0 + (l < nl ? l : nl - 1);
        for (int64_t j = 0; j < N * LN; j++) g[j] = 0;
        for (int64_t t = T - 1; t >= 0; t--) {
            const REAL* z = Z + (blk * T + t) * HN * LN;
            for (int l = 0; l < LN; l++) { ts[l] = dts[bl[l] * T + t]; gts[l] = 0; }
            for (int64_t i = 0; i < N; i++)
                for (int l = 0; l < LN; l++) {
                    hn[i * LN + l] = Hs[(bl[l] * T + t) * N + i];
                    hold[i * LN + l] = t > 0 ? Hs[(bl[l] * T + t - 1) * N + i] : h0[bl[l] * N + i];
                }
            for (int64_t l = 0; l < nl; l++)
                for (int64_t i = 0; i < N; i++) g[i * LN + l] += gHs[((b0 + l) * T + t) * N + i];
            for (int64_t k = L - 1; k >= 0; k--) {
                int64_t o = off[k], n = size[k];
                const REAL* zl = z + H * o * LN;
                REAL* gzl = gz + H * o * LN;
                for (int64_t r = 0; r < n; r++) {
                    const REAL* gh = g + (o + r) * LN;
                    const REAL* z1 = zl + r * LN;
                    REAL* g1 = gzl + r * LN;
                    if (mode == 2)
                        cfc_pure_bwd_SUF(gh, z1, ts, Ap[o + r], wtp[o + r], g1,
                                         a_A + (o + r) * LN, a_wt + (o + r) * LN, gts);
                    else
                        cfc_gate_bwd_SUF(mode == 1, gh, z1, z1 + n * LN, z1 + 2 * n * LN,
                                         z1 + 3 * n * LN, ts, g1, g1 + n * LN, g1 + 2 * n * LN,
                                         g1 + 3 * n * LN, gts);
                }
                for (int64_t q = n_lo[k]; q < n_hi[k]; q++)
                    lane_bwd_SUF(g + n_row[q] * LN, a_n + q * LN, gz + n_col[q] * LN,
                                 hn + n_row[q] * LN, n_val[q]);
            }
            for (int64_t j = 0; j < N * LN; j++) gold[j] = 0;
            for (int64_t q = 0; q < no; q++)
                lane_bwd_SUF(gold + o_row[q] * LN, a_o + q * LN, gz + o_col[q] * LN,
                             hold + o_row[q] * LN, o_val[q]);
            for (int64_t l = 0; l < nl; l++) {
                gdt[(b0 + l) * T + t] = gts[l];
                for (int64_t j = 0; j < HN; j++) gPX[((b0 + l) * T + t) * HN + j] = gz[j * LN + l];
            }
            REAL* tmp = g; g = gold; gold = tmp;
        }
        for (int64_t l = 0; l < nl; l++)
            for (int64_t i = 0; i < N; i++) gh0[(b0 + l) * N + i] = g[i * LN + l];
    }
    for (int64_t q = 0; q < P; q++) {
        REAL sum = 0;
        for (int l = 0; l < LN; l++) sum += acc[q * LN + l];
        if (q < no) g_oval[q] += sum;
        else if (q < no + nn) g_nval[q - no] += sum;
        else if (q < no + nn + N) gA[q - no - nn] += sum;
        else gwt[q - no - nn - N] += sum;
    }
    free(buf);
    free(acc);
}

/* Packed entry points for the per-frame inference step: two arrays instead of ~35
   arguments, so a Python call costs a few hundred nanoseconds of argument conversion. */
void ltc_fwd_packed_SUF(const int64_t* I, void* const* P, double dt_s) {
    ltc_fwd_SUF(I[0], I[1], I[2], I[3], I[4], I[5], I[6], (const REAL*)P[0], (const REAL*)P[1],
                dt_s, (const REAL*)P[2], (const REAL*)P[3], (const REAL*)P[4],
                (const int64_t*)P[5], (const int64_t*)P[6], (const REAL*)P[7], (const REAL*)P[8],
                (const REAL*)P[9], (const REAL*)P[10], (const REAL*)P[11], (const REAL*)P[12],
                (const REAL*)P[13], (const int64_t*)P[14], (const int64_t*)P[15],
                (const REAL*)P[16], (const REAL*)P[17], (const REAL*)P[18], (const REAL*)P[19],
                (REAL*)P[20], (int)I[7], NULL, NULL, NULL, NULL, I[8], (const REAL*)P[21],
                (const REAL*)P[22], (REAL*)P[23]);
}

/* I[8] = F; P[18..20] = x (B,F), Wx (F,HN), bias (HN): the input heads are computed here. */
void cfc_fwd_packed_SUF(const int64_t* I, void* const* P, double dt_s) {
    int64_t B = I[1], HN = I[3] * I[2], F = I[8];
    const REAL *x = (const REAL*)P[18], *Wx = (const REAL*)P[19], *bias = (const REAL*)P[20];
    REAL* px = (REAL*)malloc(sizeof(REAL) * B * HN);
    for (int64_t b = 0; b < B; b++) {
        REAL* row = px + b * HN;
        for (int64_t j = 0; j < HN; j++) row[j] = bias[j];
        for (int64_t f = 0; f < F; f++) {
            REAL xv = x[b * F + f];
            const REAL* w = Wx + f * HN;
            for (int64_t j = 0; j < HN; j++) row[j] += xv * w[j];
        }
    }
    cfc_fwd_SUF(I[0], I[1], I[2], I[3], (int)I[4], I[5], (const int64_t*)P[0],
                (const int64_t*)P[1], px, (const REAL*)P[3], (const REAL*)P[4],
                dt_s, I[6], (const int64_t*)P[5], (const int64_t*)P[6], (const REAL*)P[7],
                (const int64_t*)P[8], (const int64_t*)P[9], (const int64_t*)P[10],
                (const int64_t*)P[11], (const REAL*)P[12], (const REAL*)P[13],
                (const REAL*)P[14], (const int64_t*)P[15], (const int64_t*)P[16],
                (REAL*)P[17], 0, NULL);
    free(px);
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


LANES = 16  # batch samples per vector block in the kernels (the C macro LN)


def lanes_for(batch: int) -> int:
    """Block width for a batch: vector blocks of LANES, or the scalar kernels for tiny batches."""
    return LANES if batch >= 8 else 1


def _source() -> str:
    parts = [_PRELUDE]
    for real, suf, sigm, tanh_, exp_ in (("float", "f32", "fsigm", "ftanh", "fexp"),
                                        ("double", "f64", "dsigm", "tanh", "exp")):
        for lanes in (LANES, 1):  # vector blocks for batches, a scalar variant for B ~ 1
            name = suf if lanes == LANES else f"{suf}_l1"
            parts.append(f"#define REAL {real}\n#define SIGM {sigm}\n#define TANH {tanh_}\n"
                         f"#define EXP {exp_}\n#define LN {lanes}\n" + _SRC.replace("SUF", name)
                         + "\n#undef REAL\n#undef SIGM\n#undef TANH\n#undef EXP\n#undef LN\n")
    return "".join(parts)


def _cpu_id() -> str:
    """CPU model and feature flags: a -march=native build must never run on another CPU."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part") and key not in found:
                    found[key] = line
    except OSError:
        pass
    return platform.machine() + platform.processor() + "".join(sorted(found.values()))


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


def func(name: str, dtype: torch.dtype, lanes: int = LANES):  # noqa: ANN201 - ctypes function
    """ctypes function ``name_<suffix>`` (block width `lanes`: LANES or 1), or None."""
    L = lib()
    suf = suffix(dtype)
    if L is None or suf is None:
        return None
    key = f"{name}_{suf}" + ("" if lanes == LANES else "_l1")
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
    "ltc_fwd_packed": [_P, _P, _D],
    "cfc_fwd_packed": [_P, _P, _D],
}


def packed(n_int: int, n_ptr: int) -> tuple[ctypes.Array, ctypes.Array]:
    """Argument arrays for the ``*_packed`` entry points (filled once, patched per call)."""
    return (ctypes.c_int64 * n_int)(), (ctypes.c_void_p * n_ptr)()
