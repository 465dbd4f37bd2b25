/* The decoder layer's elementwise work, fused, fp32, CPU: RMSNorm (with the residual add before
 * it), SiLU(gate) * up, and rotary embedding. Each is one pass over rows that PyTorch runs as 4-8
 * separate ops, each reading and writing the whole activation. Rows are spread over OpenMP
 * threads (torch's, as in paged_decode.c).
 */
#include <math.h>
#include <stdint.h>


#include "vec.h"

/* out = weight * h * rsqrt(mean(h^2) + eps) per row of `dim`, where h = x + residual if `residual`
 * is given (h is then also stored to sum_out: the stream the next sublayer adds to), else h = x. */
void rms_norm_f32(const float *x, const float *residual, float *sum_out, const float *weight, float *out,
                  int64_t rows, int64_t dim, float eps, int64_t num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static) if (rows * dim > 16384)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        const float *hr = residual ? sum_out + r * dim : xr;
        float *o = out + r * dim, ss = 0.f;
        if (residual) {
            float *sr = sum_out + r * dim;
            const float *rr = residual + r * dim;
#pragma omp simd reduction(+ : ss)
            for (int64_t i = 0; i < dim; i++) {
                sr[i] = rr[i] + xr[i];
                ss += sr[i] * sr[i];
            }
        } else {
#pragma omp simd reduction(+ : ss)
            for (int64_t i = 0; i < dim; i++) ss += hr[i] * hr[i];
        }
        const float inv = 1.f / sqrtf(ss / (float)dim + eps);
#pragma omp simd
        for (int64_t i = 0; i < dim; i++) o[i] = weight[i] * (hr[i] * inv);
    }
}

/* out[r, i] = silu(g) * u with g = gate_up[r, i], u = gate_up[r, inter + i]; inter a multiple of 8. */
void silu_mul_f32(const float *gate_up, float *out, int64_t rows, int64_t inter, int64_t num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static) if (rows * inter > 16384)
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gate_up + r * 2 * inter, *u = g + inter;
        float *o = out + r * inter;
        for (int64_t i = 0; i < inter; i += 8) {
            const vf8 gv = LOAD8(g + i);
            STORE8(o + i, gv / (1.f + exp8(-gv)) * LOAD8(u + i));
        }
    }
}

/* Rotary embedding of the q and k heads of each token (rows of `src`, `ld` floats apart: the
 * fused qkv output), written contiguously to q_out [T, Hq, D] and k_out [T, Hkv, D]. cos/sin are
 * [max_pos, D/2] tables; x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin on the two halves, as HF. */
void rope_f32(const float *src, int64_t ld, const int64_t *positions, const float *cos_t, const float *sin_t,
              float *q_out, float *k_out, int64_t tokens, int64_t q_heads, int64_t k_heads, int64_t head_dim,
              int64_t num_threads) {
    const int64_t half = head_dim / 2, heads = q_heads + k_heads;
#pragma omp parallel for num_threads(num_threads) schedule(static) if (tokens * heads * head_dim > 16384)
    for (int64_t t = 0; t < tokens; t++) {
        const float *c = cos_t + positions[t] * half, *s = sin_t + positions[t] * half;
        for (int64_t h = 0; h < heads; h++) {
            const float *x = src + t * ld + h * head_dim;
            float *o = h < q_heads ? q_out + (t * q_heads + h) * head_dim : k_out + (t * k_heads + h - q_heads) * head_dim;
#pragma omp simd
            for (int64_t i = 0; i < half; i++) {
                const float a = x[i], b = x[i + half];
                o[i] = a * c[i] - b * s[i];
                o[i + half] = b * c[i] + a * s[i];
            }
        }
    }
}
