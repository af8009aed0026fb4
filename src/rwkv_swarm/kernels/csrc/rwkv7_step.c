/* One RWKV-7 ("x070") token step for a small batch on the CPU, in plain C.
 *
 * Why: at batch 1 a step of a small model is ~1 MFLOP; in PyTorch it is ~110 dispatched ops
 * per layer at 2-5 us each. Here a whole step is one call. A large model's step is instead
 * memory-bound (every weight streamed once per step), so:
 *   - every row of the batch is applied to a weight while it is in cache: weights are read
 *     once per step, not once per row;
 *   - a team of threads splits the step (team.h): each thread owns a range of heads for the
 *     time mix, and a range of output rows for the other matrices, with four barriers per
 *     layer. Which thread count is fastest is measured per CPU and model (paths.py).
 * The math is the same as rwkv_swarm/kernels/model.py (and BlinkDL's reference); tests compare.
 *
 * Weights are read in place from the model's fp32 parameters (PyTorch layouts):
 *   rows: W[out][in] (nn.Linear), y = W x        cols: W[in][out] (LoRA w1..g2), y = x W
 * Per layer, w[] holds LAYER_PTRS pointers in the order of the enum below.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "team.h"

enum { LN1_W, LN1_B, LN2_W, LN2_B, X_R, X_W, X_K, X_V, X_A, X_G, W0, W1, W2, A0, A1, A2,
       V0, V1, V2, G1, G2, K_K, K_A, R_K, RECEPTANCE, KEY, VALUE, OUTPUT, LNX_W, LNX_B,
       FFN_X_K, FFN_KEY, FFN_VALUE, LAYER_PTRS };
enum { LN0_W, LN0_B, LNOUT_W, LNOUT_B, HEAD, GLOBAL_PTRS };
enum { MR, MW, MK, MV, MA, MG };  /* the six time-mix inputs */

typedef struct {
    int B, C, H, N, L, F, D[4], n_out;  /* D: LoRA ranks w, a, v, g */
    const float *const *lw, *const *gw;
    const float *x_in, *att_in, *wkv_in, *ffn_in;
    float *att_out, *wkv_out, *ffn_out, *out;
    float *x, *v_first, *y, *hid;  /* shared by the team: (B, C) x3, (B, F) */
    float *scratch;                /* per thread: SCRATCH(B, C, D) floats */
    size_t per_thread;
} Step;

typedef struct {  /* one thread's scratch, each (B, C) unless noted */
    float *xa, *mix[6], *r, *k, *v, *dd, *a, *g, *kk, *tmp, *xf, *kx;
    float *hid[4];  /* LoRA hidden, (B, D[j]) */
} Scratch;

static size_t scratch_floats(int B, int C, const int *D) {
    return (size_t)B * (17 * (size_t)C + D[0] + D[1] + D[2] + D[3]);
}

static Scratch scratch_for(const Step *s, int tid) {
    Scratch sc;
    size_t BC = (size_t)s->B * s->C;
    float *p = s->scratch + s->per_thread * tid;
    float **named[] = {&sc.xa, &sc.r, &sc.k, &sc.v, &sc.dd, &sc.a, &sc.g, &sc.kk, &sc.tmp,
                       &sc.xf, &sc.kx};
    for (int i = 0; i < 11; i++, p += BC) *named[i] = p;
    for (int m = 0; m < 6; m++, p += BC) sc.mix[m] = p;
    for (int j = 0; j < 4; j++) {
        sc.hid[j] = p;
        p += (size_t)s->B * s->D[j];
    }
    return sc;
}

/* Time mix before the heads, for every row: ln1, the six mixes, the LoRAs' hidden layers.
 * Every thread computes these in full (cheap, and it saves a barrier). */
static void tm_prepare(const Step *s, Scratch *sc, const float *const *w, int layer, int tid) {
    const int B = s->B, C = s->C;
    const float *mixw[6] = {w[X_R], w[X_W], w[X_K], w[X_V], w[X_A], w[X_G]};
    for (int b = 0; b < B; b++) {
        const float *prev = s->att_in + ((size_t)layer * B + b) * C;
        float *xa = sc->xa + (size_t)b * C;
        layer_norm(s->x + (size_t)b * C, w[LN1_W], w[LN1_B], xa, C, LN_EPS);
        for (int m = 0; m < 6; m++) {
            float *o = sc->mix[m] + (size_t)b * C;
            for (int c = 0; c < C; c++) o[c] = xa[c] + (prev[c] - xa[c]) * mixw[m][c];
        }
        if (tid == 0) memcpy(s->att_out + ((size_t)layer * B + b) * C, xa, sizeof(float) * C);
    }
    const int mixes[4] = {MW, MA, MV, MG}, firsts[4] = {W1, A1, V1, G1};
    for (int j = 0; j < 4; j++) {
        if (j == 2 && layer == 0) continue;  /* layer 0 has no value residual */
        gemv_cols(w[firsts[j]], s->D[j], C, sc->mix[mixes[j]], C, sc->hid[j], s->D[j], B, 0,
                  s->D[j]);
    }
    for (size_t i = 0; i < (size_t)B * s->D[0]; i++) sc->hid[0][i] = tanhf(sc->hid[0][i]);
    for (size_t i = 0; i < (size_t)B * s->D[3]; i++) sc->hid[3][i] = sigmoidf(sc->hid[3][i]);
}

