/* Decode attention straight from paged KV memory, fp32, CPU.
 *
 * One query token per sequence. Each sequence's K and V rows are read once, in place in the
 * cache blocks: no gathered copy, no padding. All query heads are scored against a token's row
 * while it is in cache, so GQA needs no repeated K/V. Sequences are spread over OpenMP threads.
 * Softmax is exact (scores kept, max subtracted) like scaled_dot_product_attention.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vec.h"

typedef struct {
    const float *q, *k, *v;
    const int64_t *tables, *ctx_lens;
    float *out;
    int64_t num_seqs, max_blocks, block_size, num_heads, num_kv_heads, head_dim;
    float scale;
} Job;

#define AHEAD 8 /* tokens ahead to prefetch */
#define TILE 32 /* tokens whose V rows stay in L1 while every query head uses them */

/* Lane t of the result is the sum of a[t]'s 8 lanes: three levels of pairwise shuffles and adds
 * instead of a horizontal sum per dot product (the inputs are fed 0,2,1,3 so lanes come out in order). */
static inline vf8 sum_lanes8(const vf8 a[8]) {
    const vi8 lo1 = {0, 1, 2, 3, 8, 9, 10, 11}, hi1 = {4, 5, 6, 7, 12, 13, 14, 15};
    const vi8 lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
    const vi8 lo3 = {0, 2, 4, 6, 8, 10, 12, 14}, hi3 = {1, 3, 5, 7, 9, 11, 13, 15};
    vf8 c0 = __builtin_shuffle(a[0], a[2], lo1) + __builtin_shuffle(a[0], a[2], hi1);
    vf8 c1 = __builtin_shuffle(a[1], a[3], lo1) + __builtin_shuffle(a[1], a[3], hi1);
    vf8 c2 = __builtin_shuffle(a[4], a[6], lo1) + __builtin_shuffle(a[4], a[6], hi1);
    vf8 c3 = __builtin_shuffle(a[5], a[7], lo1) + __builtin_shuffle(a[5], a[7], hi1);
    vf8 d0 = __builtin_shuffle(c0, c1, lo2) + __builtin_shuffle(c0, c1, hi2);
    vf8 d1 = __builtin_shuffle(c2, c3, lo2) + __builtin_shuffle(c2, c3, hi2);
    return __builtin_shuffle(d0, d1, lo3) + __builtin_shuffle(d0, d1, hi3);
}

/* Softmax of each of the G score rows (length ctx, `ld` >= ctx rounded up to 8 apart), in place;
 * scores arrive scaled. */
static void softmax_rows(float *scores, int64_t G, int64_t ctx, int64_t ld) {
    const vi8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
    for (int64_t g = 0; g < G; g++) {
        float *sg = scores + g * ld, m = sg[0];
        for (int64_t t = 1; t < ctx; t++) m = sg[t] > m ? sg[t] : m;
        vf8 sum = {0};
        for (int64_t t = 0; t < ctx; t += 8) { /* the last group's lanes past ctx count as 0 */
            const vf8 e = select8(lane < (int)(ctx - t), exp8(LOAD8(sg + t) - m), (vf8){0});
            STORE8(sg + t, e);
            sum += e;
        }
        const float inv = 1.f / (sum[0] + sum[1] + sum[2] + sum[3] + sum[4] + sum[5] + sum[6] + sum[7]);
        for (int64_t t = 0; t < ctx; t++) sg[t] *= inv;
    }
}

/* One sequence, D a multiple of 8 (inlined per head size, so D/8 is a constant). rows[t] is the
 * offset of token t's row (all KV heads, contiguous) in both the K and the V cache. Tokens go in the outer loop so that each row is read whole, once,
 * in order: scattered blocks break the hardware prefetcher's streams, so the rows AHEAD tokens on
 * are prefetched by hand. Each query head scores 8 tokens at a time with 8 independent
 * accumulators; the V pass takes TILE tokens at a time, each query head in turn, while their V
 * rows sit in L1. */
static inline __attribute__((always_inline)) void attend_vec(const Job *j, int64_t seq, float *scores,
                                                             const int64_t *rows, const int64_t D) {
    const int64_t H = j->num_heads, KVH = j->num_kv_heads, G = H / KVH, row = KVH * D;
    const int64_t ctx = j->ctx_lens[seq], ld = ctx + 8; /* score row stride: 8 floats of slack */
    const float *q = j->q + seq * H * D;
    float *out = j->out + seq * H * D;
    for (int64_t t0 = 0; t0 < ctx; t0 += 8) {
        for (int64_t i = t0 + AHEAD; i < t0 + AHEAD + 8 && i < ctx; i++)
            for (int64_t d = 0; d < row; d += 16) __builtin_prefetch(j->k + rows[i] + d);
        const float *k[8];
        for (int64_t i = 0; i < 8; i++) k[i] = j->k + rows[t0 + i < ctx ? t0 + i : ctx - 1];
        for (int64_t h = 0; h < H; h++) {
            const float *qh = q + h * D;
            const int64_t kd = (h / G) * D;
            vf8 acc[8] = {0};
            for (int64_t d = 0; d < D; d += 8) {
                const vf8 qd = LOAD8(qh + d);
                for (int64_t i = 0; i < 8; i++) acc[i] += qd * LOAD8(k[i] + kd + d);
            }
            /* scores has 8 floats of slack per row: a partial last group may spill into it */
            *(vf8u *)(scores + h * ld + t0) = sum_lanes8(acc) * j->scale;
        }
    }
    softmax_rows(scores, H, ctx, ld);
    memset(out, 0, (size_t)(H * D) * sizeof(float));
    for (int64_t t0 = 0; t0 < ctx; t0 += TILE) {
        const int64_t t1 = ctx - t0 < TILE ? ctx : t0 + TILE;
        for (int64_t t = t0 + AHEAD; t < t1 + AHEAD && t < ctx; t++)
            for (int64_t d = 0; d < row; d += 16) __builtin_prefetch(j->v + rows[t] + d);
        for (int64_t h = 0; h < H; h++) {
            const float *p = scores + h * ld;
            const int64_t vd = (h / G) * D;
            for (int64_t d0 = 0; d0 < D; d0 += 64) { /* at most 8 accumulators live at once */
                const int64_t w = D - d0 < 64 ? D - d0 : 64;
                vf8 o[8];
                for (int64_t c = 0; c < w / 8; c++) o[c] = LOAD8(out + h * D + d0 + 8 * c);
                for (int64_t t = t0; t < t1; t++) {
                    const float *v = j->v + rows[t] + vd + d0;
                    for (int64_t c = 0; c < w / 8; c++) o[c] += p[t] * LOAD8(v + 8 * c);
                }
                for (int64_t c = 0; c < w / 8; c++) *(vf8u *)(out + h * D + d0 + 8 * c) = o[c];
            }
        }
    }
}

