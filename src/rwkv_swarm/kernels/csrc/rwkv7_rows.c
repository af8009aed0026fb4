/* One RWKV-7 token step for R independent rows, each row its own member of a population.
 *
 * Why: a population step in PyTorch is ~100 dispatched ops per layer whatever the batch, and
 * its low-rank terms another ~15 per perturbed matrix; at 32 mutants of a C=64 model that
 * overhead is all of the step. Here the whole step is one call, and it is a GEMM-shaped one:
 *   - rows run in tiles; a tile goes through every layer with its activations in L2, and each
 *     weight block is applied to a group of rows held in registers (a small GEMM micro-kernel
 *     over packed, transposed weights: W^T (in, ld), ld = out rounded up to a vector);
 *   - row b is member[b] of the population (pair member[b] / 2, sign + for even members): its
 *     low-rank terms s sigma (x . left_p) right_p are added right after each shared product,
 *     and a perturbed vector is read from a per-member table (pointer + member * stride);
 *   - no row's arithmetic depends on the other rows, on the tile or group it falls in, or on
 *     the thread that runs it, so a batch compacted to its live rows gives those rows the very
 *     same bits (the rollout relies on it; tests compare bitwise);
 *   - a team of threads splits the tiles: no barriers at all.
 * The math is that of model.py and rwkv7_step.c; tests compare against materialised mutants.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "rows.h"
#include "team.h"
#include "vmath.h"

/* Matrices per layer and after the layers, in the order of native_rows.py. */
enum { M_R, M_K, M_V, M_O, M_W1, M_W2, M_A1, M_A2, M_V1, M_V2, M_G1, M_G2, M_FK, M_FV, NMAT };
enum { G_ENC, G_HEAD, NGMAT };
/* Vectors per layer and after the layers, in the order of native_rows.py. */
enum { V_LN1W, V_LN1B, V_LN2W, V_LN2B, V_XR, V_XW, V_XK, V_XV, V_XA, V_XG, V_W0, V_A0, V_V0,
       V_KK, V_KA, V_RK, V_LNXW, V_LNXB, V_FXK, NVEC };
enum { GV_LN0W, GV_LN0B, GV_LNOW, GV_LNOB, GV_ENCB, NGVEC };

/* The micro-kernel holds RB rows x NVMAX output vectors in registers (at most 12 x 4). */
#ifndef RB
#if VW == 16
#define RB 6
#define NVMAX 4
#else
#define RB 6
#define NVMAX 2
#endif
#endif


/* A tile's activations, each (tile, ld) with ld = C rounded up to a vector unless noted. */
typedef struct {
    int ldc, ldf, ldd[4], ldo;
    float *x, *xa, *mix[6], *r, *k, *v, *dd, *a, *g, *vr, *kk, *y, *vfirst, *kx;
    float *hid, *h[4], *o;  /* (tile, ldf), (tile, ldd[j]), (tile, ldo) */
} Tile;

/* Activation rows and packed weight rows are padded to 16 floats (native_rows.VW), a whole
 * number of vectors with or without AVX-512. */
static int pad(int n) { return (n + 15) / 16 * 16; }

static size_t tile_floats(const Rows *s) {
    size_t per_row = 19 * (size_t)pad(s->C) + pad(s->F) + pad(s->n_out);
    for (int j = 0; j < 4; j++) per_row += pad(s->D[j]);
    return per_row * s->tile;
}

static Tile tile_for(const Rows *s, float *p) {
    Tile t;
    const size_t n = s->tile;
    t.ldc = pad(s->C), t.ldf = pad(s->F), t.ldo = pad(s->n_out);
    float **named[] = {&t.x, &t.xa, &t.r, &t.k, &t.v, &t.dd, &t.a, &t.g, &t.vr, &t.kk, &t.y,
                       &t.vfirst, &t.kx};
    for (int i = 0; i < 13; i++, p += n * t.ldc) *named[i] = p;
    for (int m = 0; m < 6; m++, p += n * t.ldc) t.mix[m] = p;
    t.hid = p, p += n * t.ldf;
    for (int j = 0; j < 4; j++) t.ldd[j] = pad(s->D[j]), t.h[j] = p, p += n * t.ldd[j];
    t.o = p;
    return t;
}

/* Vector `idx` as row b's member sees it. */
static inline const float *vec(const Rows *s, int idx, int b) {
    const int m = s->member[b];
    return s->vp[idx] + (m > 0 ? (size_t)m * s->vs[idx] : 0);
}

/* Y[b][o, o + NV VW) (+)= sum_i X[b][i] W[i][o, ...) for NB rows. Every output element is
 * one running sum over i in order, whatever NB and NV: the same bits for a row in any group. */
