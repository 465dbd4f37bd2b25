/* out[M, N] = x[M, K] . w[N, K]^T (+ bias) for many rows M, fp32, CPU: a linear layer over a
 * prefill step's tokens, where MKL's sgemm measured 105-130 GFLOP/s on this project's shapes on a
 * 2-core Zen 3 whose FMA peak is about 200 (benchmarks/prefill_linear.py).
 *
 * Blocked and packed in the usual way of BLAS libraries. For each slice of K (KC deep), the
 * weight is packed into panels of NR output features laid out [KC][NR], shared by all threads;
 * each task packs a block of MC rows of x into panels of MR rows laid out [KC][MR] (L2-sized), then
 * runs an MR x NR register tile (12 accumulators, 2 vector loads of weight and 6 broadcasts of x
 * per k) over every panel pair, one weight panel staying in L1 across the block. Every output
 * element is summed in the same k order whatever M, the thread count or the row's place in a
 * tile, so a row's result does not depend on what else is in the batch.
 */
#include <stdint.h>
#include <stdlib.h>

#include "vec.h"

#define MR 6    /* x rows per register tile */
#define NR 16   /* output features per register tile: two 8-float vectors */
#define KC 384  /* K slice: one weight panel (24 KiB) and one x panel (9 KiB) fill L1 */
#define MC 120  /* x rows per task: its packed block (180 KiB) stays in L2 */

/* Weight panel p of K slice [k0, k0 + kc): w[p * NR + c, k0 + k] at bp[(p * kc + k) * NR + c], zero past N. */
static void pack_weight_panel(const float *w, int64_t N, int64_t K, int64_t k0, int64_t kc, int64_t p, float *bp) {
    float *dst = bp + p * kc * NR;
    for (int64_t c = 0; c < NR; c++) {
        const int64_t n = p * NR + c;
        if (n < N)
            for (int64_t k = 0; k < kc; k++) dst[k * NR + c] = w[n * K + k0 + k];
        else
            for (int64_t k = 0; k < kc; k++) dst[k * NR + c] = 0.f;
    }
}

/* Rows [m0, m0 + rows) of x, K slice [k0, k0 + kc), as panels of MR rows [kc][MR]; zero past M. */
static void pack_x_block(const float *x, int64_t M, int64_t K, int64_t m0, int64_t rows, int64_t k0, int64_t kc,
                         float *ap) {
    for (int64_t p = 0; p < rows; p += MR) {
        float *dst = ap + p * kc;
        for (int64_t r = 0; r < MR; r++) {
            const int64_t m = m0 + p + r;
            if (m < M)
                for (int64_t k = 0; k < kc; k++) dst[k * MR + r] = x[m * K + k0 + k];
            else
                for (int64_t k = 0; k < kc; k++) dst[k * MR + r] = 0.f;
        }
    }
}

#define PRAGMA(x) _Pragma(#x)

/* c[mr, nr] (row stride ldc) = or += a-panel . b-panel over kc; `first` stores (adding bias, if
 * any), later K slices add to what is there. */
static inline void tile(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int64_t mr, int64_t nr,
                        int first, const float *bias) {
    vf8 acc[MR][2] = {{0}};
    /* the output rows are cold (a new tile per call): start fetching them now, not at the store */
    for (int64_t r = 0; r < mr; r++) {
        __builtin_prefetch(c + r * ldc, 1, 3);
        __builtin_prefetch(c + r * ldc + NR - 1, 1, 3);
    }
    PRAGMA(GCC unroll 4) /* measured 1.16x over the plain loop: less loop overhead per 12 FMAs */
    for (int64_t k = 0; k < kc; k++) {
        const vf8 b0 = *(const vf8 *)(b + k * NR), b1 = *(const vf8 *)(b + k * NR + 8);
        for (int64_t r = 0; r < MR; r++) {
            const float ar = a[k * MR + r];
            acc[r][0] += ar * b0;
            acc[r][1] += ar * b1;
        }
    }
    if (mr == MR && nr == NR) {
        vf8 bias0 = {0}, bias1 = {0};
        if (first && bias) bias0 = LOAD8(bias), bias1 = LOAD8(bias + 8);
        for (int64_t r = 0; r < MR; r++) {
            float *cr = c + r * ldc;
            STORE8(cr, (first ? bias0 : LOAD8(cr)) + acc[r][0]);
            STORE8(cr + 8, (first ? bias1 : LOAD8(cr + 8)) + acc[r][1]);
        }
        return;
    }
    for (int64_t r = 0; r < mr; r++) /* a partial tile at the edge of out */
        for (int64_t j = 0; j < nr; j++) {
            const float base = first ? (bias ? bias[j] : 0.f) : c[r * ldc + j];
            c[r * ldc + j] = base + acc[r][j / 8][j % 8];
        }
}

static void *alloc64(int64_t floats) { /* aligned_alloc wants a size in whole alignments */
    return aligned_alloc(64, (size_t)((floats * (int64_t)sizeof(float) + 63) / 64 * 64));
}

/* Returns 0 on success, nonzero if scratch memory could not be had. bias may be NULL. Threads
 * are torch's OpenMP pool (see paged_decode.c). */
int packed_gemm_f32(const float *x, const float *w, const float *bias, float *out, int64_t M, int64_t N, int64_t K,
                    int64_t num_threads) {
    const int64_t panels = (N + NR - 1) / NR, kc_max = K < KC ? K : KC, blocks = (M + MC - 1) / MC;
    /* too few row blocks to go round: split the weight panels too, so every thread has work */
    int64_t splits = (2 * num_threads + blocks - 1) / blocks;
    splits = splits < panels ? splits : panels;
    const int64_t per_split = (panels + splits - 1) / splits;
    float *bp = alloc64(panels * NR * kc_max);
    if (!bp) return 1;
    int status = 0;
#pragma omp parallel num_threads(num_threads) reduction(| : status)
    {
        float *ap = alloc64(MC * kc_max);
        status = !ap;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = K - k0 < KC ? K - k0 : KC;
#pragma omp for schedule(static)
            for (int64_t p = 0; p < panels; p++) pack_weight_panel(w, N, K, k0, kc, p, bp);
#pragma omp for schedule(dynamic, 1)
            for (int64_t task = 0; task < blocks * splits; task++) {
                if (!ap) continue;
                const int64_t m0 = task / splits * MC, rows = M - m0 < MC ? M - m0 : MC;
                const int64_t padded = (rows + MR - 1) / MR * MR, s = task % splits;
                const int64_t p0 = s * per_split, p1 = p0 + per_split < panels ? p0 + per_split : panels;
                pack_x_block(x, M, K, m0, padded, k0, kc, ap);
                for (int64_t p = p0; p < p1; p++) { /* this weight panel stays in L1 across the block */
                    const int64_t n0 = p * NR, nr = N - n0 < NR ? N - n0 : NR;
                    for (int64_t i = 0; i < padded; i += MR)
                        tile(kc, ap + i * kc, bp + p * kc * NR, out + (m0 + i) * N + n0, N,
                             rows - i < MR ? rows - i : MR, nr, k0 == 0, bias ? bias + n0 : NULL);
                }
            }
        }
        free(ap);
    }
    free(bp);
    return status;
}
