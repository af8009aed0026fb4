/* Small building blocks shared by the native step and sequence kernels. */
#ifndef RWKV7_KERNELS_H
#define RWKV7_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define DECAY_SCALE 0.606531f
#define LN_EPS 1e-5f
#define GN_EPS 64e-5f

/* n floats on a 64-byte boundary (zeroed where `zero`), NULL when memory ran out; free() frees
 * them. From malloc, a large block starts 16 bytes past a page, so every 64-byte vector load of
 * an activation straddled two cache lines: the row step at C=64 L=2 ran 8-10% slower. */
static inline float *floats_aligned(size_t n, int zero) {
    void *p = NULL;
    if (posix_memalign(&p, 64, sizeof(float) * (n ? n : 1)) != 0) return NULL;
    if (zero) memset(p, 0, sizeof(float) * n);
    return p;
}

static inline float sigmoidf(float z) { return 1.f / (1.f + expf(-z)); }

static inline void layer_norm(const float *x, const float *w, const float *b, float *y, int n,
                              float eps) {
    float mean = 0.f, var = 0.f;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) { float d = x[i] - mean; var += d * d; }
    float inv = 1.f / sqrtf(var / n + eps);
    for (int i = 0; i < n; i++) y[i] = (x[i] - mean) * inv * w[i] + b[i];
}

/* Explicit vectors (GCC/clang extensions): the compilers' `omp simd` reductions over several
 * sums kept them in memory and ran 5x slower than one sum. VW floats per vector: one AVX-512
 * register where there is one, else one AVX register (two SSE ones without AVX). */
#if defined(__AVX512F__)
#define VW 16
#else
#define VW 8
#endif
typedef float vf __attribute__((vector_size(VW * 4)));