static inline __attribute__((always_inline)) void mm_block(
    const float *restrict W, int in, int ld, int o, const float *restrict X, int ldx,
    float *restrict Y, int ldy, int acc, const int NB, const int NV) {
    vf sum[RB][NVMAX];
    for (int b = 0; b < NB; b++)
        for (int q = 0; q < NV; q++)
            sum[b][q] = acc ? vload(Y + (size_t)b * ldy + o + q * VW) : (vf){0};
    for (int i = 0; i < in; i++) {
        const float *w = W + (size_t)i * ld + o;
        vf wq[NVMAX];
        for (int q = 0; q < NV; q++) wq[q] = vload(w + q * VW);
        for (int b = 0; b < NB; b++) {
            const vf xb = vbcast(X + (size_t)b * ldx + i);
            for (int q = 0; q < NV; q++) sum[b][q] += xb * wq[q];
        }
    }
    for (int b = 0; b < NB; b++)
        for (int q = 0; q < NV; q++) vstore(Y + (size_t)b * ldy + o + q * VW, sum[b][q]);
}

/* Every (rows, vectors) shape as constants: NB <= RB rows, NV <= NVMAX vectors (a case past
 * the limits is never taken; its constant is clamped so that it still compiles). */
#define MM_ARGS W, in, ld, o, Xb, ldx, Yb, ldy, acc
#define MM_NV(NB)                                                                         \
    switch (nv) {                                                                         \
    case 1: mm_block(MM_ARGS, NB, 1); break;                                              \
    case 2: mm_block(MM_ARGS, NB, 2 <= NVMAX ? 2 : 1); break;                             \
    case 3: mm_block(MM_ARGS, NB, 3 <= NVMAX ? 3 : 1); break;                             \
    default: mm_block(MM_ARGS, NB, 4 <= NVMAX ? 4 : 1); break;                            \
    }
#define MM_CASE(K) case K: MM_NV(K < RB ? K : 1) break;

/* The shared product for nb rows, then each row's low-rank terms. acc: Y += instead of =. */
static void mm(const Rows *s, const Mat *m, const float *X, int ldx, float *Y, int ldy, int nb,
               const int *member, int acc) {
    const float *W = m->w;
    const int in = m->in, ld = m->ld;
    for (int o = 0; o < ld; o += NVMAX * VW) {
        const int nv = (ld - o) / VW < NVMAX ? (ld - o) / VW : NVMAX;
        int b = 0;
        for (; b + RB <= nb; b += RB) {
            const float *Xb = X + (size_t)b * ldx;
            float *Yb = Y + (size_t)b * ldy;
            MM_NV(RB)
        }
        if (b < nb) {
            const float *Xb = X + (size_t)b * ldx;
            float *Yb = Y + (size_t)b * ldy;
            switch (nb - b) {
                MM_CASE(1) MM_CASE(2) MM_CASE(3) MM_CASE(4) MM_CASE(5) MM_CASE(6) MM_CASE(7)
                MM_CASE(8) MM_CASE(9) MM_CASE(10) MM_CASE(11)
            }
        }
    }
    if (!m->left) return;
    for (int b = 0; b < nb; b++) {
        const int mem = member[b];
        if (mem < 0) continue;
        const size_t p = (size_t)(mem >> 1) * s->rank;
        const float sc = mem & 1 ? -s->sigma : s->sigma;
        const float *x = X + (size_t)b * ldx;
        float *y = Y + (size_t)b * ldy;
        for (int j = 0; j < s->rank; j++) {
            const float z = sc * dot(x, m->left + (p + j) * in, in);
            const float *rt = m->right + (p + j) * m->out;
            for (int c = 0; c < m->out; c++) y[c] += z * rt[c];
        }
    }
}

static void norm_rows(const Rows *s, const float *X, float *Y, int ld, int nb, int b0, int wi,
                      int bi) {
    for (int b = 0; b < nb; b++)
        layer_norm_v(X + (size_t)b * ld, vec(s, wi, b0 + b), vec(s, bi, b0 + b),
                     Y + (size_t)b * ld, s->C);
}

