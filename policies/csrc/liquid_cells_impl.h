/* Kernel bodies, included by liquid_cells.c once per variant with REAL (float/double), LN
 * (lanes: batch samples per vector block), SIGM/TANH/EXP and FN(name) (name + suffix) set.
 *
 * The kernels process LN batch samples at once (the innermost index), so every inner loop
 * is a contiguous, vectorisable loop over lanes. Saved tensors use the blocked layout
 * [block][...][lane]; the last block is padded with copies of its last sample. */

static inline void FN(fwd_edge)(const REAL *restrict vp, REAL *restrict se, REAL *restrict nq,
                                REAL *restrict dq, REAL sg, REAL bz, REAL we, REAL wp) {
    for (int l = 0; l < LN; l++) {
        REAL s = SIGM(sg * vp[l] + bz);
        se[l] = s;
        nq[l] += we * s;
        dq[l] += wp * s;
    }
}

static inline void FN(bwd_edge)(const REAL *restrict gn, const REAL *restrict gd,
                                const REAL *restrict se, const REAL *restrict vp,
                                REAL *restrict gp, REAL *restrict aE, REAL *restrict aP,
                                REAL *restrict aS, REAL *restrict aB, REAL we, REAL wp, REAL sg) {
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

/* Index of the first non-finite value of p[0..n), or -1. */
static int64_t FN(first_bad)(const REAL *p, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(p[i])) return i;
    return -1;
}

void FN(lc_ltc_fwd)(lc_ltc_fwd_args *a) {
    const int64_t B = a->B, T = a->T, F = a->F, N = a->N, Es = a->Es, E = a->E, K = a->K;
    const REAL *x = (const REAL *)a->x, *dt = (const REAL *)a->dt, *v0 = (const REAL *)a->v0;
    const REAL *iw = (const REAL *)a->iw, *ib = (const REAL *)a->ib;
    const int64_t *ssrc = a->ssrc, *sdst = a->sdst, *src = a->src, *dst = a->dst;
    const REAL *ssig = (const REAL *)a->ssig, *sbz = (const REAL *)a->sbz,
               *swE = (const REAL *)a->swE, *swp = (const REAL *)a->swp,
               *a0 = (const REAL *)a->a0, *d0 = (const REAL *)a->d0, *cmK = (const REAL *)a->cmK,
               *sig = (const REAL *)a->sig, *bz = (const REAL *)a->bz,
               *wE = (const REAL *)a->wE, *wp = (const REAL *)a->wp;
    REAL *out = (REAL *)a->out, *SS = (REAL *)a->SS, *Vs = (REAL *)a->Vs, *S = (REAL *)a->S,
         *DEN = (REAL *)a->DEN, *y = (REAL *)a->y;
    const int save = a->save != 0;
    const int64_t M = a->M;
    const REAL *ow = (const REAL *)a->ow, *ob = (const REAL *)a->ob;
    const REAL dt_s = (REAL)a->dt_s;
    a->bad = -1;
    if (a->check) {
        int64_t i = FN(first_bad)(x, B * T * F);
        if (i < 0) {
            i = FN(first_bad)(v0, B * N);
            if (i >= 0) i += B * T * F;
        }
        if (i >= 0) { a->bad = i; return; }
    }
    int64_t nb = (B + LN - 1) / LN;
    REAL *buf = (REAL *)malloc(sizeof(REAL) * LN * (6 * N + F + 2));
    REAL *A = buf, *D = A + N * LN, *c = D + N * LN, *v = c + N * LN, *num = v + N * LN,
         *den = num + N * LN, *xm = den + N * LN, *s = xm + F * LN, *dd = s + LN;
    int64_t bl[LN];
    for (int64_t blk = 0; blk < nb; blk++) {
        int64_t b0 = blk * LN, nl = B - b0 < LN ? B - b0 : LN;
        for (int l = 0; l < LN; l++) bl[l] = b0 + (l < nl ? l : nl - 1);
        for (int64_t n = 0; n < N; n++)
            for (int l = 0; l < LN; l++) v[n * LN + l] = v0[bl[l] * N + n];
        REAL *Vsb = save ? Vs + blk * (T * K + 1) * N * LN : NULL;
        if (save) memcpy(Vsb, v, sizeof(REAL) * N * LN);
        for (int64_t t = 0; t < T; t++) {
            for (int l = 0; l < LN; l++) dd[l] = dt ? dt[bl[l] * T + t] : dt_s;
            for (int64_t f = 0; f < F; f++)
                for (int l = 0; l < LN; l++)
                    xm[f * LN + l] = x[(bl[l] * T + t) * F + f] * iw[f] + ib[f];
            for (int64_t n = 0; n < N; n++)
                for (int l = 0; l < LN; l++) {
                    REAL cc = cmK[n] / dd[l];
                    c[n * LN + l] = cc; A[n * LN + l] = a0[n]; D[n * LN + l] = d0[n] + cc;
                }
            REAL *ssb = save ? SS + (blk * T + t) * Es * LN : NULL;
            for (int64_t e = 0; e < Es; e++)
                FN(fwd_edge)(xm + ssrc[e] * LN, save ? ssb + e * LN : s, A + sdst[e] * LN,
                             D + sdst[e] * LN, ssig[e], sbz[e], swE[e], swp[e]);
            for (int64_t k = 0; k < K; k++) {
                int64_t i = t * K + k;
                for (int64_t j = 0; j < N * LN; j++) { num[j] = A[j] + c[j] * v[j]; den[j] = D[j]; }
                REAL *Sb = save ? S + (blk * T * K + i) * E * LN : NULL;
                for (int64_t e = 0; e < E; e++)
                    FN(fwd_edge)(v + src[e] * LN, save ? Sb + e * LN : s, num + dst[e] * LN,
                                 den + dst[e] * LN, sig[e], bz[e], wE[e], wp[e]);
                for (int64_t j = 0; j < N * LN; j++) v[j] = num[j] / den[j];
                if (save) {
                    memcpy(DEN + (blk * T * K + i) * N * LN, den, sizeof(REAL) * N * LN);
                    memcpy(Vsb + (i + 1) * N * LN, v, sizeof(REAL) * N * LN);
                }
            }
            for (int64_t l = 0; l < nl; l++) {
                int64_t bt = (b0 + l) * T + t;
                if (out) for (int64_t n = 0; n < N; n++) out[bt * N + n] = v[n * LN + l];
                if (y) for (int64_t m = 0; m < M; m++) y[bt * M + m] = v[m * LN + l] * ow[m] + ob[m];
            }
        }
    }
    free(buf);
}

