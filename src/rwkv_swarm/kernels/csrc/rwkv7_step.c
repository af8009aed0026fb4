/* One RWKV-7 ("x070") token step for a small batch on the CPU, in plain C.
 *
 * Why: at batch 1 a step of a small model is ~1 MFLOP; in PyTorch it is ~110 dispatched ops
 * per layer at 2-5 us each. Here a whole step is one call. The math is the same as
 * rwkv_swarm/kernels/model.py (and BlinkDL's reference); tests compare them.
 *
 * Weights are read in place from the model's fp32 parameters (PyTorch layouts):
 *   rows: W[out][in] (nn.Linear), y = W x        cols: W[in][out] (LoRA w1..g2), y = x W
 * Per layer, w[] holds LAYER_PTRS pointers in the order of the enum below.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { LN1_W, LN1_B, LN2_W, LN2_B, X_R, X_W, X_K, X_V, X_A, X_G, W0, W1, W2, A0, A1, A2,
       V0, V1, V2, G1, G2, K_K, K_A, R_K, RECEPTANCE, KEY, VALUE, OUTPUT, LNX_W, LNX_B,
       FFN_X_K, FFN_KEY, FFN_VALUE, LAYER_PTRS };
enum { LN0_W, LN0_B, LNOUT_W, LNOUT_B, HEAD, GLOBAL_PTRS };

#define DECAY_SCALE 0.606531f
#define LN_EPS 1e-5f
#define GN_EPS 64e-5f

static void layer_norm(const float *x, const float *w, const float *b, float *y, int n, float eps) {
    float mean = 0.f, var = 0.f;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) { float d = x[i] - mean; var += d * d; }
    float inv = 1.f / sqrtf(var / n + eps);
    for (int i = 0; i < n; i++) y[i] = (x[i] - mean) * inv * w[i] + b[i];
}

/* y[o] (+)= sum_i W[o][i] x[i] */
static void gemv_rows(const float *restrict W, const float *restrict x, float *restrict y,
                      int out, int in, int accumulate) {
    for (int o = 0; o < out; o++) {
        const float *row = W + (size_t)o * in;
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int i = 0; i < in; i++) acc += row[i] * x[i];
        y[o] = accumulate ? y[o] + acc : acc;
    }
}

/* y[o] = sum_i x[i] W[i][o] */
static void gemv_cols(const float *restrict W, const float *restrict x, float *restrict y,
                      int in, int out) {
    memset(y, 0, sizeof(float) * out);
    for (int i = 0; i < in; i++) {
        const float xi = x[i], *row = W + (size_t)i * out;
#pragma omp simd
        for (int o = 0; o < out; o++) y[o] += xi * row[o];
    }
}

static inline float sigmoidf(float z) { return 1.f / (1.f + expf(-z)); }

typedef struct {
    int C, H, N, F, Dw, Da, Dv, Dg, Dmax;
} Dims;

/* Time mix for one row. x: residual (updated), prev/S: state in, prev_out/S_out: state out. */
static void time_mix(const Dims *d, const float *const *w, int layer, float *x,
                     const float *prev, float *prev_out, const float *S, float *S_out,
                     float *v_first, float *buf) {
    const int C = d->C, H = d->H, N = d->N;
    float *xa = buf, *mix = xa + C, *r = mix + 6 * C, *k = r + C, *v = k + C, *dd = v + C;
    float *a = dd + C, *g = a + C, *kk = g + C, *y = kk + C, *hid = y + C, *tmp = hid + d->Dmax;
    layer_norm(x, w[LN1_W], w[LN1_B], xa, C, LN_EPS);
    const float *mixw[6] = {w[X_R], w[X_W], w[X_K], w[X_V], w[X_A], w[X_G]};
    for (int m = 0; m < 6; m++)
        for (int c = 0; c < C; c++) mix[m * C + c] = xa[c] + (prev[c] - xa[c]) * mixw[m][c];
    memcpy(prev_out, xa, sizeof(float) * C);
    const float *xr = mix, *xw = mix + C, *xk = mix + 2 * C, *xv = mix + 3 * C;
    const float *xa_ = mix + 4 * C, *xg = mix + 5 * C;
    gemv_rows(w[RECEPTANCE], xr, r, C, C, 0);
    gemv_rows(w[KEY], xk, k, C, C, 0);
    gemv_rows(w[VALUE], xv, v, C, C, 0);
    gemv_cols(w[W1], xw, hid, C, d->Dw);
    for (int j = 0; j < d->Dw; j++) hid[j] = tanhf(hid[j]);
    gemv_cols(w[W2], hid, dd, d->Dw, C);
    gemv_cols(w[A1], xa_, hid, C, d->Da);
    gemv_cols(w[A2], hid, a, d->Da, C);
    gemv_cols(w[G1], xg, hid, C, d->Dg);
    for (int j = 0; j < d->Dg; j++) hid[j] = sigmoidf(hid[j]);
    gemv_cols(w[G2], hid, g, d->Dg, C);
    for (int c = 0; c < C; c++) {
        a[c] = sigmoidf(w[A0][c] + a[c]);
        kk[c] = k[c] * w[K_K][c];
    }
    for (int h = 0; h < H; h++) {  /* removal key: unit length per head */
        float ss = 0.f;
        for (int n = 0; n < N; n++) ss += kk[h * N + n] * kk[h * N + n];
        float inv = 1.f / fmaxf(sqrtf(ss), 1e-12f);
        for (int n = 0; n < N; n++) kk[h * N + n] *= inv;
    }
    for (int c = 0; c < C; c++) k[c] = k[c] * (1.f + (a[c] - 1.f) * w[K_A][c]);
    if (layer == 0) {
        memcpy(v_first, v, sizeof(float) * C);
    } else {  /* value residual toward layer 0's value */
        gemv_cols(w[V1], xv, hid, C, d->Dv);
        gemv_cols(w[V2], hid, tmp, d->Dv, C);
        for (int c = 0; c < C; c++) v[c] += (v_first[c] - v[c]) * sigmoidf(w[V0][c] + tmp[c]);
    }
    for (int c = 0; c < C; c++) dd[c] = expf(-DECAY_SCALE * sigmoidf(w[W0][c] + dd[c]));
    for (int h = 0; h < H; h++) {  /* S' = S diag(w) + (S (-kk)) (kk a)^T + v k^T ; y = S' r */
        const float *wh = dd + h * N, *kh = k + h * N, *kkh = kk + h * N, *ah = a + h * N;
        const float *rh = r + h * N;
        float *bh = tmp;
        for (int n = 0; n < N; n++) bh[n] = kkh[n] * ah[n];
        for (int i = 0; i < N; i++) {
            const float *Si = S + ((size_t)h * N + i) * N;
            float *So = S_out + ((size_t)h * N + i) * N;
            float sa = 0.f, yi = 0.f, vi = v[h * N + i];
#pragma omp simd reduction(+ : sa)
            for (int n = 0; n < N; n++) sa -= Si[n] * kkh[n];
#pragma omp simd reduction(+ : yi)
            for (int n = 0; n < N; n++) {
                So[n] = Si[n] * wh[n] + sa * bh[n] + vi * kh[n];
                yi += So[n] * rh[n];
            }
            y[h * N + i] = yi;
        }
    }
    for (int h = 0; h < H; h++) {  /* group norm per head, then the r.k bonus */
        float *yh = y + h * N, mean = 0.f, var = 0.f, bonus = 0.f;
        for (int n = 0; n < N; n++) mean += yh[n];
        mean /= N;
        for (int n = 0; n < N; n++) { float t = yh[n] - mean; var += t * t; }
        float inv = 1.f / sqrtf(var / N + GN_EPS);
        for (int n = 0; n < N; n++) bonus += r[h * N + n] * k[h * N + n] * w[R_K][h * N + n];
        for (int n = 0; n < N; n++) {
            int c = h * N + n;
            yh[n] = ((yh[n] - mean) * inv * w[LNX_W][c] + w[LNX_B][c] + bonus * v[c]) * g[c];
        }
    }
    gemv_rows(w[OUTPUT], y, x, C, C, 1);
}

