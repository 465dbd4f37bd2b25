/* 8-float vectors through GCC vector extensions: GCC lowers them to AVX (or pairs of SSE/NEON
 * registers) without intrinsics headers, so the kernels build for whatever -march=native is. */
#ifndef BANASERVE_VEC_H
#define BANASERVE_VEC_H
#include <stdint.h>

typedef float vf8 __attribute__((vector_size(32)));
typedef float vf8u __attribute__((vector_size(32), aligned(4))); /* loads and stores at any float offset */
typedef int vi8 __attribute__((vector_size(32)));
#define LOAD8(p) (*(const vf8u *)(p))
#define STORE8(p, x) (*(vf8u *)(p) = (x))

/* Lanes of a where mask is set, else of b. */
static inline vf8 select8(vi8 mask, vf8 a, vf8 b) { return (vf8)(((vi8)a & mask) | ((vi8)b & ~mask)); }

/* e^x, 8 lanes, inline, x clamped to [-87, 88] (e^-87 is still a normal float, e^88 is below
 * FLT_MAX). x = n ln2 + r with |r| <= ln2 / 2; e^r by a degree-6 Taylor polynomial (relative error
 * under 2e-7); 2^n goes straight into the exponent bits. libm's vector expf is a call per 8 lanes
 * that takes a slow scalar path whenever one lane underflows, which softmax scores far below
 * their row's max do all the time. */
static inline vf8 exp8(vf8 x) {
    const vf8 lo = (vf8){0} - 87.f, hi = (vf8){0} + 88.f;
    x = select8(x < lo, lo, x);
    x = select8(x > hi, hi, x);
    const vf8 y = x * 1.44269504f;
    const vf8 half = (vf8)((vi8)((vf8){0} + 0.5f) | ((vi8)y & ((vi8){0} + INT32_MIN))); /* 0.5 with y's sign: */
    const vi8 n = __builtin_convertvector(y + half, vi8); /* truncation then rounds to nearest */
    const vf8 nf = __builtin_convertvector(n, vf8);
    const vf8 r = x - nf * 0.693145752f - nf * 1.42860677e-6f; /* ln 2 in two parts */
    vf8 p = (vf8){0} + 1.f / 720;
    p = p * r + 1.f / 120;
    p = p * r + 1.f / 24;
    p = p * r + 1.f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    return p * (vf8)((n + 127) << 23);
}
#endif
