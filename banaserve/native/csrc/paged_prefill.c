/* Prefill attention straight from paged KV memory, fp32, CPU.
 *
 * Every query token of a step's prefill chunks attends causally over its sequence's context,
 * which (the chunk's own keys included) is already written into the cache pages. A chunk of
 * q_len tokens whose context is ctx_len long starts at position ctx_len - q_len, so a fresh
 * prompt and a continuation chunk after a prefix hit or an earlier chunk are one case: no
 * gathered copy and no mask tensor.
 *
 * Work items are (chunk, KV head, tile of QT query tokens); the rows of an item are the tile's
 * tokens times the query heads sharing that KV head, so GQA reads each K/V row once per tile.
 * An item walks its context KT tokens at a time with an online softmax (flash attention):
 * S = Q K^T through a register-blocked 6 x 16 micro-kernel over a transposed copy of the K tile,
 * then O += P V reading the V rows in place. Items are spread over OpenMP threads, the longest
 * contexts first.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vec.h"

#define QT 32 /* query tokens per work item */
#define KT 64 /* context tokens per step of an item's walk */
#define RB 6  /* rows per micro-tile: 6 x 2 accumulators + 2 loads + 1 broadcast fit 16 registers */

typedef struct {
    const float *q, *k, *v;
    float *out;
    const int64_t *tables, *spans; /* spans[c] = {q_start, q_len, ctx_len} */
    int64_t max_blocks, block_size, num_heads, num_kv_heads;
    float scale;
} Job;

typedef struct {
    int64_t chunk, kv_head, t0, cost;
} Item;

typedef struct {    /* one thread's scratch, sized for the largest item */
    float *qp;      /* [rows, D] the item's query rows, packed */
    float *kt;      /* [D, KT] the K tile, transposed */
    float *s;       /* [rows, KT] scores, then probabilities */
    float *o;       /* [rows, D] output accumulators */
    float *m, *l;   /* [rows] running max and sum of each row */
    const float **vrow; /* [KT] the V tile's rows */
} Scratch;

/* dst[e * KT + i] = rows[i][d + e] for i, e < 8: an 8 x 8 block of K, transposed in registers */
static inline void transpose8(const float *const *rows, int64_t d, float *dst) {
    const vi8 lo1 = {0, 8, 1, 9, 4, 12, 5, 13}, hi1 = {2, 10, 3, 11, 6, 14, 7, 15};
    const vi8 lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
    const vi8 lo3 = {0, 1, 2, 3, 8, 9, 10, 11}, hi3 = {4, 5, 6, 7, 12, 13, 14, 15};
    vf8 a[8], t[8], u[8];
    for (int i = 0; i < 8; i++) a[i] = LOAD8(rows[i] + d);
    for (int i = 0; i < 8; i += 2) { /* pairs of rows interleaved */
        t[i] = __builtin_shuffle(a[i], a[i + 1], lo1);
        t[i + 1] = __builtin_shuffle(a[i], a[i + 1], hi1);
    }
    for (int i = 0; i < 8; i += 4) { /* then quads: each 128-bit half holds one column of 4 rows */
        u[i] = __builtin_shuffle(t[i], t[i + 2], lo2);
        u[i + 1] = __builtin_shuffle(t[i], t[i + 2], hi2);
        u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], lo2);
        u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], hi2);
    }
    for (int c = 0; c < 4; c++) { /* rows 0-3 and 4-7 of columns c and c + 4 */
        STORE8(dst + c * KT, __builtin_shuffle(u[c], u[c + 4], lo3));
        STORE8(dst + (c + 4) * KT, __builtin_shuffle(u[c], u[c + 4], hi3));
    }
}

/* S[r0:r0+RB, c0:c0+16] = Qp[r0:r0+RB] . Kt[:, c0:c0+16] */
static inline __attribute__((always_inline)) void score_tile(const float *qp, const float *kt, float *s,
                                                              int64_t r0, int64_t c0, const int64_t D) {
    vf8 c[RB][2] = {{0}};
    for (int64_t d = 0; d < D; d++) {
        const vf8 b0 = LOAD8(kt + d * KT + c0), b1 = LOAD8(kt + d * KT + c0 + 8);
        for (int64_t r = 0; r < RB; r++) {
            const float a = qp[(r0 + r) * D + d];
            c[r][0] += a * b0;
            c[r][1] += a * b1;
        }
    }
    for (int64_t r = 0; r < RB; r++) {
        STORE8(s + (r0 + r) * KT + c0, c[r][0]);
        STORE8(s + (r0 + r) * KT + c0 + 8, c[r][1]);
    }
}