/* ln1, the six mixes and the new token-shift state for the tile's rows. */
static void tm_inputs(const Rows *s, const Tile *t, int i, int b0, int nb) {
    const int C = s->C, V = i * NVEC;
    const float *x = t->x;
    norm_rows(s, x, t->xa, t->ldc, nb, b0, V + V_LN1W, V + V_LN1B);
    for (int b = 0; b < nb; b++) {
        const size_t row = (size_t)i * s->R + b0 + b;
        const float *prev = s->att_in + row * C, *xa = t->xa + (size_t)b * t->ldc;
        for (int m = 0; m < 6; m++) {
            const float *mw = vec(s, V + V_XR + m, b0 + b);
            float *o = t->mix[m] + (size_t)b * t->ldc;
            for (int c = 0; c < C; c++) o[c] = xa[c] + (prev[c] - xa[c]) * mw[c];
        }
        memcpy(s->att_out + row * C, xa, sizeof(float) * C);  /* after prev is read: in place ok */
    }
}

/* The time mix's products: r, k, v, and the four LoRAs (w, a, v residual, g). */
static void tm_products(const Rows *s, const Tile *t, int i, int b0, int nb) {
    const Mat *M = s->mat + (size_t)i * NMAT;
    const int *mem = s->member + b0, ldc = t->ldc;
    mm(s, &M[M_R], t->mix[0], ldc, t->r, ldc, nb, mem, 0);
    mm(s, &M[M_K], t->mix[2], ldc, t->k, ldc, nb, mem, 0);
    mm(s, &M[M_V], t->mix[3], ldc, t->v, ldc, nb, mem, 0);
    const int mixes[4] = {1, 4, 3, 5}, first[4] = {M_W1, M_A1, M_V1, M_G1};
    float *outs[4] = {t->dd, t->a, t->vr, t->g};
    for (int j = 0; j < 4; j++) {
        if (j == 2 && i == 0) continue;  /* layer 0 has no value residual */
        mm(s, &M[first[j]], t->mix[mixes[j]], ldc, t->h[j], t->ldd[j], nb, mem, 0);
        float *h = t->h[j];
        if (j == 0 || j == 3)  /* whole padded rows: the padding is zero and never read */
            for (size_t e = 0; e < (size_t)nb * t->ldd[j]; e += VW)
                vstore(h + e, j == 0 ? vtanh(vload(h + e)) : vsigmoid(vload(h + e)));
        mm(s, &M[first[j] + 1], h, t->ldd[j], outs[j], ldc, nb, mem, 0);
    }
}

/* Row b of the tile: a, kk, k, the value residual and the decay, channels [c, c + m). */
static inline void tm_channels(const Rows *s, const Tile *t, int i, int gb, size_t o, int c,
                               int m) {
    const int V = i * NVEC;
    float *a = t->a + o + c, *k = t->k + o + c, *kk = t->kk + o + c, *v = t->v + o + c;
    float *dd = t->dd + o + c, *vr = t->vr + o + c;
    const vf av = vsigmoid(vload_n(vec(s, V + V_A0, gb) + c, m) + vload_n(a, m));
    const vf kv = vload_n(k, m), k_a = vload_n(vec(s, V + V_KA, gb) + c, m);
    vstore_n(a, av, m);
    vstore_n(kk, kv * vload_n(vec(s, V + V_KK, gb) + c, m), m);
    vstore_n(k, kv * (vset(1.f) + (av - vset(1.f)) * k_a), m);
    if (i == 0) {
        vstore_n(t->vfirst + o + c, vload_n(v, m), m);
    } else {
        const vf vv = vload_n(v, m), nu = vsigmoid(vload_n(vec(s, V + V_V0, gb) + c, m)
                                                   + vload_n(vr, m));
        vstore_n(v, vv + (vload_n(t->vfirst + o + c, m) - vv) * nu, m);
    }
    const vf d = vload_n(vec(s, V + V_W0, gb) + c, m) + vload_n(dd, m);
    vstore_n(dd, vexp(vset(-DECAY_SCALE) * vsigmoid(d)), m);
}

/* Row b of the tile: the per-channel terms, then every head's WKV, group norm, r.k bonus
 * and gate into y. */