static void channel_mix(const Dims *d, const float *const *w, float *x, const float *prev,
                        float *prev_out, float *buf) {
    const int C = d->C, F = d->F;
    float *xf = buf, *kx = xf + C, *hid = kx + C;
    layer_norm(x, w[LN2_W], w[LN2_B], xf, C, LN_EPS);
    for (int c = 0; c < C; c++) kx[c] = xf[c] + (prev[c] - xf[c]) * w[FFN_X_K][c];
    memcpy(prev_out, xf, sizeof(float) * C);
    gemv_rows(w[FFN_KEY], kx, hid, F, C, 0);
    for (int j = 0; j < F; j++) { float t = hid[j] > 0.f ? hid[j] : 0.f; hid[j] = t * t; }
    gemv_rows(w[FFN_VALUE], hid, x, C, F, 1);
}

/* x_in (B, C): embedded input before ln0. States (L, B, ...) in and out. out (B, n_out).
 * dims: C, H, N, L, F, Dw, Da, Dv, Dg, n_out. Returns 0, or -1 if memory ran out. */
int rwkv7_step(int B, const int *dims, const float *const *layer_w, const float *const *glob,
               const float *x_in, const float *att_in, const float *wkv_in, const float *ffn_in,
               float *att_out, float *wkv_out, float *ffn_out, float *out) {
    Dims d = {dims[0], dims[1], dims[2], dims[4], dims[5], dims[6], dims[7], dims[8], 0};
    const int L = dims[3], n_out = dims[9], C = d.C;
    const size_t SN = (size_t)d.H * d.N * d.N;
    d.Dmax = d.Dw > d.Da ? d.Dw : d.Da;
    d.Dmax = d.Dmax > d.Dv ? d.Dmax : d.Dv;
    d.Dmax = d.Dmax > d.Dg ? d.Dmax : d.Dg;
    /* time mix needs 16C + Dmax floats (tmp holds max(C, N) = C), channel mix 2C + F */
    size_t need_tm = (size_t)16 * C + d.Dmax, need_cm = (size_t)2 * C + d.F;
    size_t nbuf = need_tm > need_cm ? need_tm : need_cm;
    float *buf = malloc(sizeof(float) * nbuf), *x = malloc(sizeof(float) * 3 * C);
    if (!buf || !x) { free(buf); free(x); return -1; }
    float *v_first = x + C, *xn = x + 2 * C;
    for (int b = 0; b < B; b++) {
        layer_norm(x_in + (size_t)b * C, glob[LN0_W], glob[LN0_B], x, C, LN_EPS);
        for (int i = 0; i < L; i++) {
            const float *const *w = layer_w + (size_t)i * LAYER_PTRS;
            size_t row = ((size_t)i * B + b);
            time_mix(&d, w, i, x, att_in + row * C, att_out + row * C, wkv_in + row * SN,
                     wkv_out + row * SN, v_first, buf);
            channel_mix(&d, w, x, ffn_in + row * C, ffn_out + row * C, buf);
        }
        layer_norm(x, glob[LNOUT_W], glob[LNOUT_B], xn, C, LN_EPS);
        gemv_rows(glob[HEAD], xn, out + (size_t)b * n_out, n_out, C, 0);
    }
    free(buf);
    free(x);
    return 0;
}