/* O[r0:r0+RB, c0:c0+16] += P[r0:r0+RB, :nk] . V[:nk, c0:c0+16] */
static inline __attribute__((always_inline)) void value_tile(const float *p, float *o, const float **vrow,
                                                              int64_t nk, int64_t r0, int64_t c0, const int64_t D) {
    vf8 c[RB][2];
    for (int64_t r = 0; r < RB; r++) {
        c[r][0] = LOAD8(o + (r0 + r) * D + c0);
        c[r][1] = LOAD8(o + (r0 + r) * D + c0 + 8);
    }
    for (int64_t j = 0; j < nk; j++) {
        const vf8 b0 = LOAD8(vrow[j] + c0), b1 = LOAD8(vrow[j] + c0 + 8);
        for (int64_t r = 0; r < RB; r++) {
            const float a = p[(r0 + r) * KT + j];
            c[r][0] += a * b0;
            c[r][1] += a * b1;
        }
    }
    for (int64_t r = 0; r < RB; r++) {
        STORE8(o + (r0 + r) * D + c0, c[r][0]);
        STORE8(o + (r0 + r) * D + c0 + 8, c[r][1]);
    }
}

/* Online softmax step for row r over its first n (> 0) scores of this tile (already scaled);
 * zeroes the rest, so P . V may run over the whole tile. */
