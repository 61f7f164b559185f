/* C kernels of the liquid cells, compiled at first use by policies/_ckernel.py
 * (cc -O3 -Wall -std=c99 -fPIC -shared [-march=native]) and loaded with ctypes.
 *
 * Why: the cells are tiny (19 neurons, ~60 recurrent synapses) and run hundreds of
 * sequential steps, so eager PyTorch spends >95 % of its time in per-op overhead; one C call
 * per sequence (forward, and the hand-derived adjoint for backward) removes it. The maths
 * and the tests that compare these kernels with the PyTorch reference: docs/cells.md.
 *
 * liquid_cells_impl.h holds the kernel bodies; it is included four times below, for float
 * and double, each in a 16-lane vector-block variant and a scalar ("_l1") variant. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "liquid_cells.h"

#ifndef LC_BUILD_KEY
#define LC_BUILD_KEY "unkeyed"
#endif

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
    memcpy(&f, &i, 4);
    return p * f;
}
static inline float fsigm(float z) { return 1.0f / (1.0f + fexp(-z)); }
static inline float ftanh(float z) {
    float e = fexp(-2.0f * (z < 0 ? -z : z));
    float t = (1.0f - e) / (1.0f + e);
    return z < 0 ? -t : t;
}
static inline double dsigm(double z) { return 1.0 / (1.0 + exp(-z)); }

#define LC_CAT_(a, b) a##_##b
#define LC_CAT(a, b) LC_CAT_(a, b)
#define FN(name) LC_CAT(name, SUF)

#define REAL float
#define SIGM fsigm
#define TANH ftanh
#define EXP fexp
#define LN LC_LANES
#define SUF f32
#include "liquid_cells_impl.h"
#undef LN
#undef SUF
#define LN 1
#define SUF f32_l1
#include "liquid_cells_impl.h"
#undef LN
#undef SUF
#undef REAL
#undef SIGM
#undef TANH
#undef EXP

#define REAL double
#define SIGM dsigm
#define TANH tanh
#define EXP exp
#define LN LC_LANES
#define SUF f64
#include "liquid_cells_impl.h"
#undef LN
#undef SUF
#define LN 1
#define SUF f64_l1
#include "liquid_cells_impl.h"
#undef LN
#undef SUF
#undef REAL
#undef SIGM
#undef TANH
#undef EXP

int64_t lc_abi_version(void) { return LC_ABI_VERSION; }

int64_t lc_struct_size(int64_t which) {
    switch (which) {
        case 0: return (int64_t)sizeof(lc_ltc_fwd_args);
        case 1: return (int64_t)sizeof(lc_ltc_bwd_args);
        case 2: return (int64_t)sizeof(lc_cfc_fwd_args);
        case 3: return (int64_t)sizeof(lc_cfc_bwd_args);
        default: return -1;
    }
}

const char *lc_build_key(void) { return LC_BUILD_KEY; }
