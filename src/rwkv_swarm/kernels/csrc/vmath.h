/* Vector math for the row kernel (rwkv7_rows.c): exp, sigmoid, tanh, sums, layer norm, and
 * the WKV recurrence of one head held in registers. Every function works on one row alone,
 * so a row's result never depends on the other rows of a batch. */
#ifndef RWKV7_VMATH_H
#define RWKV7_VMATH_H

#include <math.h>
#include <string.h>

#include "kernels.h"

typedef int vi __attribute__((vector_size(VW * 4)));

static inline vf vbcast(const float *p) {  /* from memory: a load, not a shuffle */
    return (vf){0} + *p;
}

/* The first n (<= VW) floats at p, zeros after: no read past p + n. */
static inline vf vload_n(const float *p, int n) {
    if (n == VW) return vload(p);
    vf v = {0};
    memcpy(&v, p, sizeof(float) * n);
    return v;
}

static inline void vstore_n(float *p, vf v, int n) {
    if (n == VW) vstore(p, v);
    else memcpy(p, &v, sizeof(float) * n);
}

/* where mask: a, else b */
static inline vf vselect(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }
/* x clamped to [lo, hi]; NaN stays NaN */
static inline vf vclamp(vf x, float lo, float hi) {
    x = vselect(x < lo, vset(lo), x);
    return vselect(x > hi, vset(hi), x);
}

/* e^x, Cephes' polynomial after a split into 2^n e^r (relative error ~1e-7); NaN stays NaN.
 * Scalar expf per element was a fifth of the step. */
static inline vf vexp(vf x) {
    const vf big = vset(12582912.f);  /* 1.5 * 2^23: adding it rounds to an integer */
    x = vclamp(x, -87.3f, 88.3f);
    vf n = (x * vset(1.44269504088896341f) + big) - big;
    vf r = x - n * vset(0.693359375f) + n * vset(2.12194440e-4f);
    vf p = vset(1.9875691500e-4f);
    p = p * r + vset(1.3981999507e-3f);
    p = p * r + vset(8.3334519073e-3f);
    p = p * r + vset(4.1665795894e-2f);
    p = p * r + vset(1.6666665459e-1f);
    p = p * r + vset(5.0000001201e-1f);
    p = p * r * r + r + vset(1.f);
    vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)e;
}

static inline vf vsigmoid(vf x) { return vset(1.f) / (vset(1.f) + vexp(-x)); }

/* tanh as a rational function of x (Eigen's float form; absolute error < 3e-7). */
static inline vf vtanh(vf x) {
    x = vclamp(x, -7.90531110763549805f, 7.90531110763549805f);
    const vf z = x * x;
    vf p = vset(-2.76076847742355e-16f);
    p = p * z + vset(2.00018790482477e-13f);
    p = p * z + vset(-8.60467152213735e-11f);
    p = p * z + vset(5.12229709037114e-08f);
    p = p * z + vset(1.48572235717979e-05f);
    p = p * z + vset(6.37261928875436e-04f);
    p = p * z + vset(4.89352455891786e-03f);
    vf q = vset(1.19825839466702e-06f);
    q = q * z + vset(1.18534705686654e-04f);
    q = q * z + vset(2.26843463243900e-03f);
    q = q * z + vset(4.89352518554385e-03f);
    return x * p / q;
}

