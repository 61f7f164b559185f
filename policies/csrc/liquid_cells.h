/* C kernels of the liquid cells (LTC and wired CfC): argument structures and entry points.
 *
 * Every entry point takes one pointer to an argument structure. The structures hold only
 * 8-byte fields (int64_t, double, pointers), so their layout has no padding and is mirrored
 * field by field by the ctypes.Structure classes in policies/_ckernel.py; lc_struct_size()
 * lets Python check the mirror at load time. Real-valued arrays are void pointers: each
 * kernel exists for float ("_f32") and double ("_f64"), in a 16-lane vector-block variant
 * (batches >= 8, the training path) and a scalar variant ("_l1", closed-loop steps).
 * Documentation of the maths: docs/cells.md.
 */
#ifndef LIQUID_CELLS_H
#define LIQUID_CELLS_H

#include <stdint.h>

#define LC_ABI_VERSION 2
#define LC_LANES 16

/* LTC forward over a sequence (sensory synapses, input map, K unfolds per frame).
   x (B,T,F) raw inputs; dt (B,T) or NULL (then every dt = dt_s); v0 (B,N).
   out (B,T,N) states; if save: blocked SS (nb,T,Es,LN), Vs (nb,T*K+1,N,LN), S (nb,T*K,E,LN),
   DEN (nb,T*K,N,LN); if y: motor outputs y (B,T,M) = v[:M]*ow + ob.
   check = 1: first scan x and v0; on a NaN/inf set bad to its flat index (x first, then
   B*T*F + index in v0) and compute nothing; otherwise bad = -1. */
typedef struct {
    int64_t B, T, F, N, Es, E, K;
    const void *x, *dt;
    double dt_s;
    const void *v0, *iw, *ib;
    const int64_t *ssrc, *sdst;
    const void *ssig, *sbz, *swE, *swp, *a0, *d0, *cmK;
    const int64_t *src, *dst;
    const void *sig, *bz, *wE, *wp;
    void *out;
    int64_t save;
    void *SS, *Vs, *S, *DEN;
    int64_t M;
    const void *ow, *ob;
    void *y;
    int64_t check, bad;
} lc_ltc_fwd_args;

/* LTC adjoint of a forward with save = 1. gV (B,T,N) in. Overwritten: gx (B,T,F), gdt (B,T),
   gv0 (B,N). Accumulated (caller zeroes): gP = [g_iw, g_ib (F each); g_ssig, g_sbz, g_swE,
   g_swp (Es each); g_a0, g_d0, g_cmK (N each); g_sig, g_bz, g_wE, g_wp (E each)]. */
typedef struct {
    int64_t B, T, F, N, Es, E, K;
    const void *x, *dt;
    double dt_s;
    const void *iw, *ib;
    const int64_t *ssrc, *sdst;
    const void *ssig, *swE, *swp, *cmK;
    const int64_t *src, *dst;
    const void *sig, *wE, *wp;
    const void *SS, *Vs, *S, *DEN, *gV;
    void *gx, *gdt, *gv0, *gP;
} lc_ltc_bwd_args;

/* Wired CfC forward in internal (layer-major) neuron order. Input heads PX (B,T,HN) =
   x·Wx + bias, or PX = NULL and x (B,T,F), Wx (F,HN), bias (HN) given (computed here: the
   closed-loop step). h0 (B,N); dts (B,T) or NULL (then dt_s); perm_in / perm_out (nullable):
   read h0[perm_in[i]] into internal neuron i, write internal neuron perm_out[j] to column j.
   Old-state weights: column-sorted list (o_row, o_col, o_val; no entries); new-state weights
   likewise (n_row, n_col, n_val) with per-layer ranges n_lo/n_hi. Layers: L, off, size.
   mode: 0 default, 1 no_gate, 2 pure (A, wt used). Out: Hs (B,T,N); if save: Z (nb,T,HN,LN).
   check / bad: as for the LTC, over PX (or x) and then h0. */
typedef struct {
    int64_t T, B, N, H, mode, L;
    const int64_t *off, *size;
    const void *PX, *x, *Wx, *bias;
    int64_t F;
    const void *h0, *dts;
    double dt_s;
    int64_t no;
    const int64_t *o_row, *o_col;
    const void *o_val;
    const int64_t *n_lo, *n_hi, *n_row, *n_col;
    const void *n_val, *A, *wt;
    const int64_t *perm_in, *perm_out;
    void *Hs;
    int64_t save;
    void *Z;
    int64_t check, bad;
} lc_cfc_fwd_args;

/* Wired CfC adjoint (internal order, no perms). gHs (B,T,N) in. Out (overwritten):
   gPX (B,T,HN), gh0 (B,N), gdt (B,T). Accumulated (caller zeroes): g_oval (no),
   g_nval (n_hi[L-1]), gA (N), gwt (N). */
typedef struct {
    int64_t T, B, N, H, mode, L;
    const int64_t *off, *size;
    const void *h0, *dts, *Hs, *Z;
    int64_t no;
    const int64_t *o_row, *o_col;
    const void *o_val;
    const int64_t *n_lo, *n_hi, *n_row, *n_col;
    const void *n_val, *A, *wt, *gHs;
    void *gPX, *gh0, *gdt, *g_oval, *g_nval, *gA, *gwt;
} lc_cfc_bwd_args;

#define LC_DECLARE(SUF)                                   \
    void lc_ltc_fwd_##SUF(lc_ltc_fwd_args *a);            \
    void lc_ltc_bwd_##SUF(const lc_ltc_bwd_args *a);      \
    void lc_cfc_fwd_##SUF(lc_cfc_fwd_args *a);            \
    void lc_cfc_bwd_##SUF(const lc_cfc_bwd_args *a);
LC_DECLARE(f32)
LC_DECLARE(f32_l1)
LC_DECLARE(f64)
LC_DECLARE(f64_l1)
#undef LC_DECLARE

int64_t lc_abi_version(void);
/* sizeof of the argument structures: 0 ltc_fwd, 1 ltc_bwd, 2 cfc_fwd, 3 cfc_bwd; -1 else */
int64_t lc_struct_size(int64_t which);
/* The build key the library was compiled with (-DLC_BUILD_KEY=...), checked at load. */
const char *lc_build_key(void);

#endif