/* Per-channel terms of channels [c0, c1) of row b: a, kk (unit per head), k, v residual, w. */
static void tm_channels(const Step *s, Scratch *sc, const float *const *w, int layer, int b,
                        int c0, int c1) {
    const int C = s->C, N = s->N;
    float *a = sc->a + (size_t)b * C, *k = sc->k + (size_t)b * C, *kk = sc->kk + (size_t)b * C;
    float *v = sc->v + (size_t)b * C, *dd = sc->dd + (size_t)b * C;
    float *vf = s->v_first + (size_t)b * C, *tmp = sc->tmp + (size_t)b * C;
    for (int c = c0; c < c1; c++) {
        a[c] = sigmoidf(w[A0][c] + a[c]);
        kk[c] = k[c] * w[K_K][c];
    }
    for (int h0 = c0; h0 < c1; h0 += N) {  /* removal key: unit length per head */
        float ss = 0.f;
        for (int n = 0; n < N; n++) ss += kk[h0 + n] * kk[h0 + n];
        float inv = 1.f / fmaxf(sqrtf(ss), 1e-12f);
        for (int n = 0; n < N; n++) kk[h0 + n] *= inv;
    }
    for (int c = c0; c < c1; c++) k[c] = k[c] * (1.f + (a[c] - 1.f) * w[K_A][c]);
    if (layer == 0) {
        memcpy(vf + c0, v + c0, sizeof(float) * (c1 - c0));
    } else {  /* value residual toward layer 0's value */
        for (int c = c0; c < c1; c++) v[c] += (vf[c] - v[c]) * sigmoidf(w[V0][c] + tmp[c]);
    }
    for (int c = c0; c < c1; c++) dd[c] = expf(-DECAY_SCALE * sigmoidf(w[W0][c] + dd[c]));
}

/* Heads [c0/N, c1/N) of row b: the WKV recurrence, group norm, r.k bonus and gate into y. */
static void tm_wkv(const Step *s, Scratch *sc, const float *const *w, int layer, int b, int c0,
                   int c1) {
    const int C = s->C, N = s->N;
    const size_t row = (size_t)layer * s->B + b, SN = (size_t)s->H * N * N;
    const float *r = sc->r + (size_t)b * C, *k = sc->k + (size_t)b * C;
    const float *kk = sc->kk + (size_t)b * C, *a = sc->a + (size_t)b * C;
    const float *v = sc->v + (size_t)b * C, *dd = sc->dd + (size_t)b * C;
    const float *g = sc->g + (size_t)b * C;
    float *y = s->y + (size_t)b * C, *bh = sc->tmp + (size_t)b * C;
    for (int c = c0; c < c1; c++) bh[c] = kk[c] * a[c];
    for (int h0 = c0; h0 < c1; h0 += N) {
        const size_t off = row * SN + (size_t)h0 * N;
        wkv_head(s->wkv_in + off, s->wkv_out + off, N, dd + h0, kk + h0, bh + h0, k + h0,
                 v + h0, r + h0, y + h0);
        float mean = 0.f, var = 0.f, bonus = 0.f;
        for (int n = 0; n < N; n++) mean += y[h0 + n];
        mean /= N;
        for (int n = 0; n < N; n++) { float t = y[h0 + n] - mean; var += t * t; }
        float inv = 1.f / sqrtf(var / N + GN_EPS);
        for (int n = 0; n < N; n++) bonus += r[h0 + n] * k[h0 + n] * w[R_K][h0 + n];
        for (int c = h0; c < h0 + N; c++)
            y[c] = ((y[c] - mean) * inv * w[LNX_W][c] + w[LNX_B][c] + bonus * v[c]) * g[c];
    }
}

/* Time mix of this thread's heads, every row; writes y's channels [c0, c1). */
static void tm_heads(const Step *s, Scratch *sc, const float *const *w, int layer, int c0,
                     int c1) {
    const int B = s->B, C = s->C;
    gemv_rows(w[RECEPTANCE], C, sc->mix[MR], C, sc->r, C, B, c0, c1, 0);
    gemv_rows(w[KEY], C, sc->mix[MK], C, sc->k, C, B, c0, c1, 0);
    gemv_rows(w[VALUE], C, sc->mix[MV], C, sc->v, C, B, c0, c1, 0);
    gemv_cols(w[W2], C, s->D[0], sc->hid[0], s->D[0], sc->dd, C, B, c0, c1);
    gemv_cols(w[A2], C, s->D[1], sc->hid[1], s->D[1], sc->a, C, B, c0, c1);
    gemv_cols(w[G2], C, s->D[3], sc->hid[3], s->D[3], sc->g, C, B, c0, c1);
    if (layer > 0) gemv_cols(w[V2], C, s->D[2], sc->hid[2], s->D[2], sc->tmp, C, B, c0, c1);
    for (int b = 0; b < B; b++) {
        tm_channels(s, sc, w, layer, b, c0, c1);
        tm_wkv(s, sc, w, layer, b, c0, c1);
    }
}

