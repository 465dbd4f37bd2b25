/* Decode attention straight from paged KV memory, fp32, CPU.
 *
 * One query token per sequence. Each sequence's K and V rows are read once, in place in the
 * cache blocks: no gathered copy, no padding. All query heads are scored against a token's row
 * while it is in cache, so GQA needs no repeated K/V.
 * Softmax is exact (scores kept, max subtracted) like scaled_dot_product_attention.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const float *q, *k, *v;
    const int64_t *tables, *ctx_lens;
    float *out;
    int64_t num_seqs, max_blocks, block_size, num_heads, num_kv_heads, head_dim;
    float scale;
    int64_t first, stride; /* this thread's work items: first, first + stride, ... */
    int status;
} Job;

/* D is a parameter of an always-inlined body so that the common head sizes get their own fully
 * unrolled copies (see attend_one); blocks are walked in order so each is one contiguous read. */
static inline __attribute__((always_inline)) void attend(const Job *j, int64_t seq, float *scores, const int64_t D) {
    const int64_t H = j->num_heads, KVH = j->num_kv_heads, G = H / KVH, bs = j->block_size;
    const int64_t ctx = j->ctx_lens[seq], row = KVH * D;
    const int64_t *table = j->tables + seq * j->max_blocks;
    const float *q = j->q + seq * H * D;
    float *out = j->out + seq * H * D;
    for (int64_t t0 = 0; t0 < ctx; t0 += bs) {
        const float *kb = j->k + table[t0 / bs] * bs * row;
        const int64_t n = ctx - t0 < bs ? ctx - t0 : bs;
        for (int64_t i = 0; i < n; i++) {
            const float *k = kb + i * row;
            for (int64_t h = 0; h < H; h++) {
                const float *qh = q + h * D, *kh = k + (h / G) * D;
                float s = 0.f;
#pragma omp simd reduction(+ : s)
                for (int64_t d = 0; d < D; d++) s += qh[d] * kh[d];
                scores[h * ctx + t0 + i] = s;
            }
        }
    }
    for (int64_t h = 0; h < H; h++) {
        float *sh = scores + h * ctx, m = sh[0], sum = 0.f;
        for (int64_t t = 1; t < ctx; t++) m = sh[t] > m ? sh[t] : m;
        const float scale = j->scale;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < ctx; t++) {
            sh[t] = expf((sh[t] - m) * scale);
            sum += sh[t];
        }
        const float inv = 1.f / sum;
#pragma omp simd
        for (int64_t t = 0; t < ctx; t++) sh[t] *= inv;
    }
    memset(out, 0, (size_t)(H * D) * sizeof(float));
    for (int64_t t0 = 0; t0 < ctx; t0 += bs) {
        const float *vb = j->v + table[t0 / bs] * bs * row;
        const int64_t n = ctx - t0 < bs ? ctx - t0 : bs;
        for (int64_t i = 0; i < n; i++) {
            const float *v = vb + i * row;
            for (int64_t h = 0; h < H; h++) {
                const float p = scores[h * ctx + t0 + i], *vh = v + (h / G) * D;
                float *o = out + h * D;
#pragma omp simd
                for (int64_t d = 0; d < D; d++) o[d] += p * vh[d];
            }
        }
    }
}

static void attend_one(const Job *j, int64_t seq, float *scores) {
    switch (j->head_dim) {
    case 64: attend(j, seq, scores, 64); break;
    case 128: attend(j, seq, scores, 128); break;
    default: attend(j, seq, scores, j->head_dim);
    }
}

static void *run_job(void *arg) {
    Job *j = (Job *)arg;
    int64_t max_ctx = 0;
    for (int64_t s = 0; s < j->num_seqs; s++) max_ctx = j->ctx_lens[s] > max_ctx ? j->ctx_lens[s] : max_ctx;
    float *scores = malloc((size_t)(j->num_heads * (max_ctx > 0 ? max_ctx : 1)) * sizeof(float));
    if (!scores) {
        j->status = 1;
        return NULL;
    }
    for (int64_t s = j->first; s < j->num_seqs; s += j->stride)
        if (j->ctx_lens[s] > 0) attend_one(j, s, scores);
    free(scores);
    j->status = 0;
    return NULL;
}

/* Returns 0 on success, nonzero if a thread or buffer could not be had. */
int paged_decode_attention_f32(const float *q, const float *k_cache, const float *v_cache, const int64_t *block_tables,
                               const int64_t *ctx_lens, float *out, int64_t num_seqs, int64_t max_blocks,
                               int64_t block_size, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                               float scale, int64_t num_threads) {
    if (num_threads < 1) num_threads = 1;
    if (num_threads > 64) num_threads = 64;
    Job jobs[64];
    pthread_t threads[64];
    int started[64] = {0};
    for (int64_t i = 0; i < num_threads; i++) {
        jobs[i] = (Job){q, k_cache, v_cache, block_tables, ctx_lens, out, num_seqs, max_blocks, block_size,
                        num_heads, num_kv_heads, head_dim, scale, i, num_threads, 1};
    }
    for (int64_t i = 1; i < num_threads; i++) started[i] = pthread_create(&threads[i], NULL, run_job, &jobs[i]) == 0;
    run_job(&jobs[0]);
    int status = jobs[0].status;
    for (int64_t i = 1; i < num_threads; i++) {
        if (started[i]) {
            pthread_join(threads[i], NULL);
            status |= jobs[i].status;
        } else {
            run_job(&jobs[i]); /* could not start a thread: do its share here */
            status |= jobs[i].status;
        }
    }
    return status;
}