/* Sum of a vector's lanes, in halves. */
static inline float vsum(vf v) {
#if VW == 16
    typedef float h8 __attribute__((vector_size(32)));
    union { vf v; h8 h[2]; } u = {v};
    h8 s8 = u.h[0] + u.h[1];
#else
    typedef float h8 __attribute__((vector_size(32)));
    h8 s8 = v;
#endif
    typedef float h4 __attribute__((vector_size(16)));
    union { h8 v; h4 h[2]; } w = {s8};
    h4 s4 = w.h[0] + w.h[1];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

/* Lanes [0, m) of a vector: all ones there, zeros after. */
static inline vi lanes_below(int m) {
    vi lane;
    for (int i = 0; i < VW; i++) lane[i] = i;
    return lane < m;
}

/* Mean and 1/sqrt(var + eps) of n floats (any n), vectorised. */
static inline void moments(const float *x, int n, float eps, float *mean, float *inv) {
    vf s = {0};
    for (int c = 0; c < n; c += VW) s += vload_n(x + c, n - c < VW ? n - c : VW);
    const float mu = vsum(s) / n;
    vf q = {0};
    for (int c = 0; c < n; c += VW) {
        const int m = n - c < VW ? n - c : VW;
        vf d = vload_n(x + c, m) - mu;
        if (m < VW) d = (vf)((vi)d & lanes_below(m));
        q += d * d;
    }
    *mean = mu;
    *inv = 1.f / sqrtf(vsum(q) / n + eps);
}

/* Layer norm of one row of n floats. */
static void layer_norm_v(const float *x, const float *w, const float *b, float *y, int n) {
    float mean, inv;
    moments(x, n, LN_EPS, &mean, &inv);
    for (int c = 0; c < n; c += VW) {
        const int m = n - c < VW ? n - c : VW;
        vstore_n(y + c, (vload_n(x + c, m) - mean) * inv * vload_n(w + c, m) + vload_n(b + c, m),
                 m);
    }
}

/* U value rows of one head (N = NQ vectors), their state held in registers between the two
 * passes: S' = S diag(w) + (S (-kk)) b^T + v k^T, y = S' r, the state S[value][key] as
 * stored. The rows' sums overlap, and w, kk, b, k, r are loaded once per U rows: the one-row
 * form (wkv_row) waited on two horizontal sums per row and ran at a third of this speed. */
static inline __attribute__((always_inline)) void wkv_rows(
    const float *Sin, float *Sout, const float *w, const float *kk, const float *b,
    const float *k, const float *v, const float *r, float *y, const int U, const int NQ) {
    const int N = NQ * VW;
    vf S[8][8], d[8], yy[8];
    for (int u = 0; u < U; u++) {
        d[u] = (vf){0};
        for (int q = 0; q < NQ; q++) {
            S[u][q] = vload(Sin + (size_t)u * N + q * VW);
            d[u] += S[u][q] * vload(kk + q * VW);
        }
    }
    for (int u = 0; u < U; u++) {
        const vf sa = vset(-vsum(d[u])), vv = vset(v[u]);
        yy[u] = (vf){0};
        for (int q = 0; q < NQ; q++) {
            const vf t = S[u][q] * vload(w + q * VW) + sa * vload(b + q * VW)
                         + vv * vload(k + q * VW);
            vstore(Sout + (size_t)u * N + q * VW, t);
            yy[u] += t * vload(r + q * VW);
        }
    }
    for (int u = 0; u < U; u++) y[u] = vsum(yy[u]);
}

#define WKV_HEAD(U, NQ)                                                                   \
    for (int i = 0; i < N; i += U)                                                        \
        wkv_rows(Sin + (size_t)i * N, Sout + (size_t)i * N, w, kk, b, k, v + i, r, y + i, \
                 U, NQ);                                                                  \
    return;

/* One head, one token; Sin may equal Sout. Head sizes of 1, 2, 4 or 8 vectors run in
 * registers, any other size row by row. */
static void wkv_head_v(const float *Sin, float *Sout, int N, const float *w, const float *kk,
                       const float *b, const float *k, const float *v, const float *r,
                       float *y) {
    switch (N % VW ? 0 : N / VW) {
    case 1: if (N % 8 == 0) { WKV_HEAD(8, 1) } break;
    case 2: if (N % 8 == 0) { WKV_HEAD(8, 2) } break;
    case 4: WKV_HEAD(4, 4)
    case 8: WKV_HEAD(2, 8)
    }
    wkv_head(Sin, Sout, N, w, kk, b, k, v, r, y);
}

#endif