static inline vf vload(const float *p) {  /* unaligned, and no aliasing assumptions */
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vset(float x) { return (vf){0} + x; }

static inline float hsum(vf v) {
    float s = 0.f;
    for (int i = 0; i < VW; i++) s += v[i];
    return s;
}

/* sum_i a[i] b[i] */
static inline float dot(const float *a, const float *b, int n) {
    vf s0 = {0}, s1 = {0};
    int i = 0;
    for (; i + 2 * VW <= n; i += 2 * VW) {
        s0 += vload(a + i) * vload(b + i);
        s1 += vload(a + i + VW) * vload(b + i + VW);
    }
    for (; i + VW <= n; i += VW) s0 += vload(a + i) * vload(b + i);
    float s = hsum(s0 + s1);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* How far ahead (floats) weight rows streamed from memory are prefetched, non-temporally:
 * one thread's GEMV stream rose from 28 to 38 GB/s here, two threads' from 41 to 50. */
#define PREFETCH 256

/* out[j] = sum_i w_j[i] x[i] for four rows w_j: four independent sums per pass over x.
 * `prefetch`: the rows come from memory (the first pass over them), so fetch ahead. */
static inline void dot4(const float *w0, const float *w1, const float *w2, const float *w3,
                        const float *x, int n, float *out, int prefetch) {
    vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    int i = 0;
    for (; i + VW <= n; i += VW) {
        if (prefetch) {
            __builtin_prefetch(w0 + i + PREFETCH, 0, 0);
            __builtin_prefetch(w1 + i + PREFETCH, 0, 0);
            __builtin_prefetch(w2 + i + PREFETCH, 0, 0);
            __builtin_prefetch(w3 + i + PREFETCH, 0, 0);
        }
        vf xv = vload(x + i);
        a0 += vload(w0 + i) * xv;
        a1 += vload(w1 + i) * xv;
        a2 += vload(w2 + i) * xv;
        a3 += vload(w3 + i) * xv;
    }
    out[0] = hsum(a0), out[1] = hsum(a1), out[2] = hsum(a2), out[3] = hsum(a3);
    for (; i < n; i++) {
        out[0] += w0[i] * x[i], out[1] += w1[i] * x[i];
        out[2] += w2[i] * x[i], out[3] += w3[i] * x[i];
    }
}

static inline void put4(float *y, const float *acc, int accumulate) {
    for (int j = 0; j < 4; j++) y[j] = accumulate ? y[j] + acc[j] : acc[j];
}

/* Y[b][o] (+)= sum_i W[o][i] X[b][i] for o in [o0, o1) and every row b < B. Each group of
 * four weight rows is applied to all B rows while it is in L1, so a step reads its weights
 * once whatever B. */
static inline void gemv_rows(const float *restrict W, int in, const float *restrict X, int ldx,
                             float *restrict Y, int ldy, int B, int o0, int o1, int accumulate) {
    int o = o0;
    for (; o + 4 <= o1; o += 4) {
        const float *w0 = W + (size_t)o * in;
        for (int b = 0; b < B; b++) {
            float acc[4];
            if (b == 0)
                dot4(w0, w0 + in, w0 + 2 * in, w0 + 3 * in, X, in, acc, 1);
            else
                dot4(w0, w0 + in, w0 + 2 * in, w0 + 3 * in, X + (size_t)b * ldx, in, acc, 0);
            put4(Y + (size_t)b * ldy + o, acc, accumulate);
        }
    }
    for (; o < o1; o++)
        for (int b = 0; b < B; b++) {
            float acc = dot(W + (size_t)o * in, X + (size_t)b * ldx, in);
            float *y = Y + (size_t)b * ldy + o;
            *y = accumulate ? *y + acc : acc;
        }
}

/* Y[b][o] = sum_i X[b][i] W[i][o] for o in [o0, o1), every row b < B; W has rows of ldw. */
static inline void gemv_cols(const float *restrict W, int ldw, int in, const float *restrict X,
                             int ldx, float *restrict Y, int ldy, int B, int o0, int o1) {
    for (int b = 0; b < B; b++) memset(Y + (size_t)b * ldy + o0, 0, sizeof(float) * (o1 - o0));
    for (int i = 0; i < in; i++) {
        const float *row = W + (size_t)i * ldw;
        for (int b = 0; b < B; b++) {
            const float xi = X[(size_t)b * ldx + i];
            float *y = Y + (size_t)b * ldy;
#pragma omp simd
            for (int o = o0; o < o1; o++) y[o] += xi * row[o];
        }
    }
}

/* S' = S diag(w) + (S (-kk)) b^T + v k^T and y = S' r for one value row S[i] (N keys). */
static inline float wkv_row(const float *si, float *so, int N, const float *w, const float *kk,
                            const float *b, const float *k, float vi, const float *r) {
    const float sa = -dot(si, kk, N);
    vf y0 = {0}, sav = vset(sa), vv = vset(vi);
    int n = 0;
    for (; n + VW <= N; n += VW) {
        vf t = vload(si + n) * vload(w + n) + sav * vload(b + n) + vv * vload(k + n);
        vstore(so + n, t);
        y0 += t * vload(r + n);
    }
    float y = hsum(y0);
    for (; n < N; n++) {
        float t = si[n] * w[n] + sa * b[n] + vi * k[n];
        so[n] = t;
        y += t * r[n];
    }
    return y;
}

/* One head, one token: S' = S diag(w) + (S (-kk)) b^T + v k^T, y = S' r. S[value][key], N x N.
 * Sin may equal Sout. */
static inline void wkv_head(const float *Sin, float *Sout, int N, const float *w,
                            const float *kk, const float *b, const float *k, const float *v,
                            const float *r, float *y) {
    for (int i = 0; i < N; i++)
        y[i] = wkv_row(Sin + (size_t)i * N, Sout + (size_t)i * N, N, w, kk, b, k, v[i], r);
}

/* The same token on the transposed state ST[key][value] (N a multiple of VW, N <= 128): every
 * sum runs down whole vectors, with no horizontal sums. 4x faster than wkv_head at N = 64 (an
 * L1-resident microbenchmark); sequences transpose the state once in and once out. */
static inline void wkv_head_t(float *ST, int N, const float *w, const float *kk, const float *b,
                              const float *k, const float *v, const float *r, float *y) {
    enum { MAXV = 128 / VW };
    const int nv = N / VW;
    vf sa[MAXV], vv[MAXV], yy[MAXV];
    for (int q = 0; q < nv; q++) sa[q] = (vf){0}, vv[q] = vload(v + q * VW), yy[q] = (vf){0};
    for (int j = 0; j < N; j++) {  /* sa = S (-kk), a sum over the keys j */
        const vf c = vset(-kk[j]);
        const float *row = ST + (size_t)j * N;
        for (int q = 0; q < nv; q++) sa[q] += c * vload(row + q * VW);
    }
    for (int j = 0; j < N; j++) {
        const vf wj = vset(w[j]), bj = vset(b[j]), kj = vset(k[j]), rj = vset(r[j]);
        float *row = ST + (size_t)j * N;
        for (int q = 0; q < nv; q++) {
            vf t = vload(row + q * VW) * wj + sa[q] * bj + vv[q] * kj;
            vstore(row + q * VW, t);
            yy[q] += t * rj;
        }
    }
    for (int q = 0; q < nv; q++) vstore(y + q * VW, yy[q]);
}

#if defined(__AVX__)
#include <immintrin.h>

/* dst (8 x 8, row stride ld) = src (8 x 8, row stride ls) transposed, in 24 shuffles. */
static inline void transpose8(const float *src, int ls, float *dst, int ld) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + (size_t)i * ls);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(dst + (size_t)i * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(dst + (size_t)(i + 4) * ld,
                         _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
}
#endif

/* dst (N x N) = src^T. In 8 x 8 blocks where AVX has the shuffles: 4x faster than by element
 * at N = 64, where two transposes per (row, head) were a third of a 16-token WKV call. */
static inline void transpose(const float *src, float *dst, int N) {
#if defined(__AVX__)
    if (N % 8 == 0) {
        for (int i = 0; i < N; i += 8)
            for (int j = 0; j < N; j += 8)
                transpose8(src + (size_t)i * N + j, N, dst + (size_t)j * N + i, N);
        return;
    }
#endif
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) dst[(size_t)j * N + i] = src[(size_t)i * N + j];
}

#endif
