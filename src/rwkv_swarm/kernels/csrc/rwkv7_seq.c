/* Native kernels for the batched forward (model.py's run_blocks): the WKV recurrence over a
 * sequence, and the population's low-rank perturbation terms.
 *
 * Why: in PyTorch the chunked WKV form was a third of the forward (C=256, L=4, 1024 rows x
 * 16 tokens): transposes to heads and back, and small batched matmuls. Here each (row, head)
 * runs the token recurrence with its N x N state in L1, reading the projections where they
 * lie. The low-rank terms x B A^T of each mutant were three elementwise passes and a
 * temporary; here they are one pass over x and one over the output.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "team.h"

typedef struct {
    int rows, T, H, N;
    const float *r, *w, *k, *v, *kk, *alr, *S_in;  /* projections (rows, T, H*N) */
    float *S_out, *y;                                  /* (rows, H, N, N), (rows, T, H*N) */
    float *scratch;                                    /* N (N + 1) per thread */
} Wkv;

/* The transposed form pays a transpose in and out per call: worth it from a few tokens on. */
static int transposed(int N, int T) { return N % VW == 0 && N <= 128 && T > 1; }

static void wkv_task(const Wkv *s, int row, int h, float *b, float *ST) {
    const int N = s->N, C = s->H * N, T = s->T;
    const size_t SN = (size_t)N * N, base = (size_t)row * T * C + (size_t)h * N;
    const float *Sin = s->S_in + ((size_t)row * s->H + h) * SN;
    float *S = s->S_out + ((size_t)row * s->H + h) * SN;
    const int tr = transposed(N, T);
    if (tr) transpose(Sin, ST, N);
    else if (S != Sin) memcpy(S, Sin, sizeof(float) * SN);
    for (int t = 0; t < T; t++) {
        const size_t o = base + (size_t)t * C;
        for (int n = 0; n < N; n++) b[n] = s->kk[o + n] * s->alr[o + n];
        if (tr)
            wkv_head_t(ST, N, s->w + o, s->kk + o, b, s->k + o, s->v + o, s->r + o, s->y + o);
        else
            wkv_head(S, S, N, s->w + o, s->kk + o, b, s->k + o, s->v + o, s->r + o, s->y + o);
    }
    if (tr) transpose(ST, S, N);
}

static void wkv_thread(void *arg, int tid, Team *team) {
    const Wkv *s = arg;
    int lo, hi;
    team_split(s->rows * s->H, tid, team->n, 1, &lo, &hi);
    float *b = s->scratch + (size_t)tid * s->N * (s->N + 1);
    for (int task = lo; task < hi; task++) wkv_task(s, task / s->H, task % s->H, b, b + s->N);
}

/* WKV over T tokens for `rows` rows of H heads of size N. Inputs (rows, T, H*N) contiguous:
 * r, decay w, k, v, the removal key kk (unit per head) and its rate alr; the update is
 * S' = S diag(w) + (S (-kk)) (kk alr)^T + v k^T, y = S' r. S_in (rows, H, N, N) may equal
 * S_out. Returns 0, or -1 if memory ran out. */
int rwkv7_wkv(int rows, int T, int H, int N, const float *r, const float *w, const float *k,
              const float *v, const float *kk, const float *alr, const float *S_in,
              float *S_out, float *y, int threads) {
    Wkv s = {rows, T, H, N, r, w, k, v, kk, alr, S_in, S_out, y, NULL};
    int tasks = rows * H;
    threads = team_size(threads < tasks ? threads : tasks);
    s.scratch = floats_aligned((size_t)N * (N + 1) * threads, 0);
    if (!s.scratch) return -1;
    team_run(threads, wkv_thread, &s);
    free(s.scratch);
    return 0;
}

typedef struct {
    int pairs, rows, in, out, rank;  /* rows per pair: both members, + then - */
    const float *x, *left, *right;   /* x (pairs, rows, in); left (pairs, rank, in),
                                        right (pairs, rank, out) */
    float *y, sigma;                 /* y (pairs, rows, out) */
} LowRank;

static void low_rank_pair(const LowRank *s, int p) {
    const float *L = s->left + (size_t)p * s->rank * s->in;
    const float *R = s->right + (size_t)p * s->rank * s->out;
    for (int m = 0; m < s->rows; m++) {
        const float *x = s->x + ((size_t)p * s->rows + m) * s->in;
        float *y = s->y + ((size_t)p * s->rows + m) * s->out;
        const float scale = m < s->rows / 2 ? s->sigma : -s->sigma;
        for (int i = 0; i < s->rank; i++) {
            const float z = scale * dot(x, L + (size_t)i * s->in, s->in);
            const float *Ri = R + (size_t)i * s->out;
#pragma omp simd
            for (int o = 0; o < s->out; o++) y[o] += z * Ri[o];
        }
    }
}

static void low_rank_thread(void *arg, int tid, Team *team) {
    const LowRank *s = arg;
    int lo, hi;
    team_split(s->pairs, tid, team->n, 1, &lo, &hi);
    for (int p = lo; p < hi; p++) low_rank_pair(s, p);
}

/* y[p, m] += s_m sigma sum_i (x[p, m] . left[p, i]) right[p, i] for every pair p and row m:
 * the first half of a pair's rows is its + member, the second half its - member. */
int rwkv7_low_rank(int pairs, int rows, int in, int out, int rank, const float *x,
                   const float *left, const float *right, float *y, float sigma, int threads) {
    LowRank s = {pairs, rows, in, out, rank, x, left, right, y, sigma};
    team_run(threads < pairs ? threads : pairs, low_rank_thread, &s);
    return 0;
}