/* Any head size: plain loops, per KV head so no head -> KV-head division sits in a hot loop. */
static void attend_any(const Job *j, int64_t seq, float *scores, const int64_t *rows) {
    const int64_t H = j->num_heads, KVH = j->num_kv_heads, G = H / KVH, D = j->head_dim;
    const int64_t ctx = j->ctx_lens[seq], ld = ctx + 8; /* score row stride: 8 floats of slack */
    for (int64_t kvh = 0; kvh < KVH; kvh++) {
        const float *q = j->q + (seq * H + kvh * G) * D;
        float *out = j->out + (seq * H + kvh * G) * D;
        for (int64_t t = 0; t < ctx; t++) {
            const float *k = j->k + rows[t] + kvh * D;
            for (int64_t g = 0; g < G; g++) {
                float s = 0.f;
                for (int64_t d = 0; d < D; d++) s += q[g * D + d] * k[d];
                scores[g * ld + t] = s * j->scale;
            }
        }
        softmax_rows(scores, G, ctx, ld);
        memset(out, 0, (size_t)(G * D) * sizeof(float));
        for (int64_t t = 0; t < ctx; t++) {
            const float *v = j->v + rows[t] + kvh * D;
            for (int64_t g = 0; g < G; g++)
                for (int64_t d = 0; d < D; d++) out[g * D + d] += scores[g * ld + t] * v[d];
        }
    }
}

static void attend_one(const Job *j, int64_t seq, float *scores, int64_t *rows) {
    const int64_t bs = j->block_size, row = j->num_kv_heads * j->head_dim, ctx = j->ctx_lens[seq];
    const int64_t *table = j->tables + seq * j->max_blocks;
    for (int64_t t0 = 0, b = 0; t0 < ctx; t0 += bs, b++) /* blocks in order: no division per token */
        for (int64_t i = 0; i < bs && t0 + i < ctx; i++) rows[t0 + i] = (table[b] * bs + i) * row;
    switch (j->head_dim) {
    case 64: attend_vec(j, seq, scores, rows, 64); break;
    case 128: attend_vec(j, seq, scores, rows, 128); break;
    default:
        if (j->head_dim % 8 == 0) attend_vec(j, seq, scores, rows, j->head_dim);
        else attend_any(j, seq, scores, rows);
    }
}

/* Returns 0 on success, nonzero if a score buffer could not be had.
 *
 * Threads come from OpenMP: loaded into a process that runs torch, this library binds to the
 * libgomp torch already loaded (same soname), so the kernel runs on torch's own worker threads.
 * Threads of our own would compete for the cores with torch's workers, which spin for a while
 * after every torch op: that measured up to 2x slower inside the engine than alone. */
int paged_decode_attention_f32(const float *q, const float *k_cache, const float *v_cache, const int64_t *block_tables,
                               const int64_t *ctx_lens, float *out, int64_t num_seqs, int64_t max_blocks,
                               int64_t block_size, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                               float scale, int64_t num_threads) {
    const Job job = {q, k_cache, v_cache, block_tables, ctx_lens, out, num_seqs, max_blocks, block_size,
                     num_heads, num_kv_heads, head_dim, scale};
    int64_t max_ctx = 1;
    for (int64_t s = 0; s < num_seqs; s++) max_ctx = ctx_lens[s] > max_ctx ? ctx_lens[s] : max_ctx;
    if (num_threads < 1) num_threads = 1;
    int status = 0;
#pragma omp parallel num_threads(num_threads) reduction(| : status)
    {
        float *scores = malloc((size_t)(num_heads * (max_ctx + 8)) * sizeof(float));
        int64_t *rows = malloc((size_t)max_ctx * sizeof(*rows));
        status = !scores || !rows;
        /* sequences arrive sorted by context length: hand them out one at a time */
#pragma omp for schedule(dynamic, 1)
        for (int64_t s = 0; s < num_seqs; s++)
            if (!status && ctx_lens[s] > 0) attend_one(&job, s, scores, rows);
        free(scores);
        free(rows);
    }
    return status;
}
