/* out[M, N] = x[M, K] . w[N, K]^T (+ bias) for few rows M, fp32, CPU: a linear layer at decode
 * batch sizes, where MKL's sgemm measured 14-77 GFLOP/s on the LM head's shape (N = vocab).
 *
 * Computed as out^T = w . x^T: the weight's rows are broadcast one element at a time against
 * 16 rows of x held transposed, so each weight element is read from memory once per 16 rows of
 * x and the weight (the large operand) streams through exactly once when M <= 16. A 6 x 16
 * register tile (6 weight rows, 16 x rows) keeps 12 accumulators live; results are stored
 * transposed back. Weight rows are split over OpenMP threads (torch's, see paged_decode.c).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vec.h"

#define RB 6  /* weight rows per register tile */
#define CB 16 /* x rows per register tile */

/* Tile: out[m0 + i, n0 + r] for r < nr (<= RB), i < mr (<= CB). xt is x^T packed [K, CB]. */
static inline void tile(const float *w, const float *xt, const float *bias, float *out, int64_t n0, int64_t nr,
                        int64_t m0, int64_t mr, int64_t N, int64_t K, const float *next) {
    vf8 acc[RB][2] = {{0}};
    const float *wr[RB];
    for (int64_t r = 0; r < RB; r++) wr[r] = w + (n0 + (r < nr ? r : nr - 1)) * K; /* spare rows repeat the last */
    for (int64_t k0 = 0; k0 < K; k0 += 16) {
        /* the next tile's weight rows, one cache line each per 16 k: in the engine the weights come
         * from DRAM, since a decode step's KV stream evicts them from the caches */
        if (next)
            for (int64_t r = 0; r < RB; r++) __builtin_prefetch(next + r * K + k0, 0, 2);
        const int64_t k1 = K - k0 < 16 ? K : k0 + 16;
        for (int64_t k = k0; k < k1; k++) {
            const vf8 b0 = LOAD8(xt + k * CB), b1 = LOAD8(xt + k * CB + 8);
            for (int64_t r = 0; r < RB; r++) {
                const float a = wr[r][k];
                acc[r][0] += a * b0;
                acc[r][1] += a * b1;
            }
        }
    }
    for (int64_t r = 0; r < nr; r++) {
        const float b = bias ? bias[n0 + r] : 0.f;
        for (int64_t i = 0; i < mr; i++) out[(m0 + i) * N + n0 + r] = acc[r][i / 8][i % 8] + b;
    }
}

/* Returns 0 on success, nonzero if scratch memory could not be had. bias may be NULL. */
int small_gemm_f32(const float *x, const float *w, const float *bias, float *out, int64_t M, int64_t N, int64_t K,
                   int64_t num_threads) {
    const int64_t groups = (M + CB - 1) / CB;
    float *xt = malloc((size_t)(groups * K * CB) * sizeof(float)); /* x^T, CB rows per group, zero padded */
    if (!xt) return 1;
#pragma omp parallel num_threads(num_threads)
    {
        /* the packing is split too: done by one thread, it kept the others idle */
#pragma omp for schedule(static)
        for (int64_t gk = 0; gk < groups * K; gk++) {
            const int64_t g = gk / K, k = gk % K;
            for (int64_t i = 0; i < CB; i++) {
                const int64_t m = g * CB + i;
                xt[gk * CB + i] = m < M ? x[m * K + k] : 0.f;
            }
        }
        /* handed out a few tiles at a time: a static split waited on whichever core the VM slowed */
#pragma omp for schedule(dynamic, 4)
        for (int64_t n0 = 0; n0 < N; n0 += RB) { /* the weight rows stay in L1 across the x groups */
            const int64_t nr = N - n0 < RB ? N - n0 : RB;
            for (int64_t g = 0; g < groups; g++) {
                const int64_t mr = M - g * CB < CB ? M - g * CB : CB;
                /* rows past N are not prefetched: the last tile may be partial */
                const float *next = g == 0 && n0 + 2 * RB <= N ? w + (n0 + RB) * K : NULL;
                tile(w, xt + g * K * CB, bias, out, n0, nr, g * CB, mr, N, K, next);
            }
        }
    }
    free(xt);
    return 0;
}