void FN(lc_ltc_bwd)(const lc_ltc_bwd_args *a) {
    const int64_t B = a->B, T = a->T, F = a->F, N = a->N, Es = a->Es, E = a->E, K = a->K;
    const REAL *x = (const REAL *)a->x, *dt = (const REAL *)a->dt;
    const REAL *iw = (const REAL *)a->iw, *ib = (const REAL *)a->ib;
    const int64_t *ssrc = a->ssrc, *sdst = a->sdst, *src = a->src, *dst = a->dst;
    const REAL *ssig = (const REAL *)a->ssig, *swE = (const REAL *)a->swE,
               *swp = (const REAL *)a->swp, *cmK = (const REAL *)a->cmK,
               *sig = (const REAL *)a->sig, *wE = (const REAL *)a->wE, *wp = (const REAL *)a->wp;
    const REAL *SS = (const REAL *)a->SS, *Vs = (const REAL *)a->Vs, *S = (const REAL *)a->S,
               *DEN = (const REAL *)a->DEN, *gV = (const REAL *)a->gV;
    REAL *gx = (REAL *)a->gx, *gdt = (REAL *)a->gdt, *gv0 = (REAL *)a->gv0, *gP = (REAL *)a->gP;
    const REAL dt_s = (REAL)a->dt_s;
    int64_t nb = (B + LN - 1) / LN;
    int64_t P = 2 * F + 4 * Es + 3 * N + 4 * E;
    REAL *acc = (REAL *)calloc((size_t)(P * LN), sizeof(REAL));
    REAL *a_iw = acc, *a_ib = a_iw + F * LN, *a_ssig = a_ib + F * LN, *a_sbz = a_ssig + Es * LN,
         *a_swE = a_sbz + Es * LN, *a_swp = a_swE + Es * LN, *a_a0 = a_swp + Es * LN,
         *a_d0 = a_a0 + N * LN, *a_cmK = a_d0 + N * LN, *a_sig = a_cmK + N * LN,
         *a_bz = a_sig + E * LN, *a_wE = a_bz + E * LN, *a_wp = a_wE + E * LN;
    REAL *buf = (REAL *)malloc(sizeof(REAL) * LN * (8 * N + 2 * F + 2));
    REAL *g = buf, *gnum = g + N * LN, *gden = gnum + N * LN, *gnew = gden + N * LN,
         *gA = gnew + N * LN, *gD = gA + N * LN, *gc = gD + N * LN, *c = gc + N * LN,
         *xm = c + N * LN, *gxm = xm + F * LN, *dd = gxm + F * LN, *gdl = dd + LN;
    int64_t bl[LN];
    for (int64_t blk = 0; blk < nb; blk++) {
        int64_t b0 = blk * LN, nl = B - b0 < LN ? B - b0 : LN;
        for (int l = 0; l < LN; l++) bl[l] = b0 + (l < nl ? l : nl - 1);
        const REAL *Vsb = Vs + blk * (T * K + 1) * N * LN;
        for (int64_t j = 0; j < N * LN; j++) g[j] = 0;
        for (int64_t t = T - 1; t >= 0; t--) {
            for (int l = 0; l < LN; l++) { dd[l] = dt ? dt[bl[l] * T + t] : dt_s; gdl[l] = 0; }
            for (int64_t n = 0; n < N; n++)
                for (int l = 0; l < LN; l++) c[n * LN + l] = cmK[n] / dd[l];
            for (int64_t l = 0; l < nl; l++)
                for (int64_t n = 0; n < N; n++) g[n * LN + l] += gV[((b0 + l) * T + t) * N + n];
            for (int64_t j = 0; j < N * LN; j++) { gA[j] = 0; gD[j] = 0; gc[j] = 0; }
            for (int64_t k = K - 1; k >= 0; k--) {
                int64_t i = t * K + k;
                const REAL *vin = Vsb + i * N * LN;
                const REAL *vout = vin + N * LN;
                const REAL *dn = DEN + (blk * T * K + i) * N * LN;
                const REAL *Sb = S + (blk * T * K + i) * E * LN;
                for (int64_t j = 0; j < N * LN; j++) {
                    REAL gn = g[j] / dn[j];
                    REAL gdn = -gn * vout[j];
                    gnum[j] = gn; gden[j] = gdn;
                    gA[j] += gn; gD[j] += gdn; gc[j] += gn * vin[j];
                    gnew[j] = gn * c[j];
                }
                for (int64_t e = 0; e < E; e++)
                    FN(bwd_edge)(gnum + dst[e] * LN, gden + dst[e] * LN, Sb + e * LN,
                                 vin + src[e] * LN, gnew + src[e] * LN, a_wE + e * LN,
                                 a_wp + e * LN, a_sig + e * LN, a_bz + e * LN, wE[e], wp[e], sig[e]);
                REAL *tmp = g; g = gnew; gnew = tmp;
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
            const REAL *ssb = SS + (blk * T + t) * Es * LN;
            for (int64_t e = 0; e < Es; e++)
                FN(bwd_edge)(gA + sdst[e] * LN, gD + sdst[e] * LN, ssb + e * LN,
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
static inline void FN(cfc_gate)(int mode, const REAL *restrict z1, const REAL *restrict z2,
                                const REAL *restrict z3, const REAL *restrict z4,
                                const REAL *restrict ts, REAL A, REAL wt, REAL *restrict h) {
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

static inline void FN(lane_axpy)(REAL *restrict y, const REAL *restrict x, REAL a) {
    for (int l = 0; l < LN; l++) y[l] += a * x[l];
}

/* gsrc += w*gz and acc += hsrc*gz (both per lane). */
static inline void FN(lane_bwd)(REAL *restrict gsrc, REAL *restrict acc, const REAL *restrict gz,
                                const REAL *restrict hsrc, REAL w) {
    for (int l = 0; l < LN; l++) { acc[l] += hsrc[l] * gz[l]; gsrc[l] += w * gz[l]; }
}

void FN(lc_cfc_fwd)(lc_cfc_fwd_args *a) {
    const int64_t T = a->T, B = a->B, N = a->N, H = a->H, L = a->L, no = a->no, F = a->F;
    const int mode = (int)a->mode;
    const int64_t *off = a->off, *size = a->size, *o_row = a->o_row, *o_col = a->o_col,
                  *n_lo = a->n_lo, *n_hi = a->n_hi, *n_row = a->n_row, *n_col = a->n_col,
                  *perm_in = a->perm_in, *perm_out = a->perm_out;
    const REAL *h0 = (const REAL *)a->h0, *dts = (const REAL *)a->dts,
               *o_val = (const REAL *)a->o_val, *n_val = (const REAL *)a->n_val,
               *Ap = (const REAL *)a->A, *wtp = (const REAL *)a->wt;
    REAL *Hs = (REAL *)a->Hs, *Z = (REAL *)a->Z;
    const int save = a->save != 0;
    const REAL dt_s = (REAL)a->dt_s;
    const int64_t HN = H * N, nb = (B + LN - 1) / LN;
    const REAL *PX = (const REAL *)a->PX;
    a->bad = -1;
    if (a->check) {
        int64_t n_in = PX ? B * T * HN : B * T * F;
        int64_t i = FN(first_bad)(PX ? PX : (const REAL *)a->x, n_in);
        if (i < 0) {
            i = FN(first_bad)(h0, B * N);
            if (i >= 0) i += n_in;
        }
        if (i >= 0) { a->bad = i; return; }
    }
    REAL *px_own = NULL;
    if (!PX) { /* input heads x·Wx + bias, computed here (closed-loop step) */
        const REAL *x = (const REAL *)a->x, *Wx = (const REAL *)a->Wx, *bias = (const REAL *)a->bias;
        px_own = (REAL *)malloc(sizeof(REAL) * B * T * HN);
        for (int64_t r = 0; r < B * T; r++) {
            REAL *row = px_own + r * HN;
            for (int64_t j = 0; j < HN; j++) row[j] = bias[j];
            for (int64_t f = 0; f < F; f++) {
                REAL xv = x[r * F + f];
                const REAL *w = Wx + f * HN;
                for (int64_t j = 0; j < HN; j++) row[j] += xv * w[j];
            }
        }
        PX = px_own;
    }
    REAL *buf = (REAL *)malloc(sizeof(REAL) * LN * (HN + 2 * N + 1));
    REAL *z = buf, *hold = z + HN * LN, *hn = hold + N * LN, *ts = hn + N * LN;
    int64_t bl[LN];
    for (int64_t blk = 0; blk < nb; blk++) {
        int64_t b0 = blk * LN, nl = B - b0 < LN ? B - b0 : LN;
        for (int l = 0; l < LN; l++) bl[l] = b0 + (l < nl ? l : nl - 1);
        for (int64_t i = 0; i < N; i++)
            for (int l = 0; l < LN; l++)
                hold[i * LN + l] = h0[bl[l] * N + (perm_in ? perm_in[i] : i)];
        for (int64_t t = 0; t < T; t++) {
            for (int l = 0; l < LN; l++) ts[l] = dts ? dts[bl[l] * T + t] : dt_s;
            for (int64_t j = 0; j < HN; j++)
                for (int l = 0; l < LN; l++) z[j * LN + l] = PX[(bl[l] * T + t) * HN + j];
            for (int64_t q = 0; q < no; q++)
                FN(lane_axpy)(z + o_col[q] * LN, hold + o_row[q] * LN, o_val[q]);
            for (int64_t k = 0; k < L; k++) {
                for (int64_t q = n_lo[k]; q < n_hi[k]; q++)
                    FN(lane_axpy)(z + n_col[q] * LN, hn + n_row[q] * LN, n_val[q]);
                int64_t o = off[k], n = size[k];
                const REAL *zl = z + H * o * LN;
                for (int64_t r = 0; r < n; r++) {
                    const REAL *z1 = zl + r * LN;
                    FN(cfc_gate)(mode, z1, z1 + n * LN, z1 + 2 * n * LN, z1 + 3 * n * LN, ts,
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
    free(px_own);
}

static inline void FN(cfc_gate_bwd)(int nogate, const REAL *restrict gh, const REAL *restrict z1,
                                    const REAL *restrict z2, const REAL *restrict z3,
                                    const REAL *restrict z4, const REAL *restrict ts,
                                    REAL *restrict g1, REAL *restrict g2, REAL *restrict g3,
                                    REAL *restrict g4, REAL *restrict gts) {
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

static inline void FN(cfc_pure_bwd)(const REAL *restrict gh, const REAL *restrict z1,
                                    const REAL *restrict ts, REAL A, REAL wt, REAL *restrict g1,
                                    REAL *restrict aA, REAL *restrict aw, REAL *restrict gts) {
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

void FN(lc_cfc_bwd)(const lc_cfc_bwd_args *a) {
    const int64_t T = a->T, B = a->B, N = a->N, H = a->H, L = a->L, no = a->no;
    const int mode = (int)a->mode;
    const int64_t *off = a->off, *size = a->size, *o_row = a->o_row, *o_col = a->o_col,
                  *n_lo = a->n_lo, *n_hi = a->n_hi, *n_row = a->n_row, *n_col = a->n_col;
    const REAL *h0 = (const REAL *)a->h0, *dts = (const REAL *)a->dts, *Hs = (const REAL *)a->Hs,
               *Z = (const REAL *)a->Z, *o_val = (const REAL *)a->o_val,
               *n_val = (const REAL *)a->n_val, *Ap = (const REAL *)a->A,
               *wtp = (const REAL *)a->wt, *gHs = (const REAL *)a->gHs;
    REAL *gPX = (REAL *)a->gPX, *gh0 = (REAL *)a->gh0, *gdt = (REAL *)a->gdt,
         *g_oval = (REAL *)a->g_oval, *g_nval = (REAL *)a->g_nval, *gA = (REAL *)a->gA,
         *gwt = (REAL *)a->gwt;
    int64_t HN = H * N, nb = (B + LN - 1) / LN, nn = n_hi[L - 1];
    int64_t P = no + nn + 2 * N;
    REAL *acc = (REAL *)calloc((size_t)(P * LN), sizeof(REAL));
    REAL *a_o = acc, *a_n = a_o + no * LN, *a_A = a_n + nn * LN, *a_wt = a_A + N * LN;
    REAL *buf = (REAL *)malloc(sizeof(REAL) * LN * (HN + 4 * N + 2));
    REAL *gz = buf, *g = gz + HN * LN, *gold = g + N * LN, *hn = gold + N * LN,
         *hold = hn + N * LN, *ts = hold + N * LN, *gts = ts + LN;
    int64_t bl[LN];
    for (int64_t blk = 0; blk < nb; blk++) {
        int64_t b0 = blk * LN, nl = B - b0 < LN ? B - b0 : LN;
        for (int l = 0; l < LN; l++) bl[l] = b0 + (l < nl ? l : nl - 1);
        for (int64_t j = 0; j < N * LN; j++) g[j] = 0;
        for (int64_t t = T - 1; t >= 0; t--) {
            const REAL *z = Z + (blk * T + t) * HN * LN;
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
                const REAL *zl = z + H * o * LN;
                REAL *gzl = gz + H * o * LN;
                for (int64_t r = 0; r < n; r++) {
                    const REAL *gh = g + (o + r) * LN;
                    const REAL *z1 = zl + r * LN;
                    REAL *g1 = gzl + r * LN;
                    if (mode == 2)
                        FN(cfc_pure_bwd)(gh, z1, ts, Ap[o + r], wtp[o + r], g1,
                                         a_A + (o + r) * LN, a_wt + (o + r) * LN, gts);
                    else
                        FN(cfc_gate_bwd)(mode == 1, gh, z1, z1 + n * LN, z1 + 2 * n * LN,
                                         z1 + 3 * n * LN, ts, g1, g1 + n * LN, g1 + 2 * n * LN,
                                         g1 + 3 * n * LN, gts);
                }
                for (int64_t q = n_lo[k]; q < n_hi[k]; q++)
                    FN(lane_bwd)(g + n_row[q] * LN, a_n + q * LN, gz + n_col[q] * LN,
                                 hn + n_row[q] * LN, n_val[q]);
            }
            for (int64_t j = 0; j < N * LN; j++) gold[j] = 0;
            for (int64_t q = 0; q < no; q++)
                FN(lane_bwd)(gold + o_row[q] * LN, a_o + q * LN, gz + o_col[q] * LN,
                             hold + o_row[q] * LN, o_val[q]);
            for (int64_t l = 0; l < nl; l++) {
                gdt[(b0 + l) * T + t] = gts[l];
                for (int64_t j = 0; j < HN; j++) gPX[((b0 + l) * T + t) * HN + j] = gz[j * LN + l];
            }
            REAL *tmp = g; g = gold; gold = tmp;
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