/* ln2 and the channel-mix input for every row; thread 0 also stores the new ffn state. */
static void cm_prepare(const Step *s, Scratch *sc, const float *const *w, int layer, int tid) {
    const int B = s->B, C = s->C;
    for (int b = 0; b < B; b++) {
        const float *prev = s->ffn_in + ((size_t)layer * B + b) * C;
        float *xf = sc->xf + (size_t)b * C, *kx = sc->kx + (size_t)b * C;
        layer_norm(s->x + (size_t)b * C, w[LN2_W], w[LN2_B], xf, C, LN_EPS);
        for (int c = 0; c < C; c++) kx[c] = xf[c] + (prev[c] - xf[c]) * w[FFN_X_K][c];
        if (tid == 0) memcpy(s->ffn_out + ((size_t)layer * B + b) * C, xf, sizeof(float) * C);
    }
}

static void layer(const Step *s, Scratch *sc, int i, int tid, Team *team) {
    const float *const *w = s->lw + (size_t)i * LAYER_PTRS;
    const int B = s->B, C = s->C, F = s->F, nt = team->n;
    int h0, h1, lo, hi;
    team_split(s->H, tid, nt, 1, &h0, &h1);
    tm_prepare(s, sc, w, i, tid);
    tm_heads(s, sc, w, i, h0 * s->N, h1 * s->N);
    team_barrier(team);  /* y complete */
    team_split(C, tid, nt, 16, &lo, &hi);
    gemv_rows(w[OUTPUT], C, s->y, C, s->x, C, B, lo, hi, 1);
    team_barrier(team);  /* x complete */
    cm_prepare(s, sc, w, i, tid);
    team_split(F, tid, nt, 16, &lo, &hi);
    gemv_rows(w[FFN_KEY], C, sc->kx, C, s->hid, F, B, lo, hi, 0);
    for (int b = 0; b < B; b++)
        for (int j = lo; j < hi; j++) {
            float t = s->hid[(size_t)b * F + j];
            t = t > 0.f ? t : 0.f;
            s->hid[(size_t)b * F + j] = t * t;
        }
    team_barrier(team);  /* hidden complete; every thread has read x */
    team_split(C, tid, nt, 16, &lo, &hi);
    gemv_rows(w[FFN_VALUE], F, s->hid, F, s->x, C, B, lo, hi, 1);
    team_barrier(team);  /* x complete */
}

static void step_thread(void *arg, int tid, Team *team) {
    const Step *s = arg;
    Scratch sc = scratch_for(s, tid);
    const int B = s->B, C = s->C;
    int lo, hi;
    if (tid == 0)
        for (int b = 0; b < B; b++)
            layer_norm(s->x_in + (size_t)b * C, s->gw[LN0_W], s->gw[LN0_B], s->x + (size_t)b * C,
                       C, LN_EPS);
    team_barrier(team);
    for (int i = 0; i < s->L; i++) layer(s, &sc, i, tid, team);
    for (int b = 0; b < B; b++)
        layer_norm(s->x + (size_t)b * C, s->gw[LNOUT_W], s->gw[LNOUT_B], sc.xa + (size_t)b * C, C,
                   LN_EPS);
    team_split(s->n_out, tid, team->n, 16, &lo, &hi);
    gemv_rows(s->gw[HEAD], C, sc.xa, C, s->out, s->n_out, B, lo, hi, 0);
}

/* x_in (B, C): embedded input before ln0. States (L, B, ...) in and out. out (B, n_out).
 * dims: C, H, N, L, F, Dw, Da, Dv, Dg, n_out. threads: team size (>= 1).
 * Returns 0, or -1 if memory ran out. */
int rwkv7_step(int B, const int *dims, const float *const *layer_w, const float *const *glob,
               const float *x_in, const float *att_in, const float *wkv_in, const float *ffn_in,
               float *att_out, float *wkv_out, float *ffn_out, float *out, int threads) {
    Step s = {.B = B, .C = dims[0], .H = dims[1], .N = dims[2], .L = dims[3], .F = dims[4],
              .D = {dims[5], dims[6], dims[7], dims[8]}, .n_out = dims[9], .lw = layer_w,
              .gw = glob, .x_in = x_in, .att_in = att_in, .wkv_in = wkv_in, .ffn_in = ffn_in,
              .att_out = att_out, .wkv_out = wkv_out, .ffn_out = ffn_out, .out = out};
    threads = team_size(threads);
    s.per_thread = scratch_floats(B, s.C, s.D);
    size_t shared = (size_t)B * (3 * (size_t)s.C + s.F);
    float *mem = floats_aligned(shared + s.per_thread * threads, 0);
    if (!mem) return -1;
    s.x = mem;
    s.v_first = s.x + (size_t)B * s.C;
    s.y = s.v_first + (size_t)B * s.C;
    s.hid = s.y + (size_t)B * s.C;
    s.scratch = s.hid + (size_t)B * s.F;
    team_run(threads, step_thread, &s);
    free(mem);
    return 0;
}