static void tm_row(const Rows *s, const Tile *t, int i, int b0, int b) {
    const int C = s->C, N = s->N, V = i * NVEC, gb = b0 + b;
    const size_t o = (size_t)b * t->ldc;
    for (int c = 0; c < C; c += VW) tm_channels(s, t, i, gb, o, c, C - c < VW ? C - c : VW);
    float *a = t->a + o, *k = t->k + o, *kk = t->kk + o, *v = t->v + o, *dd = t->dd + o;
    float *y = t->y + o, *r = t->r + o, *g = t->g + o, *bh = t->vr + o;  /* vr is spent */
    for (int h0 = 0; h0 < C; h0 += N) {  /* removal key: unit length per head */
        vf ss = {0};
        for (int n = 0; n < N; n += VW) {
            const vf x = vload_n(kk + h0 + n, N - n < VW ? N - n : VW);
            ss += x * x;
        }
        const float inv = 1.f / fmaxf(sqrtf(vsum(ss)), 1e-12f);
        for (int n = 0; n < N; n++) kk[h0 + n] *= inv;
    }
    for (int c = 0; c < C; c++) bh[c] = kk[c] * a[c];
    const float *r_k = vec(s, V + V_RK, gb), *lw = vec(s, V + V_LNXW, gb);
    const float *lb = vec(s, V + V_LNXB, gb);
    const size_t SN = (size_t)s->H * N * N, row = (size_t)i * s->R + gb;
    for (int h0 = 0; h0 < C; h0 += N) {
        const size_t off = row * SN + (size_t)h0 * N;
        wkv_head_v(s->wkv_in + off, s->wkv_out + off, N, dd + h0, kk + h0, bh + h0, k + h0,
                  v + h0, r + h0, y + h0);
        float mean, inv;
        moments(y + h0, N, GN_EPS, &mean, &inv);
        vf bs = {0};
        for (int n = 0; n < N; n += VW) {
            const int m = N - n < VW ? N - n : VW;
            bs += vload_n(r + h0 + n, m) * vload_n(k + h0 + n, m) * vload_n(r_k + h0 + n, m);
        }
        const float bonus = vsum(bs);
        for (int c = h0; c < h0 + N; c++)
            y[c] = ((y[c] - mean) * inv * lw[c] + lb[c] + bonus * v[c]) * g[c];
    }
}

/* ln2, the shifted FFN input, the FFN, and the residual. */
static void channel_mix(const Rows *s, const Tile *t, int i, int b0, int nb) {
    const Mat *M = s->mat + (size_t)i * NMAT;
    const int C = s->C, V = i * NVEC, *mem = s->member + b0, ldc = t->ldc;
    norm_rows(s, t->x, t->xa, ldc, nb, b0, V + V_LN2W, V + V_LN2B);
    for (int b = 0; b < nb; b++) {
        const size_t row = (size_t)i * s->R + b0 + b;
        const float *prev = s->ffn_in + row * C, *xf = t->xa + (size_t)b * ldc;
        const float *xk = vec(s, V + V_FXK, b0 + b);
        float *kx = t->kx + (size_t)b * ldc;
        for (int c = 0; c < C; c++) kx[c] = xf[c] + (prev[c] - xf[c]) * xk[c];
        memcpy(s->ffn_out + row * C, xf, sizeof(float) * C);
    }
    mm(s, &M[M_FK], t->kx, ldc, t->hid, t->ldf, nb, mem, 0);
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < s->F; j++) {
            float *e = t->hid + (size_t)b * t->ldf + j;
            const float u = *e > 0.f ? *e : 0.f;
            *e = u * u;
        }
    mm(s, &M[M_FV], t->hid, t->ldf, t->x, ldc, nb, mem, 1);
}

/* The whole step for rows [b0, b0 + nb). */
static void run_tile(const Rows *s, const Tile *t, int b0, int nb) {
    const int C = s->C, *mem = s->member + b0, ldc = t->ldc;
    const Mat *G = s->mat + (size_t)s->L * NMAT;
    const int GV = s->L * NVEC;
    if (s->in0 > 0) {  /* control mode: the encoder and its bias */
        mm(s, &G[G_ENC], s->x_in + (size_t)b0 * s->in0, s->in0, t->xa, ldc, nb, mem, 0);
        for (int b = 0; b < nb; b++) {
            const float *bias = vec(s, GV + GV_ENCB, b0 + b);
            for (int c = 0; c < C; c++) t->xa[(size_t)b * ldc + c] += bias[c];
        }
    } else {
        for (int b = 0; b < nb; b++)
            memcpy(t->xa + (size_t)b * ldc, s->x_in + (size_t)(b0 + b) * C, sizeof(float) * C);
    }
    norm_rows(s, t->xa, t->x, ldc, nb, b0, GV + GV_LN0W, GV + GV_LN0B);
    for (int i = 0; i < s->L; i++) {
        tm_inputs(s, t, i, b0, nb);
        tm_products(s, t, i, b0, nb);
        for (int b = 0; b < nb; b++) tm_row(s, t, i, b0, b);
        mm(s, &s->mat[(size_t)i * NMAT + M_O], t->y, ldc, t->x, ldc, nb, mem, 1);
        channel_mix(s, t, i, b0, nb);
    }
    norm_rows(s, t->x, t->xa, ldc, nb, b0, GV + GV_LNOW, GV + GV_LNOB);
    mm(s, &G[G_HEAD], t->xa, ldc, t->o, t->ldo, nb, mem, 0);
    for (int b = 0; b < nb; b++)
        memcpy(s->out + (size_t)(b0 + b) * s->n_out, t->o + (size_t)b * t->ldo,
               sizeof(float) * s->n_out);
}