static void softmax_step(Scratch *w, int64_t r, int64_t n, const int64_t D) {
    float *s = w->s + r * KT, mx = w->m[r];
    for (int64_t j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
    for (int64_t j = n; j < KT; j++) s[j] = -1e30f; /* exp to 0 below */
    vf8 sum = {0};
    for (int64_t j = 0; j < KT; j += 8) {
        const vf8 e = exp8(LOAD8(s + j) - mx);
        STORE8(s + j, e);
        sum += e;
    }
    const float total = sum[0] + sum[1] + sum[2] + sum[3] + sum[4] + sum[5] + sum[6] + sum[7];
    if (mx > w->m[r] && w->l[r] > 0.f) { /* the max rose: rescale what earlier tiles summed */
        const float alpha = expf(w->m[r] - mx);
        w->l[r] *= alpha;
        for (int64_t d = 0; d < D; d++) w->o[r * D + d] *= alpha;
    }
    w->m[r] = mx;
    w->l[r] += total;
}

static inline __attribute__((always_inline)) void attend_item(const Job *j, const Item *it, Scratch *w,
                                                               const int64_t D) {
    const int64_t H = j->num_heads, G = H / j->num_kv_heads, bs = j->block_size, row = j->num_kv_heads * D;
    const int64_t *span = j->spans + 3 * it->chunk, *table = j->tables + it->chunk * j->max_blocks;
    const int64_t q_start = span[0], q_len = span[1], first_pos = span[2] - q_len;
    const int64_t nq = q_len - it->t0 < QT ? q_len - it->t0 : QT, rows = nq * G;
    const int64_t padded = (rows + RB - 1) / RB * RB, ctx = first_pos + it->t0 + nq; /* keys this item sees */
    /* row r is query token t0 + r / G, head kv_head * G + r % G: each token's G heads are adjacent in q */
    for (int64_t t = 0; t < nq; t++) { /* scaled here once, so scores come out scaled */
        const float *src = j->q + ((q_start + it->t0 + t) * H + it->kv_head * G) * D;
        for (int64_t i = 0; i < G * D; i++) w->qp[t * G * D + i] = src[i] * j->scale;
    }
    memset(w->qp + rows * D, 0, (size_t)((padded - rows) * D) * sizeof(float));
    memset(w->o, 0, (size_t)(padded * D) * sizeof(float));
    for (int64_t r = 0; r < padded; r++) w->m[r] = -FLT_MAX, w->l[r] = 0.f;
    for (int64_t k0 = 0; k0 < ctx; k0 += KT) {
        const int64_t nk = ctx - k0 < KT ? ctx - k0 : KT;
        const float *krow[KT];
        for (int64_t i = 0; i < KT; i++) { /* past the context: repeat the last row, its scores go unused */
            const int64_t t = k0 + (i < nk ? i : nk - 1), off = (table[t / bs] * bs + t % bs) * row + it->kv_head * D;
            krow[i] = j->k + off;
            w->vrow[i] = j->v + off;
        }
        const int64_t cols = (nk + 15) / 16 * 16;
        for (int64_t i = 0; i < cols; i += 8)
            for (int64_t d = 0; d < D; d += 8) transpose8(krow + i, d, w->kt + d * KT + i);
        for (int64_t r0 = 0; r0 < padded; r0 += RB)
            for (int64_t c0 = 0; c0 < cols; c0 += 16) score_tile(w->qp, w->kt, w->s, r0, c0, D);
        for (int64_t r = 0; r < padded; r++) {
            /* causal: the row's token sees keys up to its own position (padding rows copy the last) */
            const int64_t pos = first_pos + it->t0 + (r < rows ? r / G : nq - 1);
            const int64_t n = pos - k0 + 1 < nk ? pos - k0 + 1 : nk;
            if (n > 0) softmax_step(w, r, n, D);
            else memset(w->s + r * KT, 0, KT * sizeof(float));
        }
        for (int64_t r0 = 0; r0 < padded; r0 += RB)
            for (int64_t c0 = 0; c0 < D; c0 += 16) value_tile(w->s, w->o, w->vrow, nk, r0, c0, D);
    }
    for (int64_t r = 0; r < rows; r++) {
        const int64_t t = it->t0 + r / G, h = it->kv_head * G + r % G;
        float *dst = j->out + ((q_start + t) * H + h) * D;
        const float inv = 1.f / w->l[r];
        for (int64_t d = 0; d < D; d++) dst[d] = w->o[r * D + d] * inv;
    }
}

static void attend_any_item(const Job *j, const Item *it, Scratch *w, int64_t D) {
    switch (D) { /* common head sizes get constant-D copies: fully unrolled inner loops */
    case 64: attend_item(j, it, w, 64); break;
    case 128: attend_item(j, it, w, 128); break;
    default: attend_item(j, it, w, D);
    }
}

static int by_cost_desc(const void *a, const void *b) {
    const int64_t x = ((const Item *)a)->cost, y = ((const Item *)b)->cost;
    return (x < y) - (x > y);
}

/* Returns 0 on success, nonzero if memory could not be had. head_dim must be a multiple of 16.
 * Threads are torch's OpenMP workers, as in paged_decode.c. */
int paged_prefill_attention_f32(const float *q, const float *k_cache, const float *v_cache,
                                const int64_t *block_tables, const int64_t *spans, float *out, int64_t num_chunks,
                                int64_t max_blocks, int64_t block_size, int64_t num_heads, int64_t num_kv_heads,
                                int64_t head_dim, float scale, int64_t num_threads) {
    const Job job = {q, k_cache, v_cache, out, block_tables, spans, max_blocks, block_size, num_heads,
                     num_kv_heads, scale};
    const int64_t G = num_heads / num_kv_heads, D = head_dim;
    int64_t n_items = 0;
    for (int64_t c = 0; c < num_chunks; c++) n_items += num_kv_heads * ((spans[3 * c + 1] + QT - 1) / QT);
    Item *items = malloc((size_t)(n_items > 0 ? n_items : 1) * sizeof(Item));
    if (!items) return 1;
    int64_t n = 0;
    for (int64_t c = 0; c < num_chunks; c++)
        for (int64_t t0 = 0; t0 < spans[3 * c + 1]; t0 += QT)
            for (int64_t h = 0; h < num_kv_heads; h++)
                items[n++] = (Item){c, h, t0, spans[3 * c + 2] - spans[3 * c + 1] + t0};
    qsort(items, (size_t)n_items, sizeof(Item), by_cost_desc); /* long walks first: even finish */
    const int64_t rows = (QT * G + RB - 1) / RB * RB;
    if (num_threads < 1) num_threads = 1;
    int status = 0;
#pragma omp parallel num_threads(num_threads) reduction(| : status)
    {
        Scratch w = {malloc((size_t)(rows * D) * sizeof(float)), calloc((size_t)(D * KT), sizeof(float)),
                     malloc((size_t)(rows * KT) * sizeof(float)), malloc((size_t)(rows * D) * sizeof(float)),
                     malloc((size_t)rows * sizeof(float)), malloc((size_t)rows * sizeof(float)),
                     malloc(KT * sizeof(float *))};
        status = !w.qp || !w.kt || !w.s || !w.o || !w.m || !w.l || !w.vrow;
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < n_items; i++)
            if (!status) attend_any_item(&job, &items[i], &w, D);
        free(w.qp), free(w.kt), free(w.s), free(w.o), free(w.m), free(w.l), free((void *)w.vrow);
    }
    free(items);
    return status;
}