static void rows_thread(void *arg, int tid, Team *team) {
    const Rows *s = arg;
    const Tile t = tile_for(s, s->scratch + s->per_thread * tid);
    const int tiles = (s->R + s->tile - 1) / s->tile;
    int lo, hi;
    team_split(tiles, tid, team->n, 1, &lo, &hi);
    for (int q = lo; q < hi; q++) {
        const int b0 = q * s->tile, nb = s->R - b0 < s->tile ? s->R - b0 : s->tile;
        run_tile(s, &t, b0, nb);
    }
}

/* Prepares row steps of up to `cap` rows. dims: C, H, N, L, F, Dw, Da, Dv, Dg, n_out, in0 (0:
 * x_in is already embedded, (R, C)), rank, tile. mats: 3 pointers (packed W^T, left, right)
 * per matrix and mat_dims: (in, out, ld) per matrix, L * NMAT + NGMAT of them. vecs /
 * vec_strides: L * NVEC + NGVEC. Returns 0, or -1 when memory ran out (nothing to free). */
int rows_prepare(Rows *s, int cap, const int *dims, const void *const *mats,
                 const int *mat_dims, const float *const *vecs, const int64_t *vec_strides,
                 float sigma, int threads) {
    *s = (Rows){.C = dims[0], .H = dims[1], .N = dims[2], .L = dims[3], .F = dims[4],
                .D = {dims[5], dims[6], dims[7], dims[8]}, .n_out = dims[9], .in0 = dims[10],
                .rank = dims[11], .tile = dims[12], .sigma = sigma, .vp = vecs,
                .vs = vec_strides};
    if (cap < 1) cap = 1;
    s->tile0 = (s->tile + RB - 1) / RB * RB;  /* whole groups of rows */
    s->tile = s->tile0 > cap ? cap : s->tile0;
    const int n_mat = s->L * NMAT + NGMAT, tiles = (cap + s->tile - 1) / s->tile;
    Mat *mat = malloc(sizeof(Mat) * n_mat);
    if (!mat) return -1;
    for (int j = 0; j < n_mat; j++)
        mat[j] = (Mat){mats[3 * j], mats[3 * j + 1], mats[3 * j + 2], mat_dims[3 * j],
                       mat_dims[3 * j + 1], mat_dims[3 * j + 2]};
    s->mat = mat;
    s->threads = team_size(threads < tiles ? threads : tiles);
    s->per_thread = tile_floats(s);
    s->scratch = floats_aligned(s->per_thread * s->threads, 1);
    if (!s->scratch) {
        free(mat);
        return -1;
    }
    return 0;
}

/* R <= cap rows, one token each; states (L, R, ...) in and out may be the same memory. */
void rows_run(Rows *s, int R, const int *member, const float *x_in, const float *att_in,
              const float *wkv_in, const float *ffn_in, float *att_out, float *wkv_out,
              float *ffn_out, float *out) {
    if (R <= 0) return;
    s->R = R, s->member = member, s->x_in = x_in, s->out = out;
    s->att_in = att_in, s->wkv_in = wkv_in, s->ffn_in = ffn_in;
    s->att_out = att_out, s->wkv_out = wkv_out, s->ffn_out = ffn_out;
    s->tile = s->tile0 > R ? R : s->tile0;  /* within the scratch: tile0 or cap rows, at most */
    const int tiles = (R + s->tile - 1) / s->tile;
    team_run(s->threads < tiles ? s->threads : tiles, rows_thread, s);
}

void rows_release(Rows *s) {
    free(s->scratch);
    free((void *)s->mat);
    s->scratch = NULL, s->mat = NULL;
}

/* R rows, one token each (rows_prepare's arguments, then rows_run's). Returns 0, or -1 when
 * memory ran out. */
int rwkv7_rows(int R, const int *dims, const void *const *mats, const int *mat_dims,
               const float *const *vecs, const int64_t *vec_strides, const int *member,
               float sigma, const float *x_in, const float *att_in, const float *wkv_in,
               const float *ffn_in, float *att_out, float *wkv_out, float *ffn_out, float *out,
               int threads) {
    Rows s;
    if (R <= 0) return 0;
    if (rows_prepare(&s, R, dims, mats, mat_dims, vecs, vec_strides, sigma, threads)) return -1;
    rows_run(&s, R, member, x_in, att_in, wkv_in, ffn_in, att_out, wkv_out, ffn_out, out);
    rows_release(&s);
    return 0;
}
